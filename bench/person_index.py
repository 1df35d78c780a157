"""Person-index benchmark on synthetic extracts with ground truth: precision and recall.

Generates `--persons` synthetic persons (haven synth), lands every extract, builds the person
index and judges it against `truth/rows.parquet`, which the pipeline never reads:
- rows without a valid NHS number (the probabilistic part): a row counts as linked correctly
  when its person key is the key of its true person's NHS-numbered rows;
- all rows: the same over every landed row.
Prints seconds and peak memory (RSS) of landing and linkage. Then, if splink is installed
(the `bench` extra), plaintext Splink on the same rows for reference (`splink_reference`).

    .venv/bin/python bench/person_index.py [--persons 100000] [--seed 2] [--work DIR]
        [--no-splink]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
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

from governance.settings import Settings  # noqa: E402
from linkage.landing.land import LandingContext, land_path  # noqa: E402
from linkage.person_index import read_link_map  # noqa: E402
from pipeline.context import Context as Haven  # noqa: E402
from pipeline.link import link as run_link  # noqa: E402
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


IDENTIFIERS = ["forename", "surname", "date_of_birth", "sex", "postcode", "gp_practice_code"]
PROFILE_FILES = ("gp_patients.csv", "social_care_")


def _plain_rows(extracts: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """Clear identifiers of every row of the files that carry them, with file, row, person and
    NHS-number status from the truth (for the plaintext reference only; Haven never reads
    the extracts' clear values after landing)."""
    frames = []
    for path in sorted(extracts.glob("*.csv")):
        head = pd.read_csv(path, dtype=str, nrows=0).columns
        if "date_of_birth" not in head or "postcode" not in head:
            continue
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame = pd.DataFrame({c: frame.get(c, "") for c in IDENTIFIERS})
        frames.append(frame.assign(file=path.name, row=range(1, len(frame) + 1)))
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.merge(truth[["file", "row", "person", "nhs_status"]], on=["file", "row"])
    for col in ("forename", "surname"):
        rows[col] = rows[col].str.upper().str.replace(r"[^A-Z]", "", regex=True)
    pc = rows["postcode"].str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)
    rows["postcode"] = (pc.str[:-3] + " " + pc.str[-3:]).where(pc.str.len() >= 5, "")
    rows["sex"] = rows["sex"].where(rows["sex"].isin(["1", "2"]), "")
    return rows.replace("", None)


def splink_reference(extracts: Path, truth: pd.DataFrame, queries: pd.DataFrame,
                     threshold: float = 0.95) -> dict[str, float]:
    """Plaintext Splink (DuckDB) on the same task: the rows Haven did not link by NHS number,
    each linked to its best profile (GP register rows and social care rows with a valid NHS
    number, on clear names where present, date of birth, sex, postcode and practice), taken
    when p >= `threshold` (the person index's own); judged like Haven's rows."""
    import logging

    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    logging.getLogger("splink").setLevel(logging.ERROR)
    started = time.perf_counter()
    rows = _plain_rows(extracts, truth)
    is_profile = rows["file"].str.startswith(PROFILE_FILES) & (rows["nhs_status"] == "valid")
    wanted = queries[["file", "row"]].assign(query=True)
    rows = rows.merge(wanted, on=["file", "row"], how="left")
    query = rows[rows["query"].eq(True)].drop(columns="query")
    profile = rows[is_profile.to_numpy()].drop(columns="query")
    query = query.assign(uid=[f"q{i}" for i in range(len(query))])
    profile = profile.assign(uid=[f"p{i}" for i in range(len(profile))])
    db = DuckDBAPI()
    cols = ["uid", *IDENTIFIERS]
    tables = [db.register(query[cols], dataset_display_name="query"),
              db.register(profile[cols], dataset_display_name="profile")]
    settings = SettingsCreator(
        link_type="link_only", unique_id_column_name="uid",
        blocking_rules_to_generate_predictions=[
            block_on("date_of_birth"),
            block_on("postcode", "substr(date_of_birth, 1, 4)"),
            block_on("gp_practice_code", "substr(date_of_birth, 1, 7)"),
            block_on("surname", "substr(date_of_birth, 1, 4)"),
        ],
        comparisons=[
            cl.NameComparison("forename").configure(term_frequency_adjustments=True),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True),
            cl.PostcodeComparison("postcode"),
            cl.ExactMatch("sex"), cl.ExactMatch("gp_practice_code"),
        ],
        retain_intermediate_calculation_columns=False, retain_matching_columns=False)
    linker = Linker(tables, settings, log_level=None)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("date_of_birth", "postcode", "sex")], recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e7, seed=1)
    for rule in (block_on("date_of_birth"), block_on("postcode")):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    pred = linker.inference.predict(threshold_match_probability=0.5).as_pandas_dataframe()
    flip = pred["uid_l"].str.startswith("p").to_numpy()
    pred["q"] = pred["uid_l"].where(~flip, pred["uid_r"])
    pred["p"] = pred["uid_r"].where(~flip, pred["uid_l"])
    best = pred.sort_values(["q", "match_weight"], ascending=[True, False]).drop_duplicates("q")
    best = best[best["match_probability"] >= threshold]
    person_of_profile = dict(zip(profile["uid"], profile["person"], strict=True))
    person_of_query = dict(zip(query["uid"], query["person"], strict=True))
    correct = int(sum(person_of_profile[p] == person_of_query[q]
                      for q, p in zip(best["q"], best["p"], strict=True)))
    return {"rows": len(query), "precision": correct / max(len(best), 1),
            "recall": correct / max(len(query), 1), "seconds": time.perf_counter() - started,
            "profiles": len(profile)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-splink", action="store_true",
                        help="skip the plaintext Splink reference")
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
    if args.no_splink or importlib.util.find_spec("splink") is None:
        print("plaintext Splink reference skipped (--no-splink, or splink not installed)")
        return
    queries = link_map[link_map["method"] != "nhs_number"]
    ref = splink_reference(extracts, truth, queries)
    print(f"Splink (plaintext, DuckDB) on the same {ref['rows']:,} rows against "
          f"{ref['profiles']:,} profiles: precision {ref['precision']:.4f}, recall "
          f"{ref['recall']:.4f}, {ref['seconds']:.1f} s (Haven, keyed encodings: precision "
          f"{figures['without_nhs_precision']:.4f}, recall {figures['without_nhs_recall']:.4f}, "
          f"link {link_seconds:.1f} s for the whole index)")


if __name__ == "__main__":
    main()
