"""Journeys, costs and segments out of core (issue #12): the pipeline reads the linked rows
through the on-disk copy (`pipeline.linked_copy`, as scoring does) and must give exactly what
the in-memory path it replaced gave: every linked row as pandas frames (`load_sources`) with
the pandas helpers of that time (kept below as the reference: `old_*`). The same records, the
same published tables and the same summaries on a small synthetic population; the working
copy never outlives the run; and each helper moved into SQL equals its pandas original, on
the frames and on the copy."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from governance import optouts
from linkage.linked_view import load_sources
from pipeline import analyses, analysis_ranges
from pipeline.land import land
from pipeline.link import link
from pipeline.linked_copy import linked_copy
from pipeline.score import use_filter
from pipeline.serving import optouts_applied
from stratify import costs, features, journeys, segments
from stratify.sources import add_months
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])
PERSONS = 600
JOURNEY_MONTHS = 24  # enough discharges of persons 65+ to fill the tables


# ------------------------------------------------------------------ the pandas it replaced
def old_data_through(sources: dict[str, pd.DataFrame]) -> dt.date | None:
    frame = sources.get("apc")
    if frame is None or not len(frame):
        return None
    days = pd.concat([pd.to_datetime(frame[c], errors="coerce")
                      for c in ("admission_date", "discharge_date") if c in frame.columns])
    last = days.max()
    return None if pd.isna(last) else last.date()


def old_practices(sources: dict[str, pd.DataFrame]) -> pd.Series:
    gp = sources.get("gp_patients")
    if gp is None or not len(gp) or "gp_practice_code" not in gp:
        return pd.Series(dtype=object)
    order = gp.assign(_d=pd.to_datetime(gp["registration_date"], errors="coerce")).sort_values(
        "_d", kind="stable")
    last = order.dropna(subset=["gp_practice_code"]).groupby("person_key").last()
    return last["gp_practice_code"].astype(str)


def old_maternity(sources: dict[str, pd.DataFrame], at: dt.date) -> pd.Series:
    apc = sources.get("apc")
    if apc is None or not len(apc):
        return pd.Series(dtype=bool)
    day = pd.to_datetime(apc["admission_date"], errors="coerce")
    hit = (apc["admission_method"].astype(str).isin(segments.MATERNITY_METHODS)
           & (day >= pd.Timestamp(add_months(at, -12))) & (day < pd.Timestamp(at)))
    keys = apc.loc[hit.to_numpy(), "person_key"].astype(str).unique()
    return pd.Series(True, index=pd.Index(keys))


def old_everyone(sources: dict[str, pd.DataFrame]) -> pd.Index:
    keys: set[str] = set()
    for frame in sources.values():
        if frame is not None and "person_key" in frame.columns:
            keys.update(frame["person_key"].dropna().astype(str))
    return pd.Index(sorted(keys))


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dt.date]:
    out = tmp_path_factory.mktemp("synth")
    generate(PERSONS, 5, out, progress=False)
    meta = json.loads((out / "truth" / "meta.json").read_text())
    return out, dt.date.fromisoformat(meta["score_date"])


def _linked(haven, extracts) -> dt.date:
    folder, at = extracts
    assert all(r.status == "landed" for r in land(haven, folder))
    link(haven)
    return at


def _filter(haven):
    """The rows commissioning may use now (the opt-outs in force), as the old `_read` did."""
    applied = optouts_applied(haven.engine)
    return use_filter(haven, analyses.PURPOSE, dt.date.fromisoformat(applied["in_force_on"]),
                      optouts.parse_coverage(applied["policy"]), applied["register"])


def _frames(haven) -> dict[str, pd.DataFrame]:
    """What the old `_read` read: every linked row commissioning may use, in memory."""
    return load_sources(haven.settings, haven.engine, row_filter=_filter(haven))


def _outputs(haven, result: analyses.AnalysisResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    files = haven.settings.layout.analysis(result.run_id)
    return pd.read_parquet(files.records), pd.read_parquet(files.published)


def _run(haven, kind: str, at: dt.date) -> analyses.AnalysisResult:
    if kind == "journeys":
        return analyses.run_journeys(haven, at, months=JOURNEY_MONTHS)
    if kind == "costs":
        return analyses.run_costs(haven, at.year - 1)
    return analyses.run_segments(haven, at)


# ------------------------------------------------------------------ the pipeline
def test_each_analysis_out_of_core_equals_the_in_memory_path(haven, extracts, backend,
                                                             monkeypatch):
    at = _linked(haven, extracts)
    copies: list[int] = []
    real_copy = analyses.linked_copy

    @contextmanager
    def counted(*args, **kwargs) -> Iterator[features.OnDisk]:
        with real_copy(*args, **kwargs) as copy:
            copies.append(copy.rows)
            yield copy

    monkeypatch.setattr(analyses, "linked_copy", counted)
    got = {kind: _run(haven, kind, at) for kind in analyses.KINDS}
    assert len(copies) == 3 and all(rows > 10_000 for rows in copies)  # read from the copy
    assert not any(haven.settings.layout.scratch_dir.iterdir())  # and the copy is gone

    # The in-memory path as it was: frames from load_sources and the pandas helpers.
    frames = _frames(haven)

    @contextmanager
    def in_memory(ctx, progress) -> Iterator[tuple[dict[str, pd.DataFrame], dict]]:
        yield frames, optouts_applied(ctx.engine)

    monkeypatch.setattr(analyses, "_reading", in_memory)
    monkeypatch.setattr(analyses, "data_through", old_data_through)
    monkeypatch.setattr(analysis_ranges, "latest_practices", old_practices)
    monkeypatch.setattr(segments, "maternity", lambda con, day: old_maternity(frames, day))
    want = {kind: _run(haven, kind, at) for kind in analyses.KINDS}

    for kind in analyses.KINDS:
        got_records, got_published = _outputs(haven, got[kind])
        want_records, want_published = _outputs(haven, want[kind])
        assert len(got_records) == len(want_records) > 40, kind
        pd.testing.assert_frame_equal(got_records, want_records, check_exact=False,
                                      rtol=1e-12, obj=f"{kind} records")
        pd.testing.assert_frame_equal(got_published, want_published,
                                      obj=f"{kind} published tables")
        assert got[kind].summary == want[kind].summary, kind
        assert got[kind].rows == want[kind].rows
    assert got["segments"].summary["segments"]["maternal_infant"] > 0  # maternity was read
    assert got["costs"].summary["spend"] > 0
    assert got["journeys"].summary["through"] == str(old_data_through(frames))


def test_nothing_linked_is_refused_and_leaves_no_copy(haven, backend):
    link(haven)
    with pytest.raises(analyses.NothingToAnalyse, match="nothing landed and linked"):
        analyses.run_segments(haven, dt.date(2025, 4, 1))
    assert not any(haven.settings.layout.scratch_dir.iterdir())


# ------------------------------------------------------------------ the helpers
def test_the_helpers_moved_into_sql_equal_their_pandas_originals(haven, extracts, backend):
    at = _linked(haven, extracts)
    frames = _frames(haven)
    with linked_copy(haven, _filter(haven)) as copy:
        for sources in (frames, copy):
            assert journeys.data_through(sources) == old_data_through(frames) is not None
            practices, old = segments.latest_practices(sources), old_practices(frames)
            assert len(practices) > PERSONS // 2
            pd.testing.assert_series_equal(practices, old.sort_index(), check_names=False)
            con = features.connect(sources)
            try:
                for day in (at, add_months(at, 12)):
                    found = segments.maternity(con, day)
                    assert sorted(found.index) == sorted(old_maternity(frames, day).index)
                assert len(segments.maternity(con, add_months(at, 12))) > 0
            finally:
                con.close()
            assert list(costs.everyone(sources)) == list(old_everyone(frames))
    # Segments fetch only the features their rules read: the same values as the whole set.
    whole = features.build_features(frames, at)
    con = features.connect(frames)
    try:
        some = features.features_from(con, at, columns=segments.RULE_FEATURES)
    finally:
        con.close()
    assert list(some.columns) == [c for c in whole.columns if c in segments.RULE_FEATURES]
    pd.testing.assert_frame_equal(some, whole[list(some.columns)])
    assert len(some.columns) == len(segments.RULE_FEATURES) < len(whole.columns)


def test_latest_practice_rule_on_hand_made_registrations(backend) -> None:
    """The latest registration's practice; one without a date counts as latest (a stable
    sort put it last); a registration with no practice code is passed over."""
    gp = pd.DataFrame({
        "person_key": ["A", "A", "B", "B", "C", "C", "D"],
        "registration_date": ["2020-01-01", "2023-05-01", "2021-01-01", None, "2019-01-01",
                              "2024-01-01", "2022-02-02"],
        "gp_practice_code": ["Y1", "Y2", "Y3", "Y4", "Y5", None, None]})
    frames = {"gp_patients": gp}
    want = old_practices(frames)
    got = segments.latest_practices(frames)
    assert got.to_dict() == want.to_dict() == {"A": "Y2", "B": "Y4", "C": "Y5"}
    assert segments.latest_practices({}).empty and journeys.data_through({}) is None
    apc = pd.DataFrame({"person_key": ["A", "B"], "admission_date": ["2024-01-01", "bad"],
                        "discharge_date": [None, "2024-03-02"], "admission_method": "31"})
    assert journeys.data_through({"apc": apc}) == old_data_through({"apc": apc}) \
        == dt.date(2024, 3, 2)
    con = features.connect({"apc": apc})
    try:
        assert list(segments.maternity(con, dt.date(2024, 6, 1)).index) == ["A"]
    finally:
        con.close()


# ------------------------------------------------------------------ ranges of persons
def test_each_analysis_a_range_of_persons_at_a_time_equals_it_run_whole(haven, extracts,
                                                                       backend, monkeypatch):
    """Journeys, costs and segments run a range of person keys at a time (memory bounded by
    a range, issue #12) give exactly what one pass over everyone gives: the same records in
    the same order, the same published tables and summaries."""
    at = _linked(haven, extracts)
    whole = {kind: _run(haven, kind, at) for kind in analyses.KINDS}
    ranges: list[int] = []
    real = analyses.person_ranges

    def counted(sources, persons):
        found = real(sources, persons)
        ranges.append(len(found))
        return found

    monkeypatch.setattr(analyses, "person_ranges", counted)
    monkeypatch.setattr(analyses, "PART_PERSONS", PERSONS // 4)
    parted = {kind: _run(haven, kind, at) for kind in analyses.KINDS}
    assert ranges and all(n >= 4 for n in ranges)
    for kind in analyses.KINDS:
        got_records, got_published = _outputs(haven, parted[kind])
        want_records, want_published = _outputs(haven, whole[kind])
        assert len(got_records) == len(want_records) > 40, kind
        pd.testing.assert_frame_equal(got_records, want_records, check_exact=True,
                                      obj=f"{kind} records")
        pd.testing.assert_frame_equal(got_published, want_published, obj=f"{kind} tables")
        assert parted[kind].summary == whole[kind].summary, kind
    assert not any(haven.settings.layout.scratch_dir.iterdir())  # the ranges' files went


def test_the_ranges_cover_every_person_once_in_key_order(haven, extracts, backend):
    _linked(haven, extracts)
    with linked_copy(haven, _filter(haven)) as copy:
        everyone = list(costs.everyone(copy))
        ranges = features.person_ranges(copy, 100)
        assert len(ranges) == -(-len(everyone) // 100) > 3
        assert ranges[0][0] is None and ranges[-1][1] is None
        seen: list[str] = []
        rows = 0
        for low, high in ranges:
            part = copy.part(low, high)
            keys = list(costs.everyone(part))
            assert 0 < len(keys) <= 100 and all(
                (low is None or k >= low) and (high is None or k < high) for k in keys)
            seen += keys
            con = features.connect(part)
            try:
                rows += sum(con.execute(f"SELECT count(*) FROM v_{name}").fetchone()[0]
                            for name in features.COLUMNS)
            finally:
                con.close()
        assert seen == everyone  # each person once, in key order
        assert rows == copy.rows  # and every row in one range
        assert features.person_ranges(copy, len(everyone)) == [(None, None)]
        assert features.person_ranges(_frames(haven), 100) == [(None, None)]


def test_tables_from_grouped_rows_equal_tables_from_records(haven, extracts, backend):
    """The tables are built from counts and sums by group (a few thousand rows at any
    population): they equal those built from one record a person."""
    at = _linked(haven, extracts)
    rule, places = analyses.Rule.load(engine=haven.engine), analyses._places(haven)
    records, _ = _outputs(haven, _run(haven, "costs", at))
    around = pd.DataFrame({"pathway": ["pathway_0"] * 9, "spend_before": range(9),
                           "spend_after": range(9)})
    sums, dims = analysis_ranges.COST_SUMS, analysis_ranges.COST_DIMENSIONS
    grouped = analyses._regrouped([analysis_ranges.grouped(records[:100], dims, sums),
                                   analysis_ranges.grouped(records[100:], dims, sums)],
                                  list(dims), list(sums))
    assert len(grouped) < len(records) // 2
    shares = {s: costs.top_share(records["total"], s) for s in analyses.TOP_SHARES}
    want = analyses.cost_tables(records, around, rule, places)
    got = analyses.cost_tables(grouped, around, rule, places, shares)
    assert want.keys() == got.keys()
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name)
    segs, _ = _outputs(haven, _run(haven, "segments", at))
    want = analyses.segment_tables(segs, rule, places)
    got = analyses.segment_tables(analysis_ranges.grouped(
        segs, analysis_ranges.SEGMENT_DIMENSIONS, ("spend_12m",)), rule, places)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name)


def test_records_written_a_range_at_a_time_read_back_as_one_frame(tmp_path, backend):
    """A column empty in one range (all missing) takes the type the others give it; a range
    with no records at all (whose empty text columns are float: CI met one) adds nothing."""
    written = analyses.RecordsFile(tmp_path)
    none = pd.DataFrame({"person_key": pd.Series([], dtype=object),
                         "code": pd.Series([], dtype=float), "x": pd.Series([], dtype=float)})
    parts = [none, pd.DataFrame({"person_key": ["a", "b"], "code": [None, None],
                                 "x": [1.5, 2.0]}),
             pd.DataFrame({"person_key": ["c"], "code": ["Y1"], "x": [3.0]}), none]
    for number, part in enumerate(parts):
        written.take(analysis_ranges.keep_records(tmp_path, number, part))
    assert len(written) == 3
    written.move_to(tmp_path / "records.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "records.parquet"),
                                  pd.concat(parts[1:3], ignore_index=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.parquet"]
    only_empty = analyses.RecordsFile(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    only_empty.take(analysis_ranges.keep_records(tmp_path / "empty", 0, none))
    only_empty.move_to(tmp_path / "empty.parquet")
    assert pd.read_parquet(tmp_path / "empty.parquet").columns.tolist() == ["person_key",
                                                                          "code", "x"]


def test_a_range_of_persons_none_registered_keeps_the_registered_rule(haven, extracts,
                                                                      backend):
    """Whether GP registrations exist is the whole copy's: a range holding only persons
    with no registration (unlinked rows' keys; a small last range can be such) gets the
    registered persons' rule, as the whole does (nobody), not the rule for data without
    registrations (everyone with a record)."""
    at = _linked(haven, extracts)
    with linked_copy(haven, _filter(haven)) as copy:
        con = features.connect(copy)
        try:
            key = con.execute("""SELECT min(person_key) FROM v_apc WHERE person_key NOT IN
                (SELECT person_key FROM v_gp_patients WHERE person_key IS NOT NULL)
                AND admission_date < ?""", [at]).fetchone()[0]
        finally:
            con.close()
        assert key is not None
        alone = copy.part(key, key + "\0")
        assert list(costs.everyone(alone)) == [key]
        assert segments.assign_segments(alone, at).empty
        assert key not in set(segments.assign_segments(copy, at)["person_key"])
