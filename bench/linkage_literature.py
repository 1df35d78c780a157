"""Haven vs plaintext Splink on the second, independent generator (`bench/generators/literature`).

Two person files (n left, n right, 0.8 n true matches; errors after the literature: see the
generator's docstring) are linked by Haven (`linkage.link_files.link_files`, as `haven
link-files`: fresh key, keyed encodings) and by Splink 5 (DuckDB, plaintext), with the same
fields and decisions as bench/linkage_1m.py (p >= 0.5, greedy one-to-one by match weight,
then p >= 0.9). Run twice: with the address line only, and with the town as well (a field
that carries information must not make linkage worse). Each linker runs in its own child
process, so wall time and peak RSS are its own.

Usage: .venv/bin/python bench/linkage_literature.py [--rows 100000] [--seed 11] [--no-splink]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

UPPER, LOWER = 0.9, 0.5
# Splink's DuckDB within a limit, spilling past it (as bench/linkage_1m.py): without one, at
# 1M x 1M it held 20.9 GB and rising on a 24 GB machine.
SPLINK_MEMORY = "8GB"
BASE = {"forename": "forename", "surname": "surname", "date_of_birth": "date_of_birth",
        "sex": "sex", "postcode": "postcode"}
VARIANTS = {"line": {**BASE, "address": ["address"]},
            "line+town": {**BASE, "address": ["address", "town"]}}


def literature() -> object:
    """bench/generators/literature.py as a module (bench/ is not a package on the path: its
    linkage.py would shadow the `linkage` package)."""
    import importlib.util

    path = Path(__file__).with_name("generators") / "literature.py"
    spec = importlib.util.spec_from_file_location("bench_generators_literature", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _score(lid: np.ndarray, rid: np.ndarray, n_true: int) -> dict:
    tp = int((np.asarray(lid) == np.asarray(rid)).sum())
    p = tp / len(lid) if len(lid) else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def run_haven(left: Path, right: Path, out: Path, variant: str) -> dict:
    from linkage.link_files import link_files

    t0 = time.perf_counter()
    summary = link_files(left, right, "person_id", VARIANTS[variant], out, upper=UPPER,
                         lower=LOWER)
    found = pd.read_csv(out, dtype=str)
    return {"seconds": time.perf_counter() - t0, "lid": found["left_id"].tolist(),
            "rid": found["right_id"].tolist(), "warnings": summary["warnings"]}


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"person_id": frame["person_id"]})
    for col in ("forename", "surname"):
        out[col] = frame[col].str.upper().str.replace(r"[^A-Z]", "", regex=True)
    d = frame["date_of_birth"]
    out["date_of_birth"] = d.str[6:10] + "-" + d.str[3:5] + "-" + d.str[0:2]
    out["date_of_birth"] = out["date_of_birth"].where(d.str.len() == 10, "")
    out["sex"] = frame["sex"].where(frame["sex"].isin(["M", "F"]), "")
    pc = frame["postcode"].str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)
    out["postcode"] = (pc.str[:-3] + " " + pc.str[-3:]).where(pc.str.len() >= 5, "")
    out["address"] = frame["address"].str.upper()
    out["town"] = frame["town"].str.upper()
    return out.replace("", None)


def run_splink(left: Path, right: Path, variant: str) -> dict:
    """Splink 5 as bench/linkage_1m.py sets it up, plus the address line (Jaro-Winkler
    bands) and, in the line+town variant, the town (exact), its DuckDB within
    `SPLINK_MEMORY`."""
    import logging

    import duckdb
    import splink.comparison_library as cl
    from splink import DuckDBAPI, SettingsCreator, block_on
    from splink_reference import train_and_link

    logging.getLogger("splink").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    frames = [_clean(pd.read_csv(p, dtype=str, keep_default_na=False)) for p in (left, right)]
    spill = left.parent / "splink-spill"
    spill.mkdir(exist_ok=True)
    db = DuckDBAPI(duckdb.connect(config={"memory_limit": SPLINK_MEMORY,
                                          "temp_directory": str(spill)}))
    tables = [db.register(f, dataset_display_name=name)
              for name, f in zip(("a_left", "b_right"), frames, strict=True)]
    comparisons = [
        cl.NameComparison("forename").configure(term_frequency_adjustments=True),
        cl.NameComparison("surname").configure(term_frequency_adjustments=True),
        cl.DateOfBirthComparison("date_of_birth", input_is_string=True),
        cl.PostcodeComparison("postcode"),
        cl.ExactMatch("sex"),
        cl.JaroWinklerAtThresholds("address", [0.95, 0.88]),
    ]
    if variant == "line+town":
        comparisons.append(cl.ExactMatch("town"))
    settings = SettingsCreator(
        link_type="link_only", unique_id_column_name="person_id",
        blocking_rules_to_generate_predictions=[
            block_on("date_of_birth"),
            block_on("surname", "substr(forename, 1, 1)", "substr(date_of_birth, 1, 4)"),
            block_on("forename", "substr(surname, 1, 1)", "substr(date_of_birth, 1, 4)"),
            block_on("postcode"),
        ],
        comparisons=comparisons, retain_intermediate_calculation_columns=False,
        retain_matching_columns=False)
    lid, rid, probability, _ = train_and_link(tables, settings, LOWER)
    pick = probability >= UPPER
    return {"seconds": time.perf_counter() - t0, "lid": lid[pick].tolist(),
            "rid": rid[pick].tolist(), "warnings": []}


def _child(args: argparse.Namespace) -> None:
    if args.child == "haven":
        res = run_haven(args.left, args.right, args.out, args.variant)
    else:
        res = run_splink(args.left, args.right, args.variant)
    res.update(_score(np.array(res.pop("lid"), dtype=object),
                      np.array(res.pop("rid"), dtype=object), args.n_true))
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res), flush=True)


def _spawn(which: str, left: Path, right: Path, out: Path, n_true: int, variant: str
           ) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--left",
           str(left), "--right", str(right), "--out", str(out), "--n-true", str(n_true),
           "--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"{which} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return None


def run(rows: int, seed: int, splink: bool) -> list[tuple[str, dict | None, dict | None]]:
    files = literature().files

    out: list[tuple[str, dict | None, dict | None]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        left, right, rates = files(rows, seed)
        n_true = int(right["person_id"].isin(set(left["person_id"])).sum())
        lpath, rpath = tmp / "left.csv", tmp / "right.csv"
        left.to_csv(lpath, index=False)
        right.to_csv(rpath, index=False)
        print(f"literature generator: {len(left):,} x {len(right):,}, {n_true:,} true matches, "
              f"seed {seed} ({time.perf_counter() - t0:.0f}s); right-file error rates: "
              + ", ".join(f"{k} {v:.2%}" for k, v in rates.items()), flush=True)
        for variant in VARIANTS:
            h = _spawn("haven", lpath, rpath, tmp / "haven.csv", n_true, variant)
            s = _spawn("splink", lpath, rpath, tmp / "splink.csv", n_true, variant) \
                if splink else None
            out.append((f"literature {rows:,} x {rows:,}, {variant}", h, s))
            print(f"  {variant}: Haven F1 {h['f1'] if h else float('nan'):.4f}"
                  + (f", Splink F1 {s['f1']:.4f}" if s else ""), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-splink", action="store_true")
    parser.add_argument("--child", choices=("haven", "splink"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="line", help=argparse.SUPPRESS)
    parser.add_argument("--left", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--right", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n-true", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    rows = run(args.rows, args.seed, not args.no_splink)
    print("| data set | Haven P / R / F1 | Splink P / R / F1 | Haven / Splink s | "
          "Haven / Splink peak MB |")
    print("|---|---|---|---|---|")
    for name, h, s in rows:
        def f(r: dict | None) -> str:
            return "-" if r is None else f"{r['precision']:.4f} / {r['recall']:.4f} / {r['f1']:.4f}"
        t = " / ".join("-" if r is None else f"{r['seconds']:.1f}" for r in (h, s))
        m = " / ".join("-" if r is None else f"{r['peak_mb']:.0f}" for r in (h, s))
        print(f"| {name} | {f(h)} | {f(s)} | {t} | {m} |")


if __name__ == "__main__":
    main()
