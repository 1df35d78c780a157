"""The link map as one file per extract in generations (issue #12, incremental refresh): an
update writes the extracts it changes and hard-links the rest, and gives exactly the map,
review list and summary that rewriting every extract gives, on each kind of update; a killed
update leaves the current map whole; a map of one file (an older home) is split unchanged."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from governance.schema import extracts
from linkage import map_store, person_index
from linkage.index_matcher import estimate_quality, match_profiles
from pipeline.land import land
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(400, 7, out, progress=False)
    return out


def _matcher(query, profile, prior, labelled) -> pd.DataFrame:
    """The linkage engine, with every third match sent to review (so updates carry a review
    list forward, and retry its rows)."""
    found = match_profiles(query, profile, prior, labelled)
    found.loc[found.index % 3 == 0, "band"] = "review"
    return found


def _update(haven, said: list[str] | None = None, **kwargs) -> person_index.LinkSummary:
    kwargs.setdefault("batch_rows", 211)
    return person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                               _matcher, quality=estimate_quality,
                               progress=None if said is None else said.append, **kwargs)


def _told(said: list[str]) -> list[str]:
    """What an update said, less the line counting the files it wrote (the one difference)."""
    return [m for m in said if not m.startswith("writing the person index")]


def _outputs(haven) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (person_index.read_link_map(haven.settings),
            pq.read_table(haven.settings.layout.review).to_pandas())


def _inodes(haven) -> dict[str, int]:
    generation = map_store.current(haven.settings)
    assert generation is not None
    return {e.extract_id: os.stat(generation.path(e.extract_id)).st_ino
            for e in generation.entries}


def _against_rewriting_everything(haven, tmp_path: Path, monkeypatch, **kwargs) -> set[str]:
    """The update as it is, then from the same index with every extract rewritten: the same
    map, review list and summary. Returns the extracts whose files were kept, not written."""
    index = haven.settings.layout.index_dir
    before = tmp_path / "index-before"
    shutil.rmtree(before, ignore_errors=True)
    had = index.exists()
    if had:
        shutil.copytree(index, before, symlinks=True)
    inodes = _inodes(haven) if had else {}
    said: list[str] = []
    summary = _update(haven, said, **kwargs)
    outputs = _outputs(haven)
    kept = {e for e, n in _inodes(haven).items() if inodes.get(e) == n}
    shutil.rmtree(index)
    if had:
        shutil.copytree(before, index, symlinks=True)
    with monkeypatch.context() as patched:
        patched.setattr(person_index._Plan, "touched", lambda self, entry: True)
        patched.setattr(person_index, "_untouched_rows",
                        lambda *a: pytest.fail("every extract is read whole"))
        said_again: list[str] = []
        everything = _update(haven, said_again, **kwargs)
    # the same rows to link and the same priors (each source's share of registered rows)
    assert _told(said) == _told(said_again)
    pd.testing.assert_frame_equal(outputs[0], _outputs(haven)[0])
    pd.testing.assert_frame_equal(outputs[1], _outputs(haven)[1])
    assert summary.to_json() == everything.to_json()
    return kept


def _hold(haven, extract_ids: list[str], status: str) -> None:
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id.in_(extract_ids))
                           .values(status=status))


def test_an_update_writes_what_it_changes_and_equals_rewriting_everything(
        haven, synthetic, tmp_path, monkeypatch, backend):
    reports = land(haven, synthetic)
    landed = {r.extract_id: r.source for r in reports if r.status == "landed"}
    apc = next(e for e, s in landed.items() if s == "apc")
    register = next(e for e, s in landed.items() if s == "gp_patients")
    _hold(haven, [apc, register], "held")  # landed later, as a new month's extracts
    _against_rewriting_everything(haven, tmp_path, monkeypatch)
    first = map_store.current(haven.settings)
    unlinked = {e.extract_id for e in first.entries if e.methods.get("unlinked")}
    assert unlinked - {e for e, s in landed.items() if s == "social_care"}

    # a hospital extract: the registers are as they were, nothing else is read or written
    _hold(haven, [apc], "landed")
    kept = _against_rewriting_everything(haven, tmp_path, monkeypatch)
    care = {e for e, s in landed.items() if s == "social_care"}
    assert kept == set(landed) - {apc, register} - care  # client links: rewritten each run
    assert len(list(haven.settings.layout.index_dir.glob("map-*"))) == 1  # old one removed

    # a register: every unlinked row is tried again; extracts given links are rewritten
    _hold(haven, [register], "landed")
    kept = _against_rewriting_everything(haven, tmp_path, monkeypatch)
    linked_now = {e for e in unlinked if e not in kept}
    assert linked_now - care  # some older extract's rows were linked to the new register
    frame = person_index.read_link_map(haven.settings)
    assert (frame.loc[frame["extract_id"].isin(kept), "via_extract"] != register).all()

    # rows purged after an objection: their extract is rewritten, the others kept
    some = next(iter(sorted(kept)))
    rows = list(frame.loc[frame["extract_id"] == some, "row"].head(5))
    kept = _against_rewriting_everything(haven, tmp_path, monkeypatch,
                                         drop_rows={some: rows})
    assert some not in kept and kept
    left = person_index.read_link_map(haven.settings)
    assert not ((left["extract_id"] == some) & left["row"].isin(rows)).any()


def test_persons_files_are_the_rows_pseudonyms(haven, synthetic, backend):
    land(haven, synthetic)
    _update(haven)
    generation = map_store.current(haven.settings)
    for entry in generation.entries:
        rows = pq.read_table(generation.path(entry.extract_id)).to_pandas()
        persons = pq.read_table(generation.persons(entry.extract_id)).to_pandas()
        known = rows[rows["person_id"].notna()]
        want = known.groupby("person_id", sort=False).agg(
            person_key=("person_key", "first"), rows=("row", "size")).reset_index()
        pd.testing.assert_frame_equal(persons, want, check_dtype=False)
        assert entry.rows == len(rows)
        assert entry.methods == rows["method"].value_counts().to_dict()


def test_a_killed_update_leaves_the_map_whole_and_is_cleared(haven, synthetic, monkeypatch,
                                                             backend):
    reports = land(haven, synthetic)
    apc = next(r.extract_id for r in reports if r.source == "apc")
    _hold(haven, [apc], "held")
    _update(haven)
    before = person_index.read_link_map(haven.settings)
    _hold(haven, [apc], "landed")

    def killed(self, extract_id, source, frames):
        raise KeyboardInterrupt  # the process stopped while writing

    with monkeypatch.context() as patched:
        patched.setattr(map_store.NextGeneration, "write", killed)
        patched.setattr(map_store.NextGeneration, "abandon", lambda self: None)  # no clean-up
        with pytest.raises(KeyboardInterrupt):
            _update(haven)
    assert person_index.partial_files(haven.settings)  # the half-written generation
    pd.testing.assert_frame_equal(person_index.read_link_map(haven.settings), before)
    summary = _update(haven)
    assert summary.extracts_added == [apc]
    assert person_index.partial_files(haven.settings) == []


def test_a_map_of_one_file_is_split_unchanged_on_the_next_update(haven, synthetic, backend):
    reports = land(haven, synthetic)
    apc = next(r.extract_id for r in reports if r.source == "apc")
    _hold(haven, [apc], "held")
    _update(haven)
    before = person_index.read_link_map(haven.settings)
    layout = haven.settings.layout
    generation = map_store.current(haven.settings)
    # an older home: the map as one file
    pq.write_table(pa.Table.from_pandas(before, schema=person_index.MAP_SCHEMA,
                                        preserve_index=False), layout.legacy_link_map)
    layout.link_map.unlink()
    shutil.rmtree(generation.folder)
    pd.testing.assert_frame_equal(person_index.read_link_map(haven.settings), before)
    assert person_index.indexed_extracts(haven.settings) == sorted(set(before["extract_id"]))
    summary = _update(haven)  # nothing new: split, and up to date
    assert summary.extracts_added == [] and not layout.legacy_link_map.exists()
    pd.testing.assert_frame_equal(person_index.read_link_map(haven.settings), before)
    _hold(haven, [apc], "landed")
    assert _update(haven).extracts_added == [apc]
    after = person_index.read_link_map(haven.settings)
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)


def test_the_quality_estimate_is_given_the_priors_matching_used(haven, synthetic, backend):
    land(haven, synthetic)
    given: list[dict[str, float]] = []
    said: list[str] = []

    def quality(profile, examples, priors):
        given.append(priors)
        return {}

    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                        match_profiles, progress=said.append, quality=quality)
    assert len(given) == 1 and given[0]
    for source, prior in given[0].items():  # each source matched was linked at its prior
        told = [m for m in said if m.strip().startswith(f"{source}:") and "registered" in m]
        assert not told or f"{prior:.1%}" in told[0]
    assert any(f"{given[0]['apc']:.1%}" in m for m in said if "apc:" in m)


def test_a_client_is_one_person_after_one_run_when_any_of_its_rows_links(haven, synthetic,
                                                                        backend):
    land(haven, synthetic)
    _update(haven)
    frame = person_index.read_link_map(haven.settings)
    clients = frame[frame["client_key"].notna()]
    linked = clients.groupby("client_key")["person_id"].agg(["count", "size"])
    part = linked[(linked["count"] > 0) & (linked["count"] < linked["size"])]
    assert part.empty  # no client with some rows linked and others left unlinked
    assert (clients["method"] == "client").any() and (clients["method"] == "probabilistic").any()


def test_both_passes_hold_at_most_pass_rows_and_write_the_same_map(
        haven, synthetic, tmp_path, monkeypatch, backend):
    """The survey and the writing pass read `PASS_ROWS` rows a batch however large the
    batch asked for (their per-row frames and per-batch persons are what grew with the
    population), and the map, persons files and review list are those of one batch a file."""
    land(haven, synthetic)
    largest: list[int] = []

    def recorded(read):
        def reading(*args, **kwargs):
            for batch in read(*args, **kwargs):  # a frame (social care's) or an Arrow table
                largest.append(len(batch))
                yield batch
        return reading

    for name in ("_new_frames", "_new_tables"):
        monkeypatch.setattr(person_index, name, recorded(getattr(person_index, name)))
    monkeypatch.setattr(person_index, "PASS_ROWS", 10**9)
    _update(haven, batch_rows=10**9)
    whole = _outputs(haven)
    generation = map_store.current(haven.settings)
    persons = {e.extract_id: pq.read_table(generation.persons(e.extract_id))
               for e in generation.entries}
    shutil.rmtree(haven.settings.layout.index_dir)  # a new map of the same landed extracts
    assert max(largest) > 97
    largest.clear()
    monkeypatch.setattr(person_index, "PASS_ROWS", 97)
    _update(haven, batch_rows=10**9)
    assert max(largest) == 97  # both passes: every new extract is read through one of the two
    generation = map_store.current(haven.settings)
    biggest = 0
    for entry in generation.entries:
        metadata = pq.ParquetFile(generation.path(entry.extract_id)).metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        biggest = max(biggest, *sizes)
        assert pq.read_table(generation.persons(entry.extract_id)).equals(
            persons[entry.extract_id])
    assert biggest == 97  # the biggest extracts were written 97 rows at a time
    for got, want in zip(_outputs(haven), whole, strict=True):
        pd.testing.assert_frame_equal(got, want)
