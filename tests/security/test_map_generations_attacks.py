"""The link map's generations as an attacker meets them (Haven issue #12): a planted symlink,
an extract id that is not a file name, a key rotation racing a link, and what an opt-out purge
or a rotation leaves in the persons files. Each test names the promise it guards
(docs/threat-model.md). Synthetic 999-range data only; no identifier is printed."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factories import rows_for, write_extract
from governance import rotation
from governance.keys import KeyProvider
from governance.settings import Settings
from linkage import map_store, person_index, persons_file
from linkage.landing.land import LandingContext, land_file


def _rows(extract_id: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "extract_id": extract_id, "source": "apc", "row": range(n),
        "person_id": [f"id{i}" for i in range(n)], "person_key": [f"P{i}" for i in range(n)],
        "method": "nhs_number", "weight": float("nan"), "via_extract": None,
        "client_key": None})


def _first_generation(settings: Settings) -> map_store.Generation:
    settings.layout.index_dir.mkdir(parents=True, exist_ok=True)
    generation = map_store.NextGeneration(settings, None)
    generation.write("e1", "apc", [_rows("e1", 4)])
    return generation.commit()


def _victim(tmp_path: Path) -> Path:
    """A folder outside the index that looks like a generation (a manifest and a file)."""
    victim = tmp_path / "not-the-index"
    (victim / map_store.PERSONS).mkdir(parents=True)
    (victim / map_store.MANIFEST).write_text(json.dumps({"extracts": [
        {"extract_id": "e1", "source": "apc", "rows": 4, "methods": {"nhs_number": 4}}]}))
    pq.write_table(pa.Table.from_pandas(_rows("e1", 4), schema=map_store.MAP_SCHEMA,
                                        preserve_index=False), victim / "e1.parquet")
    pq.write_table(pa.table({"person_id": ["x"], "person_key": ["P"], "rows": [1]},
                            schema=persons_file.PERSONS_SCHEMA),
                   victim / map_store.PERSONS / "e1.parquet")
    return victim


@pytest.mark.parametrize("target", ["absolute", "relative", "inner symlink"])
def test_a_link_map_symlink_leading_out_of_the_index_is_refused_and_nothing_removed(
        tmp_path: Path, target: str):
    """Promise: the map is read from, and an update removes, only generation folders inside
    index/; a `link_map` symlink planted to lead elsewhere (absolute, `../`, or through a
    `map-*` symlink) is refused with a clear error, and what it names is left alone."""
    settings = Settings(home=tmp_path / "home")
    real = _first_generation(settings).folder
    victim = _victim(tmp_path)
    link = settings.layout.link_map
    link.unlink()
    if target == "absolute":
        os.symlink(victim, link)
    elif target == "relative":
        os.symlink(os.path.relpath(victim, link.parent), link)
    else:
        inner = settings.layout.map_generation("planted")
        os.symlink(victim, inner)
        os.symlink(inner.name, link)
    with pytest.raises(ValueError, match="link_map"):
        map_store.current(settings)
    with pytest.raises(ValueError, match="link_map"):
        map_store.read_table(settings)
    with pytest.raises(ValueError, match="link_map"):  # an update never swaps it away
        map_store.NextGeneration(settings, map_store.current(settings))
    with pytest.raises(ValueError, match="link_map"):  # nor clears the real one as stale
        map_store.partial(settings)
    assert real.is_dir()
    assert sorted(p.name for p in victim.rglob("*")) == ["_manifest.json", "_persons",
                                                         "e1.parquet", "e1.parquet"]


@pytest.mark.parametrize("extract_id", ["../../escaped", "a/b", "", ".", "_persons/x"])
def test_an_extract_id_that_is_not_a_file_name_is_refused_before_anything_is_written(
        tmp_path: Path, extract_id: str):
    """Promise: every map file is written inside its generation folder; an extract id that
    is not a plain file name (a legacy single-file map's rows name it) is refused with an
    error naming the field, and the home is left as it was."""
    settings = Settings(home=tmp_path / "home")
    settings.layout.index_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(_rows(extract_id, 3), schema=map_store.MAP_SCHEMA,
                                        preserve_index=False), settings.layout.legacy_link_map)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="extract_id"):
        map_store.split_legacy(settings)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not settings.layout.link_map.exists()


@pytest.fixture
def file_keys(haven) -> KeyProvider:
    """Rotation needs keys it can write: a key file rather than environment keys."""
    haven._keys = KeyProvider(haven.settings.layout.key_file)
    return haven.keys


def _linked_home(haven, file_keys, inbox: Path) -> list[str]:
    landing = LandingContext(haven.settings, haven.engine, file_keys, haven.actor)
    ids = [land_file(landing, write_extract(inbox / name, source, rows_for(source, 6, seed=3))
                     ).extract_id
           for name, source in (("a", "apc"), ("b", "gp_patients"), ("c", "ae"))]
    person_index.update(haven.settings, haven.engine, file_keys.current("linkage"))
    return ids


def _pseudonyms_under_index(settings: Settings) -> set[str]:
    """Every value of a `person_id` column in any Parquet file under index/ (any generation,
    any partial folder, persons files included), read here, not through the map store."""
    found: set[str] = set()
    for path in settings.layout.index_dir.rglob("*.parquet"):
        if "person_id" in pq.read_schema(path).names:
            found |= set(pq.read_table(path, columns=["person_id"]).column("person_id")
                         .drop_null().to_pylist())
    return found


def test_a_key_rotation_rewrites_the_map_under_the_index_lock(haven, file_keys, inbox,
                                                               monkeypatch):
    """Promise: a key rotation's new generation is written while no link may run (the index
    lock is held), so a concurrent link can neither clear the rotation's half-written
    generation nor swap in a map of old pseudonyms over it; afterwards no old pseudonym is
    left in any file under index/, persons files included."""
    _linked_home(haven, file_keys, inbox)
    old = _pseudonyms_under_index(haven.settings)
    assert old
    probes: list[bool] = []
    real = map_store.NextGeneration.write

    def write(self, *args, **kwargs):
        with haven.settings.layout.lock("index").open("a") as handle:
            try:  # another process's link would wait here
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                probes.append(False)
            except BlockingIOError:
                probes.append(True)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(map_store.NextGeneration, "write", write)
    rotation.rotate_pseudonym_key(
        haven.settings, haven.engine, file_keys, haven.actor,
        [lambda mapping: person_index.rekey(haven.settings, mapping)])
    monkeypatch.undo()
    assert probes and all(probes)
    left = _pseudonyms_under_index(haven.settings)
    assert left and not (left & old)


def test_a_purged_person_s_pseudonym_leaves_the_persons_files(haven, file_keys, inbox):
    """Promise: an opt-out purge removes the purged rows from the map and their pseudonym
    from every persons file whose extract no longer holds a row carrying it."""
    ids = _linked_home(haven, file_keys, inbox)
    frame = person_index.read_link_map(haven.settings)
    apc = frame[frame["extract_id"] == ids[0]]
    victim = apc["person_id"].dropna().iloc[0]
    rows = apc.loc[apc["person_id"] == victim, "row"].tolist()
    person_index.forget_rows(haven.settings, haven.engine, file_keys.current("linkage"),
                             {ids[0]: rows})
    generation = map_store.current(haven.settings)
    persons = pq.read_table(generation.persons(ids[0])).column("person_id").to_pylist()
    assert victim not in persons
    others = pq.read_table(generation.persons(ids[1])).column("person_id").to_pylist()
    assert victim in others  # the register still holds the person: their pseudonym stays


class Killed(BaseException):
    """The process stopped here (no clean-up runs: `abandon` is switched off)."""


class _KillAt:
    """`os` and `shutil` as `map_store` sees them, stopping the process at the n-th step of a
    swap (rename of the folder, new symlink, replace of `link_map`, removal of the old one)."""

    def __init__(self, module, at: int, steps: list[str]) -> None:
        self.module, self.at, self.steps = module, at, steps

    def __getattr__(self, name: str):
        real = getattr(self.module, name)
        if name not in ("rename", "symlink", "replace", "rmtree"):
            return real

        def step(*args, **kwargs):
            self.steps.append(name)
            if len(self.steps) == self.at:
                raise Killed
            return real(*args, **kwargs)

        return step


@pytest.mark.parametrize("at", [1, 2, 3, 4])
def test_a_kill_at_each_step_of_the_swap_leaves_one_whole_map_and_is_cleared(
        haven, file_keys, inbox, monkeypatch, at):
    """Promise: an update killed at any step of the swap leaves the old map or the new one
    whole, what it left is named by `partial_files` (so destruction counts and removes it),
    and the next update clears it and gives the full map."""
    import shutil

    _linked_home(haven, file_keys, inbox)
    before = person_index.read_link_map(haven.settings)
    landing = LandingContext(haven.settings, haven.engine, file_keys, haven.actor)
    new = land_file(landing, write_extract(inbox / "d", "op", rows_for("op", 5, seed=3)))
    steps: list[str] = []
    with monkeypatch.context() as patched:
        patched.setattr(map_store, "os", _KillAt(os, at, steps))
        patched.setattr(map_store, "shutil", _KillAt(shutil, at, steps))
        patched.setattr(map_store.NextGeneration, "abandon", lambda self: None)
        with pytest.raises(Killed):
            person_index.update(haven.settings, haven.engine, file_keys.current("linkage"))
    assert steps == ["rename", "symlink", "replace", "rmtree"][:at]
    seen = person_index.read_link_map(haven.settings)
    if at <= 3:  # before the symlink was replaced: the old map, whole
        pd.testing.assert_frame_equal(seen, before)
    else:
        assert set(seen["extract_id"]) == set(before["extract_id"]) | {new.extract_id}
        pd.testing.assert_frame_equal(seen.iloc[:len(before)], before)
    assert person_index.partial_files(haven.settings)  # the unfinished or the old generation
    person_index.update(haven.settings, haven.engine, file_keys.current("linkage"))
    assert person_index.partial_files(haven.settings) == []
    assert [p.name for p in haven.settings.layout.index_dir.glob("map-*")] == [
        map_store.current(haven.settings).folder.name]
    after = person_index.read_link_map(haven.settings)
    assert set(after["extract_id"]) == set(before["extract_id"]) | {new.extract_id}


def _some_to_review(query, profile, prior, labelled) -> pd.DataFrame:
    """The linkage engine, with every third match sent to the review list."""
    from linkage.index_matcher import match_profiles

    found = match_profiles(query, profile, prior, labelled)
    found.loc[found.index % 3 == 0, "band"] = "review"
    return found


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(300, 5, out, progress=False)
    return out


def _review(settings: Settings) -> pd.DataFrame:
    return pq.read_table(settings.layout.review).to_pandas()


@pytest.mark.parametrize("action", ["destroy", "purge"])
def test_a_kill_after_the_swap_before_the_review_list_is_finished_on_the_next_run(
        haven, synthetic, monkeypatch, action, backend):
    """Promise: a destruction or purge killed after the new map was swapped in, before the
    review list and quality file were rewritten, is finished when run again: the review list
    keeps no pair of a destroyed or purged row and destruction can certify (the map being
    up to date does not stop the run from mending the files beside it)."""
    from sqlalchemy import update as sql_update

    from governance.schema import extracts
    from pipeline.land import land

    land(haven, synthetic)
    key = haven.keys.current("linkage")
    person_index.update(haven.settings, haven.engine, key, _some_to_review)
    review = _review(haven.settings)
    assert len(review)
    target = str(review["query_extract"].iloc[0])
    rows = sorted({int(r) for r in review.loc[review["query_extract"] == target, "query_row"]})

    def held() -> int:
        now = _review(haven.settings)
        if action == "destroy":
            return int((now["query_extract"] == target).sum()
                       + (now["profile_extract"] == target).sum())
        return int(((now["query_extract"] == target) & now["query_row"].isin(rows)).sum())

    def act() -> None:
        if action == "destroy":
            person_index.forget_extracts(haven.settings, haven.engine, key, [target],
                                         _some_to_review)
        else:
            person_index.forget_rows(haven.settings, haven.engine, key, {target: rows},
                                     _some_to_review)

    if action == "destroy":
        with haven.engine.begin() as connection:
            connection.execute(sql_update(extracts).where(extracts.c.extract_id == target)
                               .values(status="destroying"))

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(person_index, "_write", killed)  # the review list is written next
        with pytest.raises(Killed):
            act()
    assert held()  # the kill left the review list as it was
    act()
    assert held() == 0
    said: list[str] = []  # mended: the run after finds the map and the files beside it current
    person_index.update(haven.settings, haven.engine, key, _some_to_review,
                        progress=said.append)
    assert any("up to date" in m for m in said)
    if action == "destroy":
        left = person_index.leftovers(haven.settings, [target])
        assert set(left.values()) == {0}, left


@pytest.mark.parametrize("at", [0, 1, 2, 3, 4])
def test_a_rotation_killed_while_rewriting_the_map_and_run_again_leaves_no_old_pseudonym(
        haven, file_keys, inbox, monkeypatch, at):
    """Promise: a key rotation killed while writing the map's next generation (0: while
    writing a file) or at any step of its swap, then run again, leaves no old pseudonym in
    any file under index/, and each person their key."""
    import shutil

    _linked_home(haven, file_keys, inbox)
    old = _pseudonyms_under_index(haven.settings)
    keys_before = person_index.read_link_map(haven.settings)[["extract_id", "row", "person_key"]]
    steps: list[str] = []

    def rotate() -> None:
        rotation.rotate_pseudonym_key(
            haven.settings, haven.engine, file_keys, haven.actor,
            [lambda mapping: person_index.rekey(haven.settings, mapping)])

    def dies(self, *args, **kwargs):
        raise Killed

    with monkeypatch.context() as patched:
        if at == 0:
            patched.setattr(map_store.NextGeneration, "write", dies)
        patched.setattr(map_store, "os", _KillAt(os, at or -1, steps))
        patched.setattr(map_store, "shutil", _KillAt(shutil, at or -1, steps))
        patched.setattr(map_store.NextGeneration, "abandon", lambda self: None)
        with pytest.raises(Killed):
            rotate()
    assert person_index.partial_files(haven.settings)
    rotate()
    assert person_index.partial_files(haven.settings) == []
    left = _pseudonyms_under_index(haven.settings)
    assert left and not (left & old)
    keys_after = person_index.read_link_map(haven.settings)[["extract_id", "row", "person_key"]]
    pd.testing.assert_frame_equal(keys_after, keys_before)


def test_score_s_linked_copy_never_mixes_two_generations(haven, file_keys, inbox):
    """Promise: a reader of the linked rows (score's linked copy) sees one generation of the
    map from its first extract to its last, though an update swaps a new one in meanwhile."""
    from linkage.linked_view import linked_batches

    _linked_home(haven, file_keys, inbox)
    base = map_store.current(haven.settings)
    reader = linked_batches(haven.settings, haven.engine, batch_rows=2)
    first = next(reader)
    # an update swaps in a generation in which every person has a new key
    generation = map_store.NextGeneration(haven.settings, base)
    for entry in base.entries:
        frame = pq.read_table(base.path(entry.extract_id)).to_pandas()
        frame["person_key"] = "Pnew" + frame["person_key"].str[1:]
        generation.write(entry.extract_id, entry.source, [frame])
    generation.commit()
    keys = [first[2]["person_key"]] + [frame["person_key"] for _, _, frame in reader]
    generations = {str(k).startswith("Pnew") for part in keys for k in part}
    assert len(generations) == 1  # one generation's keys, whichever


def test_a_single_file_map_left_beside_a_generation_is_named_and_removed(tmp_path: Path):
    """Promise: the single-file map of an older home, left beside the generation it was split
    into (a split killed before removing it), is named by `partial` (so destruction counts it
    until it is removed) and removed with what else a killed run left."""
    settings = Settings(home=tmp_path / "home")
    _first_generation(settings)
    legacy = settings.layout.legacy_link_map
    pq.write_table(pa.Table.from_pandas(_rows("e0", 3), schema=map_store.MAP_SCHEMA,
                                        preserve_index=False), legacy)
    assert map_store.partial(settings) == [legacy]
    assert person_index.leftovers(settings, ["e0"])["index_partial_files"] == 1
    assert person_index.discard_partial_files(settings) == 1
    assert not legacy.exists() and map_store.read_table(settings).num_rows == 4


def _swap_in_new_keys(settings: Settings, current=None) -> None:
    """What an update's swap does to a reader: a new generation (every person key changed)
    in, the old one removed."""
    base = (current or map_store.current)(settings)
    generation = map_store.NextGeneration(settings, base)
    for entry in base.entries:
        frame = pq.read_table(base.path(entry.extract_id)).to_pandas()
        frame["person_key"] = "Pnew" + frame["person_key"].str[1:]
        generation.write(entry.extract_id, entry.source, [frame])
    generation.commit()
    assert not base.folder.exists()


def test_a_pinned_read_sees_one_generation_whole_across_a_swap(tmp_path: Path):
    """Promise: a reader that pins the map (`map_store.Pinned`) reads the generation it
    pinned, every pass and every extract, though an update swaps another in and removes it."""
    settings = Settings(home=tmp_path / "home")
    settings.layout.index_dir.mkdir(parents=True)
    first = map_store.NextGeneration(settings, None)
    first.write("e1", "apc", [_rows("e1", 4)])
    first.write("e2", "apc", [_rows("e2", 3)])
    first.commit()
    with map_store.Pinned(settings) as pinned:
        _swap_in_new_keys(settings)
        for _ in range(2):
            keys = [k for b in pinned.batches(["person_key"]) for k in
                    b.column("person_key").to_pylist()]
            assert len(keys) == 7 and not any(k.startswith("Pnew") for k in keys)
        e2 = pq.read_table(pinned.extract("e2"), columns=["person_key"],
                           filters=[("row", ">=", 1)]).column("person_key").to_pylist()
        assert e2 == ["P1", "P2"] and pinned.extract("e9") is None
    assert pinned.handles == []
    with map_store.Pinned(settings) as pinned:  # a new pin: the new generation
        assert all(k.startswith("Pnew") for b in pinned.batches(["person_key"])
                   for k in b.column("person_key").to_pylist())


def test_a_pinned_read_meeting_a_swap_while_opening_opens_the_new_generation(
        tmp_path: Path, monkeypatch):
    """Promise: a pin that meets a swap while opening the files opens the new generation
    whole (up to three tries), and a map with nothing indexed or an older home's single file
    is pinned as it is."""
    settings = Settings(home=tmp_path / "home")
    with map_store.Pinned(settings) as pinned:
        assert list(pinned.files()) == [] and pinned.extract("e1") is None
    _first_generation(settings)
    real = map_store.current
    calls: list[int] = []

    def swapping(settings: Settings) -> map_store.Generation | None:
        calls.append(1)
        found = real(settings)
        if len(calls) == 1:  # the generation read, then swapped away before its files open
            _swap_in_new_keys(settings, real)
        return found

    monkeypatch.setattr(map_store, "current", swapping)
    with map_store.Pinned(settings) as pinned:
        keys = pq.read_table(pinned.extract("e1")).column("person_key").to_pylist()
    assert len(calls) == 2 and all(k.startswith("Pnew") for k in keys)
    monkeypatch.setattr(map_store, "current", lambda settings: pytest.fail("not reached")
                        if False else (_ for _ in ()).throw(FileNotFoundError("gone")))
    with pytest.raises(FileNotFoundError):
        map_store.Pinned(settings)
    monkeypatch.setattr(map_store, "current", real)
    legacy = Settings(home=tmp_path / "legacy")
    legacy.layout.index_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(_rows("e1", 3), schema=map_store.MAP_SCHEMA,
                                        preserve_index=False), legacy.layout.legacy_link_map)
    with map_store.Pinned(legacy) as pinned:
        assert pq.read_table(pinned.extract("e1")).num_rows == 3
        assert pinned.extract("any") is pinned.extract("e1")  # filter on extract_id


def test_the_pseudonyms_behind_bare_rows_are_read_from_one_generation(
        haven, file_keys, inbox, monkeypatch):
    """Promise: the purpose filter's pairs of person key and pseudonym (read in two passes)
    come from one generation of the map, though an update swaps another in between them:
    never keys of one generation looked up in another."""
    from factories import invalid_nhs
    from linkage.index_matcher import match_profiles

    _linked_home(haven, file_keys, inbox)
    rows = rows_for("ae", 6, seed=3)  # the register's persons, without a valid NHS number
    for row in rows:
        row["nhs_number"] = invalid_nhs(row["nhs_number"])
        row["attendance_id"] = "B" + row["attendance_id"]
    landing = LandingContext(haven.settings, haven.engine, file_keys, haven.actor)
    land_file(landing, write_extract(inbox / "bare", "ae", rows))
    person_index.update(haven.settings, haven.engine, file_keys.current("linkage"),
                        match_profiles)
    want = person_index.pseudonyms_behind_bare_rows(haven.settings, batch_rows=2)
    assert len(want)
    real = person_index.pc

    class SwapAfterFirstPass:
        swapped = False

        def __getattr__(self, name: str):
            return getattr(real, name)

        def is_in(self, *args, **kwargs):  # the second pass has begun
            if not self.swapped:
                self.swapped = True
                _swap_in_new_keys(haven.settings)
            return real.is_in(*args, **kwargs)

    monkeypatch.setattr(person_index, "pc", SwapAfterFirstPass())
    got = person_index.pseudonyms_behind_bare_rows(haven.settings, batch_rows=2)
    pd.testing.assert_frame_equal(got, want)


def test_a_generation_is_on_disk_before_it_is_swapped_in_and_the_swap_before_the_old_goes(
        tmp_path: Path, monkeypatch):
    """Promise: a power cut never leaves the symlink naming a generation whose files were not
    yet written to disk while the old map (and the person keys it kept) is removed: every
    file and folder of the new generation is flushed before the swap, and the index folder
    (the swap itself) before the old generation is removed."""
    import shutil

    settings = Settings(home=tmp_path / "home")
    base = _first_generation(settings)
    events: list[tuple[str, str]] = []

    class Recording:
        def __init__(self, module) -> None:
            self.module = module

        def __getattr__(self, name: str):
            real = getattr(self.module, name)
            if name == "fsync":
                def fsync(fd: int) -> None:
                    events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                    return real(fd)
                return fsync
            if name in ("rename", "replace", "rmtree"):
                def step(*args, **kwargs):
                    events.append((name, str(args[0])))
                    return real(*args, **kwargs)
                return step
            return real

    monkeypatch.setattr(map_store, "os", Recording(os))
    monkeypatch.setattr(map_store, "shutil", Recording(shutil))
    generation = map_store.NextGeneration(settings, base)
    generation.keep(base.entries[0])
    generation.write("e2", "apc", [_rows("e2", 3)])
    tmp = generation.folder
    final = generation.commit().folder
    names = [e[0] for e in events]
    renamed, replaced, removed = (names.index("rename"), names.index("replace"),
                                  names.index("rmtree"))
    flushed = {path for kind, path in events[:renamed] if kind == "fsync"}
    wanted = {str(p).replace(str(final), str(tmp)) for p in final.rglob("*")} | {str(tmp)}
    assert wanted <= flushed
    assert ("fsync", str(settings.layout.index_dir)) in events[replaced:removed]


@pytest.mark.parametrize("change", ["register rows purged", "register destroyed, apc new"])
def test_an_update_on_a_register_s_change_equals_rewriting_every_extract(
        haven, synthetic, tmp_path, monkeypatch, change, backend):
    """Promise: the incremental update gives the map, review list and summary that rewriting
    every extract gives, also when a register's rows are purged (the registers changed: every
    unlinked row of untouched extracts is tried again) and when a register is destroyed in
    the same run as a new extract lands."""
    from integration.test_link_map_generations import _against_rewriting_everything
    from sqlalchemy import update as sql_update

    from governance.schema import extracts
    from pipeline.land import land

    reports = land(haven, synthetic)
    landed = {r.extract_id: r.source for r in reports if r.status == "landed"}
    apc = next(e for e, s in landed.items() if s == "apc")
    register = next(e for e, s in landed.items() if s == "gp_patients")

    def hold(extract_id: str, status: str) -> None:
        with haven.engine.begin() as connection:
            connection.execute(sql_update(extracts).where(extracts.c.extract_id == extract_id)
                               .values(status=status))

    hold(apc, "held")
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                        _some_to_review, batch_rows=211)
    if change == "register rows purged":
        frame = person_index.read_link_map(haven.settings)
        rows = list(frame.loc[frame["extract_id"] == register, "row"].head(40))
        kept = _against_rewriting_everything(haven, tmp_path, monkeypatch,
                                             drop_rows={register: rows})
        assert register not in kept
        left = person_index.read_link_map(haven.settings)
        assert not ((left["extract_id"] == register) & left["row"].isin(rows)).any()
    else:
        hold(register, "destroying")
        hold(apc, "landed")
        _against_rewriting_everything(haven, tmp_path, monkeypatch)
        left = person_index.read_link_map(haven.settings)
        assert apc in set(left["extract_id"]) and register not in set(left["extract_id"])
        assert not (left["via_extract"] == register).any()


def test_what_destruction_measures_is_one_generation_though_a_link_swaps_meanwhile(
        haven, file_keys, inbox, monkeypatch):
    """Promise: destruction's measurement of what the index holds (`leftovers`; destruction
    holds no index lock, so a link may swap a generation in meanwhile) reads one generation
    whole: it neither fails on the removed files nor counts parts of two maps."""
    ids = _linked_home(haven, file_keys, inbox)
    want = person_index.leftovers(haven.settings, ids[:1])
    assert want["index_rows"] == 6
    real = pq.ParquetFile.iter_batches
    swapped: list[bool] = []

    def iter_batches(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            yield batch
            if not swapped:  # a link swaps a generation in after the first batch is read
                swapped.append(True)
                _swap_in_new_keys(haven.settings)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    got = person_index.leftovers(haven.settings, ids[:1])
    assert swapped and got == want


def test_a_destroyed_extract_s_files_had_no_other_name_and_have_none_left(
        haven, file_keys, inbox):
    """Promise: though generations share unchanged files by hard links, after each update
    every file of the map has one name (the current generation's), so destroying an extract
    removes the last name of its map and persons files: their rows are freed, not kept alive
    under another name anywhere under index/."""
    ids = _linked_home(haven, file_keys, inbox)
    landing = LandingContext(haven.settings, haven.engine, file_keys, haven.actor)
    land_file(landing, write_extract(inbox / "d", "op", rows_for("op", 5, seed=3)))
    key = file_keys.current("linkage")
    person_index.update(haven.settings, haven.engine, key)  # the first three hard-linked
    generation = map_store.current(haven.settings)
    index = haven.settings.layout.index_dir
    files = [p for p in index.rglob("*") if p.is_file()]
    assert {p.stat().st_nlink for p in files} == {1}
    doomed = {(p.stat().st_ino, p.stat().st_size) for p in (
        generation.path(ids[0]), generation.persons(ids[0]))}
    from sqlalchemy import update as sql_update

    from governance.schema import extracts
    with haven.engine.begin() as connection:
        connection.execute(sql_update(extracts).where(extracts.c.extract_id == ids[0])
                           .values(status="destroying"))
    person_index.forget_extracts(haven.settings, haven.engine, key, [ids[0]])
    after = [p for p in index.rglob("*") if p.is_file()]
    assert {p.stat().st_nlink for p in after} == {1}
    assert not [p for p in index.rglob("*") if ids[0] in p.name]
    assert not doomed & {(p.stat().st_ino, p.stat().st_size) for p in after
                         if p.suffix == ".parquet" and p.parent.parent == index}
    assert person_index.partial_files(haven.settings) == []


KILLED_LINK = """
import os, signal, sys
from cli.main import main
from linkage import map_store

step = sys.argv[1]


class KillAfter:
    def __getattr__(self, name):
        real = getattr(os, name)
        if name != step:
            return real

        def then_die(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        return then_die


map_store.os = KillAfter()
sys.exit(main(["link"], dict(os.environ)))
"""


@pytest.mark.parametrize("step", ["link", "rename", "replace"])
def test_a_link_killed_by_sigkill_mid_swap_is_found_and_destroyed_with_the_extracts(
        haven, landing, inbox, step):
    """Promise: `haven link` killed outright (SIGKILL: no clean-up of any kind) after hard-
    linking a kept file, after renaming its new generation into place, or after swapping the
    symlink, leaves a map readers read whole; what it left is named by `partial_files`, and
    destroying every extract removes it and certifies nothing left under index/."""
    import datetime as dt
    import subprocess
    import sys

    from security.test_destruction import environ, left_behind, nothing_left

    from pipeline import govern

    ids = [land_file(landing, write_extract(inbox / s, s, rows_for(s, 6, seed=4))).extract_id
           for s in ("apc", "gp_patients")]
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"))
    before = person_index.read_link_map(haven.settings)
    ids.append(land_file(landing, write_extract(inbox / "ae", "ae", rows_for("ae", 6, seed=4))
                         ).extract_id)
    done = subprocess.run([sys.executable, "-c", KILLED_LINK, step], env={
        **os.environ, **environ(haven)}, cwd=Path(__file__).parents[2], capture_output=True,
        timeout=300)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    seen = person_index.read_link_map(haven.settings)
    if step == "replace":
        assert set(seen["extract_id"]) == set(ids)
    else:
        pd.testing.assert_frame_equal(seen, before)
    assert person_index.partial_files(haven.settings)
    certificate = govern.destroy_expired(haven, dt.date(2099, 1, 1))
    assert set(certificate.remaining.values()) == {0}
    assert left_behind(haven, ids) == nothing_left(haven, ids)
    assert person_index.partial_files(haven.settings) == []
