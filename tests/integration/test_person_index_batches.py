"""The person index is built in two streaming passes, a batch of rows at a time (issue #12):
whatever the batch size, the same landed data give the same map, review list and counts, on
a first build and on each kind of update (a register destroyed, rows purged, an extract
added). A batch of 97 rows splits every extract and every client across batches, and the
probabilistic step's reads of the register and the rows to link."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from factories import rows_for, write_extract
from governance.schema import extracts
from linkage import index_matching, person_index
from linkage.index_matcher import estimate_quality, match_profiles
from linkage.landing.land import land_file
from linkage.profile_store import ProfileWriter
from pipeline.land import land
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])
SMALL = 97


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(400, 7, out, progress=False)
    return out


def _update(haven, batch_rows: int, **kwargs) -> person_index.LinkSummary:
    return person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                               match_profiles, quality=estimate_quality,
                               batch_rows=batch_rows, **kwargs)


def _outputs(haven) -> tuple[pd.DataFrame, pd.DataFrame]:
    layout = haven.settings.layout
    return pq.read_table(layout.link_map).to_pandas(), pq.read_table(layout.review).to_pandas()


def _both_ways(haven, tmp_path: Path, **kwargs) -> tuple[tuple, tuple]:
    """The same update from the same index, once in small batches and once in one batch."""
    index = haven.settings.layout.index_dir
    before = tmp_path / "index-before"
    shutil.rmtree(before, ignore_errors=True)
    if index.exists():
        shutil.copytree(index, before)
    with pytest.MonkeyPatch.context() as patch:  # the probabilistic step's reads too
        patch.setattr(index_matching, "READ_ROWS", SMALL)
        small = _update(haven, SMALL, **kwargs)
    small_out = _outputs(haven)
    shutil.rmtree(index)
    if before.exists():
        shutil.copytree(before, index)
    whole = _update(haven, 10_000_000, **kwargs)
    return (small, small_out), (whole, _outputs(haven))


def _same(left: tuple, right: tuple) -> None:
    (summary_a, (map_a, review_a)), (summary_b, (map_b, review_b)) = left, right
    pd.testing.assert_frame_equal(map_a, map_b)
    pd.testing.assert_frame_equal(review_a, review_b)
    assert summary_a.to_json() == summary_b.to_json()


def test_batch_size_changes_nothing_on_build_destroy_purge_and_add(haven, synthetic, tmp_path,
                                                                  backend):
    reports = land(haven, synthetic)
    landed = {r.extract_id: r for r in reports if r.status == "landed"}
    held_back = next(e for e, r in landed.items() if "apc" in e)
    with haven.engine.begin() as connection:  # landed later, as a new month's extract
        connection.execute(update(extracts).where(extracts.c.extract_id == held_back)
                           .values(status="held"))
    small, whole = _both_ways(haven, tmp_path)
    _same(small, whole)
    frame = whole[1][0]
    methods = set(frame["method"])
    assert {"nhs_number", "client", "probabilistic"} <= methods  # every method exercised
    assert len(frame) > 50 * SMALL

    # a register destroyed: its rows leave, the links resting on it are retried
    register = next(e for e in landed if "gp_patients" in e)
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id == register)
                           .values(status="destroyed"))
    small, whole = _both_ways(haven, tmp_path)
    _same(small, whole)
    assert register not in set(whole[1][0]["extract_id"])
    assert register not in set(whole[1][0]["via_extract"].dropna())
    assert "unlinked" in set(whole[1][0]["method"])  # rows left without their register

    # rows purged after an objection, in social care and in the other register
    care = frame[frame["source"] == "social_care"]
    purged = {e: list(g["row"].head(15)) for e, g in care.groupby("extract_id")}
    small, whole = _both_ways(haven, tmp_path, drop_rows=purged)
    _same(small, whole)
    left = whole[1][0]
    assert not any(((left["extract_id"] == e) & left["row"].isin(rows)).any()
                   for e, rows in purged.items())

    # a new extract arrives
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id == held_back)
                           .values(status="landed"))
    small, whole = _both_ways(haven, tmp_path)
    _same(small, whole)
    assert whole[0].extracts_added == [held_back]


def test_a_client_whose_rows_fall_in_different_batches_is_still_one_person(haven, landing,
                                                                          inbox, backend):
    """The carrier of a client's pseudonym is the last row, its bare rows the first ones:
    with 4 rows a batch, the client link must reach across batches."""
    rows = rows_for("social_care", 24, seed=3)
    for bare in range(0, 20, 5):
        rows[bare]["client_id"] = rows[23 - bare // 5]["client_id"]
        rows[bare]["nhs_number"] = ""
    land_file(landing, write_extract(inbox, "social_care", rows, sender="E08000035"))
    key = haven.keys.current("linkage")
    small = person_index.update(haven.settings, haven.engine, key, batch_rows=4)
    written = person_index.read_link_map(haven.settings)
    shutil.rmtree(haven.settings.layout.index_dir)
    whole = person_index.update(haven.settings, haven.engine, key)
    pd.testing.assert_frame_equal(written, person_index.read_link_map(haven.settings))
    frame = written.set_index("row")
    assert small.to_json() == whole.to_json()
    for bare in range(0, 20, 5):
        assert frame.loc[bare + 1, "method"] == "client"
        assert frame.loc[bare + 1, "person_key"] == frame.loc[24 - bare // 5, "person_key"]


def test_export_written_a_batch_at_a_time_is_the_map(haven, landing, inbox, tmp_path,
                                                     monkeypatch, backend):
    """The auditable export (CSV and Parquet) equals the map's columns whatever the batch."""
    land_file(landing, write_extract(inbox, "apc", rows_for("apc", 11, seed=4)))
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"))
    monkeypatch.setattr(person_index, "BATCH_ROWS", 3)
    columns = ["extract_id", "source", "row", "person_key", "method", "weight"]
    want = person_index.read_link_map(haven.settings)[columns]
    assert person_index.export(haven.settings, tmp_path / "map.csv") == 11
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "map.csv"), want,
                                  check_dtype=False)
    assert person_index.export(haven.settings, tmp_path / "map.parquet") == 11
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "map.parquet"), want)
    with pytest.raises(ValueError, match="--out must end in"):
        person_index.export(haven.settings, tmp_path / "map.txt")
    assert not (tmp_path / "map.txt").exists()


def test_matching_a_chunk_of_query_rows_at_a_time_finds_the_same_links(haven, synthetic,
                                                                       monkeypatch, tmp_path,
                                                                       backend):
    """Candidate pairs are scored a chunk of query rows at a time (memory holds a chunk's
    pairs); the links, weights and review band are those of scoring all pairs at once."""
    from linkage import index_matcher
    from linkage.index_matching import read_rows

    land(haven, synthetic)
    landed = person_index.landed_extracts(haven.engine)
    frames = {s: read_rows(haven.settings, e, encodings=True)
              for e, s in zip(landed["extract_id"], landed["source"], strict=True)}
    profile = frames["gp_patients"]
    profile = profile[profile["person_id"].notna()].reset_index(drop=True)
    query = pd.concat([frames["social_care"], profile])  # the register against itself too
    fields = [c for c in query.columns if c.startswith("lk_") and c in profile.columns]
    query = query[["extract_id", "row", *fields]].reset_index(drop=True)
    profile = profile[["extract_id", "row", "person_id", *fields]]
    examples = profile.iloc[::2]  # labelled rows: a supervised model, fitted chunk by chunk
    whole = index_matcher.match_profiles(query, profile, 0.95, examples)
    unsupervised = index_matcher.match_profiles(query, profile, 0.95)
    monkeypatch.setattr(index_matcher, "QUERY_CHUNK", 7)
    assert len(query) // 50 > index_matcher.QUERY_CHUNK
    chunked = index_matcher.match_profiles(query, profile, 0.95, examples)
    assert len(whole) > 300 and (whole["band"] == "link").any()
    pd.testing.assert_frame_equal(chunked, whole)
    # parts bounded by candidate pairs rather than rows: the same links again
    monkeypatch.setattr(index_matcher, "QUERY_CHUNK", 10**6)
    monkeypatch.setattr(index_matcher, "CHUNK_PAIRS", 40)
    pd.testing.assert_frame_equal(index_matcher.match_profiles(query, profile, 0.95, examples),
                                  whole)
    pd.testing.assert_frame_equal(index_matcher.match_profiles(query, profile, 0.95),
                                  unsupervised)
    # the register in buckets of persons: the same links (the evidence summed over buckets
    # may differ from one sum in its last bits: probabilities to 1e-12)
    writer = ProfileWriter(tmp_path / "buckets", len(profile), pa.Schema.from_pandas(
        profile, preserve_index=False), bucket_rows=len(profile) // 5)
    for start in range(0, len(profile), 100):
        writer.add(pa.Table.from_pandas(profile.iloc[start:start + 100], preserve_index=False))
    store = writer.close()
    assert len(store.buckets) == 5 and store.n == len(profile)
    pd.testing.assert_frame_equal(index_matcher.match_profiles(query, store, 0.95, examples),
                                  whole, check_exact=False, rtol=1e-12, atol=0)
    # blocks skipped as oversized are those of the whole register, not of a bucket
    monkeypatch.setattr(index_matcher, "MAX_BLOCK_PAIRS", 3)
    capped = index_matcher.match_profiles(query, profile, 0.95, examples)
    assert not capped.equals(whole)  # the cap bites
    pd.testing.assert_frame_equal(index_matcher.match_profiles(query, store, 0.95, examples),
                                  capped, check_exact=False, rtol=1e-12, atol=0)


def test_profiles_held_in_buckets_of_persons_change_nothing(haven, synthetic, tmp_path,
                                                            monkeypatch, backend):
    """A large register's profiles are held a bucket of persons at a time (written to the
    run's scratch folder): the map, review list and quality figures are those of one bucket,
    on a first build and after a register is destroyed."""
    from linkage import profile_store

    def both(**kwargs) -> tuple[tuple, tuple]:
        index = haven.settings.layout.index_dir
        before = tmp_path / "index-before"
        shutil.rmtree(before, ignore_errors=True)
        if index.exists():
            shutil.copytree(index, before)
        one = _update(haven, 10_000_000, **kwargs)
        one_out = _outputs(haven)
        shutil.rmtree(index)
        if before.exists():
            shutil.copytree(before, index)
        monkeypatch.setattr(profile_store, "BUCKET_ROWS", 90)
        said: list[str] = []
        several = person_index.update(haven.settings, haven.engine,
                                      haven.keys.current("linkage"), match_profiles,
                                      quality=estimate_quality, progress=said.append, **kwargs)
        monkeypatch.setattr(profile_store, "BUCKET_ROWS", 400_000)
        buckets.extend(s for s in said if "bucket(s) of persons" in s)
        return (one, one_out), (several, _outputs(haven))

    buckets: list[str] = []

    landed = {r.extract_id: r for r in land(haven, synthetic) if r.status == "landed"}
    one, several = both()
    _same(one, several)
    assert "probabilistic" in set(one[1][0]["method"])
    assert one[0].quality["social_care"]["evaluated_rows"] > 0  # quality measured too
    assert buckets and "(1 bucket" not in buckets[0]
    assert not any(haven.settings.layout.scratch_dir.iterdir())  # buckets removed
    register = next(e for e in landed if "gp_patients" in e)
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id == register)
                           .values(status="destroyed"))
    _same(*both())
