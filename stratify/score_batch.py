"""A batch of persons' scores: the steps each engine runs on a batch or a range of persons.

The embedded engine (`stratify.scoring.score_connected`) and the Spark engine
(`pipeline.engines.spark_score`, a task a range of persons) call the same functions, so a
person's row of the scores file is made by the same code on either: filter attributes
(`attribute_tables`, `batch_attributes`), the previous run's row (`previous`,
`batch_previous`), reasons (`contributions`, `explained`) and the row itself (`scored`);
`join_parts` joins the parts in order and `run_id` names the run.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from governance.identifiers import digest_letters
from stratify import codelists, explain
from stratify.catalogue import AGE_BANDS
from stratify.features import _ts, key_range_sql
from stratify.tiers import tier_change
from stratify.train import ModelBundle

SOURCE_DATES = (("apc", "admission_date"), ("ae", "arrival_datetime"), ("op", "appointment_date"),
                ("gp_events", "event_date"), ("gp_medications", "issue_date"),
                ("community", "contact_date"), ("social_care", "start_date"))



def age_band(age: pd.Series) -> pd.Series:
    """The release age bands (`0-17` ... `85+`); null where age is unknown."""
    edges = [lower for lower, _ in AGE_BANDS] + [200]
    labels = [label for _, label in AGE_BANDS]
    return pd.cut(age, bins=edges, labels=labels, right=False).astype(object)


def attributes(con: Any, at: dt.date, persons: pd.Index) -> pd.DataFrame:
    """Practice, sex and the sources each person appears in before `at`, for filters."""
    attribute_tables(con, at)
    return batch_attributes(con, persons)


def attribute_tables(con: Any, at: dt.date) -> None:
    """Work out everyone's practice, sex and sources before `at` into DuckDB's temporary
    tables `score_practice` and `score_seen` (`batch_attributes` reads a batch's rows of
    them): the whole population's text never comes into Python at once (issue #12)."""
    at_ = _ts(at)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE score_practice AS
        SELECT person_key, arg_max(gp_practice_code, registration_date) AS gp_practice_code,
            arg_max(sex, registration_date) AS sex
        FROM v_gp_patients WHERE registration_date <= {at_} GROUP BY person_key
    """)
    # Each source a bit, the bits of a person or-ed by a plain grouping (which DuckDB spills
    # past its memory limit; an ordered string_agg of a million persons' sources ran out of
    # 768 MB), then the names joined in alphabetical order, as string_agg ordered them.
    names = sorted(source for source, _ in SOURCE_DATES)
    union = " UNION ALL ".join(
        f"SELECT DISTINCT person_key, {1 << names.index(s)} AS bit FROM v_{s} WHERE {d} < {at_}"
        for s, d in SOURCE_DATES)
    joined = ", ".join(f"CASE WHEN flags & {1 << i} <> 0 THEN '{name}' END"
                       for i, name in enumerate(names))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE score_seen AS
        SELECT person_key, concat_ws(';', {joined}) AS sources
        FROM (SELECT person_key, bit_or(bit) AS flags FROM ({union}) GROUP BY person_key)
    """)


def batch_attributes(con: Any, persons: pd.Index) -> pd.DataFrame:
    """The rows of `persons` (in their order) of the tables `attribute_tables` made."""
    con.register("score_batch_keys", pd.DataFrame({"person_key": np.asarray(persons,
                                                                            dtype=object)}))
    try:
        practice = con.execute("""SELECT p.person_key, p.gp_practice_code, p.sex
            FROM score_practice p JOIN score_batch_keys k USING (person_key)
            """).df().set_index("person_key")
        seen = con.execute("""SELECT s.person_key, s.sources
            FROM score_seen s JOIN score_batch_keys k USING (person_key)
            """).df().set_index("person_key")
    finally:
        con.unregister("score_batch_keys")
    out = pd.DataFrame(index=persons)
    out["gp_practice_code"] = practice["gp_practice_code"].reindex(persons)
    out["sex"] = practice["sex"].reindex(persons)
    out["sources"] = seen["sources"].reindex(persons).fillna("")
    return out


def _conditions(X: pd.DataFrame) -> pd.Series:
    table = codelists.conditions()
    result = pd.Series("", index=X.index, dtype=object)
    for condition, label in zip(table["condition"], table["label"], strict=True):
        column = f"ltc_{condition}"
        if column in X.columns:
            has = X[column].to_numpy() > 0
            result[has] = result[has] + np.where(result[has] == "", "", ";") + label
    return result



EXACT_TIERS = ("very_high", "high")  # explained by the chosen model itself (trees: exactly)

CANDIDATE_GROUPS = 8


def reasons_method(bundle: ModelBundle) -> dict[str, str]:
    """Which model's contributions explain which tiers: what `contributions` uses, as a run
    records it."""
    if bundle.chosen in ("rule", "logistic") or "logistic" not in bundle.models:
        return {"all": bundle.chosen}
    return {"very_high, high": bundle.chosen, "moderate, low": "logistic"}


def contributions(bundle: ModelBundle, X: pd.DataFrame, tiers: np.ndarray
                   ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-group contributions behind each person's reasons.

    Linear and points models are exact and cheap for everyone. For tree models the exact
    contributions (prediction with each group at its baseline) cost one prediction per group,
    so they are worked out for the very high and high tiers, the persons teams act on, over each
    person's 8 most likely groups by the logistic contributions (plus age); the rest get the
    logistic model's coefficient x (value - mean) contributions.
    """
    model = bundle.models[bundle.chosen]
    features = X[bundle.features]
    linear = bundle.models.get("logistic")
    if bundle.chosen in ("rule", "logistic") or linear is None:
        return model.contributions(features), reasons_method(bundle)
    exact = np.isin(tiers, EXACT_TIERS)
    parts = []
    if exact.any():
        # Trees are re-predicted only for each person's most likely groups (by the linear
        # contributions): a ranking refined exactly where it matters, at a fraction of the cost.
        rough = linear.contributions(features[exact])
        rank = rough.rank(axis=1, ascending=False, method="first")
        candidates = (rank <= CANDIDATE_GROUPS) | rough.columns.isin(["age"])
        parts.append(model.contributions(features[exact], candidates))
    if (~exact).any():
        parts.append(linear.contributions(features[~exact]))
    combined = pd.concat(parts).reindex(X.index).fillna(0.0)
    return combined, reasons_method(bundle)


def run_id(at: dt.date, seed: int, ids: dict[str, list[str]], version: str) -> str:
    """`score-DATE-` and a digest of what made the run, in letters (governance.identifiers: never
    a digit run the audit log would take for an NHS number)."""
    digest = digest_letters(json.dumps([at.isoformat(), seed, ids, version], sort_keys=True))
    return f"score-{at.isoformat()}-{digest}"



def previous(con: Any, previous: pd.DataFrame | Path | None,
              persons: tuple[str | None, str | None] = (None, None)
              ) -> pd.DataFrame | bool | None:
    """The previous run's scores by person key (its first row of each), or True when they
    are a scores file now in DuckDB's temporary table `score_previous` (`batch_previous`
    reads a batch's rows of it), or None when there is no previous row. `persons`: of a
    file, keep the keys in `[low, high)` only (a range of persons scored apart)."""
    if previous is None:
        return None
    if not isinstance(previous, Path):
        return previous.drop_duplicates("person_key").set_index("person_key") \
            if len(previous) else None
    quoted = str(previous).replace("'", "''")
    within = key_range_sql(*persons)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE score_previous AS
        SELECT person_key, probability, tier FROM (
            SELECT person_key, probability, tier, row_number() OVER (
                PARTITION BY person_key ORDER BY file_row_number) AS nth
            FROM read_parquet('{quoted}', file_row_number = true)) WHERE nth = 1
            AND {within}""")
    rows = con.execute("SELECT count(*) FROM score_previous").fetchall()[0][0]
    return True if rows else None


def batch_previous(con: Any, persons: pd.Index) -> pd.DataFrame:
    """The rows of `persons` in `score_previous` (`previous`), by person key."""
    con.register("score_batch_keys", pd.DataFrame({"person_key": np.asarray(persons,
                                                                            dtype=object)}))
    try:
        return con.execute("""SELECT p.person_key, p.probability, p.tier
            FROM score_previous p JOIN score_batch_keys k USING (person_key)
            """).df().set_index("person_key")
    finally:
        con.unregister("score_batch_keys")


def scored(keys: np.ndarray, probability: np.ndarray, tiers: np.ndarray,
            rows: pd.DataFrame, attributes: pd.DataFrame,
            before: pd.DataFrame | None) -> pd.DataFrame:
    """A batch of persons' rows of the scores file, in its column order: probability, tier,
    reasons, change against `before` (the previous run's scores by person key, or None),
    filter attributes and the row-only columns of `explained`."""
    index = pd.Index(keys, name="person_key", dtype=object)
    scores = pd.DataFrame({"person_key": keys, "probability": probability}, index=index)
    scores["tier"] = tiers
    scores["reasons"] = rows["reasons"]
    scores = scores.join(rows[["reason_group_1", "reason_group_2", "reason_group_3"]])
    scores["previous_probability"] = np.nan
    scores["previous_tier"] = None
    if before is not None:
        scores["previous_probability"] = before["probability"].reindex(index).astype(float)
        scores["previous_tier"] = before["tier"].reindex(index).astype(object)
    scores["change"] = scores["probability"] - scores["previous_probability"]
    scores["tier_change"] = tier_change(scores["tier"], scores["previous_tier"])
    scores = scores.join(attributes)
    for column in ("age", "age_band", "conditions", "social_care_known"):
        scores[column] = rows[column]
    return scores.reset_index(drop=True)



def join_parts(parts: list[Path], target: Path) -> None:
    """Write the Parquet `parts` (one batch each, in order) as the one file `target`, a part
    at a time, and remove them. A column with no value in some parts (Arrow's null type
    there) takes its type from the parts that have one, as writing the whole frame at once
    would type it."""
    schema = pa.unify_schemas([pq.read_schema(part) for part in parts])
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:
            writer.write_table(pq.read_table(part).cast(schema))
            part.unlink()


def explained(X: pd.DataFrame, contributions: pd.DataFrame) -> pd.DataFrame:
    """The row-only columns of a batch of persons: reasons (joined, and the top three
    groups), age, age band, conditions and whether social care knows them."""
    why = explain.reasons(contributions, X)
    out = pd.DataFrame({"reasons": explain.joined(why)}, index=X.index)
    out = out.join(why[["reason_group_1", "reason_group_2", "reason_group_3"]])
    out["age"] = X["age"]
    out["age_band"] = age_band(X["age"])
    out["conditions"] = _conditions(X)
    out["social_care_known"] = X["sc_known"].astype(bool)
    return out
