"""The person index: deterministic links, client links, stability, increments and destruction."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy import update

from cli.main import main
from factories import nhs_numbers, rows_for, write_extract
from governance import store
from governance.schema import extracts
from linkage import person_index
from linkage.landing.land import land_file
from linkage.profile_store import ProfileStore


def _index(haven, matcher=None):
    return person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                               matcher)


def test_rows_with_one_nhs_number_share_a_person_key(haven, landing, inbox):
    numbers = nhs_numbers(20, seed=5)
    apc = rows_for("apc", 20, seed=5)
    gp = rows_for("gp_patients", 20, seed=5)
    apc[3]["nhs_number"] = ""
    for i, row in enumerate(apc):
        row["nhs_number"] = numbers[i] if i != 3 else ""
        gp[i]["nhs_number"] = numbers[i]
    land_file(landing, write_extract(inbox, "apc", apc))
    land_file(landing, write_extract(inbox, "gp_patients", gp))
    summary = _index(haven)
    assert summary.by_source_method["apc"] == {"nhs_number": 19, "unlinked": 1}
    frame = person_index.read_link_map(haven.settings)
    by_source = {s: g.set_index("row")["person_key"] for s, g in frame.groupby("source")}
    assert by_source["apc"][1] == by_source["gp_patients"][1]
    assert by_source["apc"][1] != by_source["apc"][2]
    assert frame["person_key"].str.fullmatch(r"P[0-9a-f]{20}").all()


def test_social_care_client_rows_share_the_pseudonym_one_of_them_carries(haven, landing, inbox):
    rows = rows_for("social_care", 6, seed=2)
    rows[1]["client_id"] = rows[0]["client_id"]
    rows[1]["nhs_number"] = ""
    rows[2]["nhs_number"] = ""
    land_file(landing, write_extract(inbox, "social_care", rows, sender="E08000035"))
    _index(haven)
    frame = person_index.read_link_map(haven.settings).set_index("row")
    assert frame.loc[2, "method"] == "client"
    assert frame.loc[2, "person_key"] == frame.loc[1, "person_key"]
    assert frame.loc[3, "method"] == "unlinked"


def test_update_is_incremental_and_keys_are_stable(haven, landing, inbox):
    land_file(landing, write_extract(inbox, "apc", rows_for("apc", 10, seed=1)))
    _index(haven)
    first = person_index.read_link_map(haven.settings)
    land_file(landing, write_extract(inbox / "b", "ae", rows_for("ae", 10, seed=1)))
    summary = _index(haven)
    assert len(summary.extracts_added) == 1
    second = person_index.read_link_map(haven.settings)
    merged = first.merge(second, on=["extract_id", "row"], suffixes=("_1", "_2"))
    assert len(merged) == 10 and (merged["person_key_1"] == merged["person_key_2"]).all()
    ae = second[second["source"] == "ae"].set_index("row")["person_key"]
    apc = second[second["source"] == "apc"].set_index("row")["person_key"]
    assert (ae == apc).all()  # same synthetic people in both sources


def test_forgetting_an_extract_removes_its_rows(haven, landing, inbox):
    apc = land_file(landing, write_extract(inbox, "apc", rows_for("apc", 10)))
    land_file(landing, write_extract(inbox / "b", "op", rows_for("op", 10)))
    _index(haven)
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id == apc.extract_id)
                           .values(status="destroyed"))
    store.remove_tree(haven.settings.layout.extract(apc.extract_id))
    counts = person_index.forget_extracts(haven.settings, haven.engine,
                                          haven.keys.current("linkage"), [apc.extract_id])
    assert counts == {"index_rows_removed": 10, "index_rows": 10}
    frame = person_index.read_link_map(haven.settings)
    assert set(frame["source"]) == {"op"}


def test_probabilistic_links_and_review_band_go_where_the_matcher_says(haven, landing, inbox):
    rows = rows_for("gp_patients", 5, seed=9)
    land_file(landing, write_extract(inbox, "gp_patients", rows))
    apc = rows_for("apc", 3, seed=9)
    for row in apc:
        row["nhs_number"] = ""
    land_file(landing, write_extract(inbox / "b", "apc", apc))

    def matcher(query: pd.DataFrame, profile: ProfileStore, coverage: float,
                examples: pd.DataFrame | None) -> pd.DataFrame:
        assert 0.5 <= coverage <= 0.999
        held = profile.whole(["person_id"])
        assert "person_id" not in query and held["person_id"].notna().all()
        return pd.DataFrame({"query": [0, 1], "profile": [0, 1], "weight": [25.0, 4.0],
                             "probability": [0.999, 0.6], "band": ["link", "review"]})

    summary = _index(haven, matcher)
    assert summary.by_source_method["apc"] == {"probabilistic": 1, "unlinked": 2}
    assert summary.review_pairs == 1
    review = pq.read_table(haven.settings.layout.review).to_pandas()
    assert list(review["query_row"]) == [2]


def test_link_command_and_export(haven, landing, inbox, tmp_path):
    land_file(landing, write_extract(inbox, "apc", rows_for("apc", 7)))
    env = {"HAVEN_HOME": str(haven.settings.home), "HAVEN_DATABASE_URL":
           haven.settings.database_url, **haven.settings.key_env}
    assert main(["link"], env) == 0
    out = tmp_path / "map.csv"
    assert main(["link", "export", "--out", str(out)], env) == 0
    exported = pd.read_csv(out)
    assert list(exported.columns) == ["extract_id", "source", "row", "person_key", "method",
                                      "weight"]
    assert len(exported) == 7
    assert main(["link", "export", "--out", str(tmp_path / "map.txt")], env) == 2


def test_only_new_rows_are_retried_unless_the_registers_change(haven, landing, inbox):
    land_file(landing, write_extract(inbox, "gp_patients", rows_for("gp_patients", 5, seed=4)))
    first = rows_for("apc", 3, seed=4)
    for row in first:
        row["nhs_number"] = ""
    land_file(landing, write_extract(inbox / "a", "apc", first))
    seen: list[int] = []

    def matcher(query, profile, coverage, examples):
        seen.append(len(query))
        return pd.DataFrame(columns=["query", "profile", "weight", "probability", "band"])

    _index(haven, matcher)
    assert seen == [3]
    summary = _index(haven, matcher)  # nothing new: no work at all
    assert seen == [3] and summary.rows == 8
    second = rows_for("ae", 2, seed=8)
    for row in second:
        row["nhs_number"] = ""
    land_file(landing, write_extract(inbox / "b", "ae", second))
    _index(haven, matcher)
    assert seen == [3, 2]  # the apc rows were tried already against the same registers
    land_file(landing, write_extract(inbox / "c", "gp_patients", rows_for("gp_patients", 2,
                                                                           seed=12)))
    _index(haven, matcher)
    assert sorted(seen[2:]) == [2, 3]  # a new register: every unlinked row is tried again
