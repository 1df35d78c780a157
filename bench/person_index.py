"""Person-index benchmark on synthetic extracts with ground truth: precision and recall.

Generates `--persons` synthetic persons (haven synth), lands every extract, builds the person
index and judges it against `truth/rows.parquet`, which the pipeline never reads:
- rows without a valid NHS number (the probabilistic part): a row counts as linked correctly
  when its person key is the key of its true person's NHS-numbered rows;
- all rows: the same over every landed row.
Prints seconds and peak memory (RSS) of landing and linkage.

    .venv/bin/python bench/person_index.py [--persons 100000] [--seed 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

# bench/linkage.py would shadow the `linkage` package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

import pandas as pd  # noqa: E402

from cli.context import Haven  # noqa: E402
from cli.link_cmd import run_link  # noqa: E402
from governance.settings import Settings  # noqa: E402
from linkage.landing import LandingContext, land_path  # noqa: E402
from linkage.person_index import read_link_map  # noqa: E402
from synth import generate  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def judge(link_map: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Row-level precision and recall of links, against the true person of every row."""
    rows = link_map.merge(truth, on=["file", "row"])
    anchor = rows[rows["method"] == "nhs_number"].groupby("person_key")["person"] \
        .agg(lambda s: s.mode().iloc[0])
    rows["predicted"] = rows["person_key"].map(anchor)
    out = {}
    for name, part in (("without_nhs", rows[rows["method"] != "nhs_number"]), ("all", rows)):
        linked = part[part["method"] != "unlinked"]
        correct = int((linked["predicted"] == linked["person"]).sum())
        out[f"{name}_rows"] = len(part)
        out[f"{name}_precision"] = correct / max(len(linked), 1)
        out[f"{name}_recall"] = correct / max(len(part), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="haven-index-"))
    extracts, home = work / "extracts", work / "home"
    if not (extracts / "truth" / "meta.json").exists():
        generate(args.persons, args.seed, extracts, progress=False)
    keys = {f"HAVEN_KEY_{p.upper()}": f"b1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
            for p in ("pseudonym", "linkage", "vault", "release")}
    settings = Settings.from_environ({**keys, "HAVEN_HOME": str(home)})
    haven = Haven(settings)
    start = time.perf_counter()
    receipts = land_path(LandingContext(settings, haven.engine, haven.keys), extracts)
    land_seconds = time.perf_counter() - start
    start = time.perf_counter()
    summary = run_link(haven)
    link_seconds = time.perf_counter() - start
    files = pd.DataFrame([{"extract_id": r.extract_id, "file": r.file} for r in receipts])
    link_map = read_link_map(settings).merge(files, on="extract_id")
    truth = pd.read_parquet(extracts / "truth" / "rows.parquet")
    figures = judge(link_map, truth)
    print(f"persons {args.persons:,}; rows {figures['all_rows']:,}; without a valid NHS number "
          f"{figures['without_nhs_rows']:,}")
    print(f"land {land_seconds:.1f} s; link {link_seconds:.1f} s; peak memory {peak_mb():,.0f} MB")
    print(f"rows without NHS number: precision {figures['without_nhs_precision']:.4f}, "
          f"recall {figures['without_nhs_recall']:.4f} (targets 0.995 / 0.98)")
    print(f"all rows: precision {figures['all_precision']:.4f}, recall {figures['all_recall']:.4f}")
    print(f"review list: {summary.review_pairs:,} pairs; estimated on NHS-labelled rows: "
          f"{json.dumps(summary.quality)}")


if __name__ == "__main__":
    main()
