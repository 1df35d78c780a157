"""Throughput of `encode_identifiers` on a generated social-care-like batch (floor: 200k rows/s).

Usage: .venv/bin/python bench/encodings.py [--rows 200000] [--repeat 3]
Values are generated (syllable names, random dates and UK-format postcodes) with realistic numbers
of distinct values and case/spacing variants; nothing real is used.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linkage.encodings import encode_identifiers  # noqa: E402

SYLLABLES = ["an", "ber", "ca", "dor", "el", "fi", "gan", "ha", "is", "jo", "ka", "li", "mar",
             "ne", "o", "pel", "qu", "ri", "son", "ta", "u", "vi", "wen", "xa", "y", "zel",
             "ston", "ley", "ton", "worth"]
LETTERS = list("ABCDEFGHJKLMNOPRSTUWY")
INWARD = list("ABDEFGHJLNPQRSTUWXYZ")


def _names(rng: np.random.Generator, pool: int, rows: int) -> np.ndarray:
    """`rows` draws (Zipf-like) from `pool` generated names, with case/space variants."""
    n_syl = rng.integers(2, 4, size=pool)
    names = np.array(["".join(rng.choice(SYLLABLES, size=k)).capitalize() for k in n_syl],
                     dtype=object)
    weights = 1.0 / np.arange(1, pool + 1) ** 0.8
    picked = names[rng.choice(pool, size=rows, p=weights / weights.sum())]
    upper = rng.random(rows) < 0.3
    picked[upper] = [s.upper() for s in picked[upper]]
    blank = rng.random(rows) < 0.01
    picked[blank] = None
    return picked


def generate(rows: int, seed: int = 0) -> pd.DataFrame:
    """A batch shaped like the social_care identifiers after landing checks."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("1920-01-01")
    dob = (start + rng.integers(0, 365 * 85, size=rows).astype("timedelta64[D]")).astype(str)
    pool = 40_000
    outward = [f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}{rng.integers(1, 30)}"
               for _ in range(pool)]
    units = np.array([f"{o} {rng.integers(1, 10)}{rng.choice(INWARD)}{rng.choice(INWARD)}"
                      for o in outward], dtype=object)
    postcode = units[rng.integers(0, pool, size=rows)]
    compact = rng.random(rows) < 0.2
    postcode[compact] = [p.replace(" ", "").lower() for p in postcode[compact]]
    return pd.DataFrame({
        "forename": _names(rng, 3_000, rows),
        "surname": _names(rng, 30_000, rows),
        "date_of_birth": dob,
        "sex": rng.choice(["1", "2", "9"], size=rows, p=[0.48, 0.5, 0.02]),
        "postcode": postcode,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frame = generate(args.rows)
    key = secrets.token_bytes(32)
    encode_identifiers(frame.head(1000), key)  # warm-up (imports)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = encode_identifiers(frame, key)
        times.append(time.perf_counter() - t0)
    best = min(times)
    distinct = {c: int(frame[c].nunique()) for c in frame.columns}
    print(f"rows: {args.rows:,}  distinct: {distinct}")
    print(f"columns out: {len(out.columns)}  ({', '.join(out.columns)})")
    print(f"encode_identifiers: best {best:.3f}s of {args.repeat} -> "
          f"{args.rows / best:,.0f} rows/s (floor 200,000)")


if __name__ == "__main__":
    main()
