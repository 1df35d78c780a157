"""The linked copy made on Spark (pipeline/engines/spark_copy.py) holds the embedded copy's
rows exactly, after the same opt-out filter: every source's rows, the extracts they came
from, and, range by range, the rows a task of that range sees; each range's files hold only
its persons, in key order; and a task's view of a range still sees every GP registration."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from factories import rows_for, write_extract
from governance import store
from linkage.landing.land import LandingContext, land_file
from pipeline.context import Context
from pipeline.engines.spark_copy import copy_on_spark
from pipeline.land import land
from pipeline.link import link
from pipeline.linked_copy import WANTED, linked_copy
from pipeline.score import purpose_filter, purpose_rows
from pipeline.serving import optouts_applied
from stratify.features import WHOLE_GP, OnDisk, connect, parquet_files
from stratify.sources import COLUMNS
from synth import generate

PER_RANGE = 70  # persons a range: several ranges of 300 persons


def _tables(copy: OnDisk, extra: str = "") -> dict[str, pd.DataFrame]:
    con = connect(copy)
    try:
        return {name: con.execute(f"SELECT * FROM v_{name} {extra} ORDER BY ALL").df()
                for name in COLUMNS}
    finally:
        con.close()


def _land_optout(haven: Any, extracts: Path, folder: Path) -> None:
    """A national data opt-out for the first person with an NHS number in the GP register."""
    path = sorted(extracts.glob("gp_patients*.csv"))[0]
    with path.open(newline="", encoding="utf-8") as handle:
        first = next(r for r in csv.DictReader(handle) if r.get("nhs_number"))
    optout = rows_for("optouts", 1, seed=3)[0]
    optout.update(nhs_number=first["nhs_number"], optout_type="ndoo",
                  effective_date="2023-01-01")
    written = write_extract(folder, "optouts", [optout], sender="X26")
    receipt = land_file(LandingContext(haven.settings, haven.engine, haven.keys, haven.actor),
                        written)
    assert receipt.status == "landed", receipt.reason


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_copy_on_spark_holds_the_embedded_copys_rows_range_by_range(
        spark: Any, haven: Any, tmp_path: Path) -> None:
    extracts = tmp_path / "extracts"
    generate(300, 11, extracts, progress=False)
    land(haven, extracts)
    link(haven)
    with linked_copy(haven, None) as unfiltered:
        everyone = unfiltered.rows
    _land_optout(haven, extracts, tmp_path / "optout")
    row_filter = purpose_filter(haven, "commissioning", optouts_applied(haven.engine))
    with linked_copy(haven, row_filter) as embedded, \
            store.scratch_workspace(haven.settings) as folder:
        assert 0 < embedded.rows < everyone  # the opt-out's rows are left out
        copy = copy_on_spark(spark, haven.settings, haven.engine, row_filter, folder, "1GB",
                             WANTED, PER_RANGE)
        assert (copy.rows, copy.ids) == (embedded.rows, embedded.ids)
        want, got = _tables(embedded), _tables(copy)
        for name in COLUMNS:
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)
        assert len(copy.ranges or ()) >= 4
        registrations = len(want["gp_patients"])
        seen = 0
        for number, (low, high) in enumerate(copy.ranges or ()):
            part_want, part_got = _tables(embedded.part(low, high)), _tables(copy.part(low, high))
            for name in COLUMNS:
                pd.testing.assert_frame_equal(part_got[name], part_want[name],
                                              check_exact=True, obj=f"{name} {number}")
                for path in parquet_files(folder, name, number):
                    keys = pq.read_table(path, columns=["person_key"]).column(
                        "person_key").to_pylist()
                    assert keys == sorted(keys, key=lambda k: (k is not None, k or ""))
                    assert all(k is None and low is None or
                               (low is None or k >= low) and (high is None or k < high)
                               for k in keys), (name, number)
            seen += sum(len(t) for t in part_got.values())
            con = connect(copy.part(low, high))
            try:  # a range's task still sees every GP registration (`_has_gp`)
                assert con.execute(f"SELECT count(*) FROM {WHOLE_GP}").fetchone()[0] == \
                    registrations
            finally:
                con.close()
        assert seen == copy.rows  # the ranges' rows are the whole's, each once
        # the map's hard links (every pseudonym of every extract) went with the copy made
        assert not (folder / "map").exists() and not (folder / "map").is_symlink()
    assert not folder.exists()



@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_copy_made_on_spark_is_kept_and_given_to_the_next_stage_on_spark_only(
        spark: Any, haven: Any, tmp_path: Path) -> None:
    generate(200, 12, tmp_path / "extracts", progress=False)
    land(haven, tmp_path / "extracts")
    link(haven)
    on_spark = Context(replace(haven.settings, engine="spark"), engine=haven.engine,
                       keys=haven.keys, actor=haven.actor)
    applied = optouts_applied(haven.engine)
    tracker = spark.sparkContext.statusTracker()
    jobs = len(tracker.getJobIdsForGroup())
    with linked_copy(on_spark, purpose_rows(on_spark, "commissioning", applied)) as made:
        assert made.ranges is not None
        made_tables, made_ranges = _tables(made), made.ranges
    assert len(tracker.getJobIdsForGroup()) > jobs  # made on Spark
    assert store.linked_cache_entries(haven.settings) == 1
    jobs = len(tracker.getJobIdsForGroup())
    with linked_copy(on_spark, purpose_rows(on_spark, "commissioning", applied)) as taken:
        assert (taken.ranges, taken.rows, taken.ids) == (made_ranges, made.rows, made.ids)
        taken_tables = _tables(taken)
        assert all(path.stat().st_nlink == 2  # the entry's files, linked, not copied
                   for path in (taken.folder / "parquet").rglob("*.parquet"))
    assert len(tracker.getJobIdsForGroup()) == jobs  # taken from the cache: no Spark job
    for name in COLUMNS:
        pd.testing.assert_frame_equal(taken_tables[name], made_tables[name], obj=name)
    # the embedded engine is never given Spark's entry (the form is in the key)
    with linked_copy(haven, purpose_rows(haven, "commissioning", applied)) as embedded:
        assert embedded.ranges is None
        embedded_tables = _tables(embedded)
    for name in COLUMNS:
        pd.testing.assert_frame_equal(embedded_tables[name], made_tables[name], obj=name)
    # a destruction's clearing of the cache takes Spark's entries too
    assert store.clear_linked_cache(haven.settings) == 1
    assert store.linked_cache_entries(haven.settings) == 0
