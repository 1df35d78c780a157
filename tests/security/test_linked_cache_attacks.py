"""Attacks on the linked cache (pipeline/linked_cache.py) found by a reviewer breaking it, held
here: symlinks planted in the data directory in place of the cache folder, an entry or the
scratch folder (a copy of linked rows written outside the data directory, folders outside it
removed); a file there that no removal could delete (destruction blocked for good, removal
counts that were false); a landed file rewritten in place with its size and modification time
put back; a purge racing a stage's keep."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from linked_cache_fixtures import takes_watched
from sqlalchemy import select

import pipeline.linked_cache as cache_module
from governance import retention, store
from governance.schema import extracts as extracts_table
from pipeline import govern
from pipeline.land import land
from pipeline.link import link
from pipeline.linked_copy import linked_copy
from pipeline.score import purpose_rows
from pipeline.serving import optouts_applied
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])  # files, not the database, are attacked


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(200, 13, out, progress=False)
    return out


@pytest.fixture
def linked(haven: Any, extracts: Path) -> Any:
    land(haven, extracts)
    link(haven)
    return haven


def _stage(haven: Any, applied: dict[str, Any] | None = None) -> tuple[int, bool]:
    """A stage's copy of commissioning's rows: how many apc rows it holds, and whether the
    copy came from the cache."""
    applied = applied or optouts_applied(haven.engine)
    with takes_watched() as taken, linked_copy(
            haven, purpose_rows(haven, "commissioning", applied)) as copy:
        con = duckdb.connect(str(copy.folder / "sources.duckdb"), read_only=True)
        try:
            apc = con.execute("SELECT count(*) FROM v_apc").fetchone()[0]
        finally:
            con.close()
    return int(apc), any(taken)


def _outside(tmp_path: Path) -> Path:
    """A folder outside the data directory holding a folder and a file of someone else's."""
    outside = tmp_path / "outside"
    (outside / "photos").mkdir(parents=True)
    (outside / "photos" / "one.jpg").write_bytes(b"jpeg")
    (outside / "thesis.tex").write_text("chapter one")
    return outside


def _untouched(outside: Path) -> None:
    assert (outside / "photos" / "one.jpg").read_bytes() == b"jpeg"
    assert (outside / "thesis.tex").read_text() == "chapter one"
    assert sorted(p.name for p in outside.iterdir()) == ["photos", "thesis.tex"]


def _certified(haven: Any) -> dict[str, int]:
    """Destroy the first social care extract; the certificate's measures of what remains."""
    with haven.engine.connect() as connection:
        ids = connection.execute(select(extracts_table.c.extract_id).where(
            extracts_table.c.source == "social_care")).scalars().all()
    certificate = retention.destroy(haven.settings, haven.engine, ids[:1], haven.actor,
                                    "test", govern.dependents(haven), checks=govern.checks(haven))
    return certificate.remaining


def test_a_symlink_in_place_of_the_cache_folder_is_refused_and_never_followed(
        linked, tmp_path):
    """Promise: a symlink in place of the cache folder is refused, never followed: nothing
    outside the data directory is removed or written; it is counted and removed itself."""
    outside = _outside(tmp_path)
    cache = linked.settings.layout.linked_cache_dir
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(outside, target_is_directory=True)
    with pytest.raises(store.UnsafeFolder, match=r"cache/linked in the data directory is a "
                                                 r"symlink"):
        _stage(linked)
    _untouched(outside)  # nothing removed there, no copy of linked rows written there
    assert store.linked_cache_entries(linked.settings) == 1  # counted: not certifiable as is
    assert store.clear_linked_cache(linked.settings) == 1  # the link itself goes
    assert not cache.exists() and not cache.is_symlink()
    _untouched(outside)
    assert _certified(linked)["linked_cache_entries"] == 0
    _untouched(outside)
    assert _stage(linked)[1] is False and _stage(linked)[1] is True  # works again


def test_a_symlinked_entry_is_never_taken_and_goes_with_the_next_keep(linked, tmp_path):
    """Promise: an entry (or a file of one) that is a symlink is never read through."""
    rows, _ = _stage(linked)
    entry = next(linked.settings.layout.linked_cache_dir.iterdir())
    forged = tmp_path / "forged"
    forged.mkdir()
    for name in ("sources.duckdb", "meta.json"):
        (forged / name).write_bytes((entry / name).read_bytes())
    store.remove_tree(entry)
    entry.symlink_to(forged, target_is_directory=True)  # the entry the next stage would take
    again, taken = _stage(linked)
    assert not taken and again == rows  # made afresh, not read through the link
    assert not entry.is_symlink() and entry.is_dir()  # kept in its place, the link removed
    assert sorted(p.name for p in forged.iterdir()) == ["meta.json", "sources.duckdb"]
    # a symlink inside a real entry is not followed either
    (entry / "meta.json").unlink()
    (entry / "meta.json").symlink_to(forged / "meta.json")
    assert _stage(linked)[1] is False


def test_a_symlink_in_place_of_the_scratch_folder_is_refused(linked, tmp_path):
    """Promise: the stages' workspaces are never made, looked for or removed through a
    symlink; a planted workspace link is removed itself."""
    outside = _outside(tmp_path)
    scratch = linked.settings.layout.scratch_dir
    store.remove_tree(scratch)
    scratch.symlink_to(outside, target_is_directory=True)
    with pytest.raises(store.UnsafeFolder, match="scratch in the data directory"):
        _stage(linked)
    _untouched(outside)  # dead workspaces are not looked for through the link
    assert store.scratch_workspaces(linked.settings) == 1
    scratch.unlink()
    # a symlink planted as a workspace: removed as a dead one, what it names is left alone
    scratch.mkdir()
    (scratch / "planted").symlink_to(outside, target_is_directory=True)
    assert store.clear_dead_scratch(linked.settings) == 1
    _untouched(outside)


def test_anything_in_the_cache_folder_goes_and_the_count_is_what_went(linked, tmp_path,
                                                                      monkeypatch):
    """Promise: whatever is in the cache folder is removed (destruction is never blocked by
    it) and the count of what was removed is what really went."""
    _stage(linked)
    cache = linked.settings.layout.linked_cache_dir
    (cache / "README").write_text("not an entry")
    (cache / "link").symlink_to(_outside(tmp_path), target_is_directory=True)
    assert store.linked_cache_entries(linked.settings) == 3
    assert store.clear_linked_cache(linked.settings) == 3
    assert store.linked_cache_entries(linked.settings) == 0
    _untouched(tmp_path / "outside")
    (cache / "README").write_text("again")
    assert _certified(linked)["linked_cache_entries"] == 0  # destruction is not blocked
    # what could not be removed (another user's, say) is not counted as removed
    (cache / "stuck").mkdir()
    (cache / "gone").mkdir()
    real = store.remove_tree
    monkeypatch.setattr(store, "remove_tree",
                        lambda path: None if path.name == "stuck" else real(path))
    assert store.clear_linked_cache(linked.settings) == 1
    assert store.linked_cache_entries(linked.settings) == 1


def _in_place(path: Path, body: bytes, size: int) -> None:
    """Write Parquet `body` into `path` in place (the same inode), padded to `size` bytes
    between its data pages and its footer (whose offsets count from the start, and which is
    found from the end), so it reads as `body` does."""
    footer = len(body) - 8 - int.from_bytes(body[-8:-4], "little")
    with path.open("r+b") as handle:
        handle.write(body[:footer] + b"\0" * (size - len(body)) + body[footer:])
        handle.truncate()


def test_a_landed_file_rewritten_in_place_with_its_size_and_time_put_back_is_not_served(
        linked):
    """Promise: a landed file rewritten in place, its inode, size and modification time
    unchanged, gives a fresh copy (its change time is in the key)."""
    applied = optouts_applied(linked.engine)
    path = linked.settings.layout.rows(_apc(linked))
    table = pq.read_table(path)
    whole, shorter = path.with_suffix(".whole"), path.with_suffix(".short")
    pq.write_table(table, whole)
    pq.write_table(table.slice(0, table.num_rows - 5), shorter)
    size = max(path.stat().st_size, whole.stat().st_size) + 64
    _in_place(path, whole.read_bytes(), size)  # the same rows, at a size both fit in
    rows, _ = _stage(linked, applied)
    assert _stage(linked, applied) == (rows, True)
    before = path.stat()
    _in_place(path, shorter.read_bytes(), size)  # five rows fewer: the same inode and size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the time put back
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    assert pq.read_table(path).num_rows == table.num_rows - 5
    again, taken = _stage(linked, applied)
    assert not taken and rows - 5 <= again < rows  # (a row may be one no purpose may use)
    assert _stage(linked, applied) == (again, True)


def test_the_key_is_taken_again_under_the_lock_a_removal_takes(linked, monkeypatch):
    """Promise: a purge or rotation changes the rows, then removes every entry under the
    cache's lock; a stage's check that its rows did not change runs under the same lock, so
    the entry it keeps either shows the change (not kept) or is removed by that purge after."""
    held: list[bool] = []
    real_key = cache_module.cache_key

    def key_taken(*args: Any) -> Any:
        with linked.settings.layout.lock("linked-cache").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
                held.append(False)
        return real_key(*args)

    monkeypatch.setattr(cache_module, "cache_key", key_taken)
    _stage(linked)
    assert held == [False, True]  # the first key under nothing; the check under the lock
    assert store.linked_cache_entries(linked.settings) == 1
    # and a change made before the check is seen by it: not kept
    changes = iter([None, lambda: os.utime(linked.settings.layout.rows(_apc(linked)))])

    def changed_before_check(*args: Any) -> Any:
        change = next(changes, None)
        if change:
            change()
        return real_key(*args)

    store.clear_linked_cache(linked.settings)
    monkeypatch.setattr(cache_module, "cache_key", changed_before_check)
    _stage(linked)
    assert store.linked_cache_entries(linked.settings) == 0


def _apc(haven: Any) -> str:
    with haven.engine.connect() as connection:
        return connection.execute(select(extracts_table.c.extract_id).where(
            extracts_table.c.source == "apc")).scalars().first()



def _parquet_entry(haven, key: str, parts: dict[str, bytes]) -> Path:
    """A kept Spark copy (Parquet in ranges) of `parts` (name -> bytes), as `keep` leaves it."""
    entry = haven.settings.layout.linked_cache(key)
    for name, data in parts.items():
        (entry / "parquet" / name).parent.mkdir(parents=True, exist_ok=True)
        (entry / "parquet" / name).write_bytes(data)
    (entry / "meta.json").write_text(json.dumps({
        "ids": {}, "rows": 0, "ranges": [[None, None]],
        "files": {name: len(data) for name, data in parts.items()}}))
    return entry


def test_a_symlink_inside_a_kept_parquet_copy_is_never_taken(haven, tmp_path):
    """Promise: a Spark copy's entry (Parquet files in ranges, hard-linked into a stage's
    workspace) with a symlink anywhere inside it is not taken, and nothing is linked."""
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(b"not the data directory's")
    name = "deaths/range=0/part-00000.parquet"
    entry = _parquet_entry(haven, "k" * 40, {name: b"a plain file"})
    (entry / "parquet" / name).unlink()
    (entry / "parquet" / name).symlink_to(outside)
    with store.scratch_workspace(haven.settings) as folder:
        assert cache_module.take(haven, "k" * 40, folder) is None
        assert not (folder / "parquet").exists()
        (entry / "parquet" / name).unlink()
        (entry / "parquet" / name).write_bytes(b"a plain file")
        assert cache_module.take(haven, "k" * 40, folder) is not None  # the control
        linked = folder / "parquet" / name
        assert linked.read_bytes() == b"a plain file" and linked.stat().st_nlink == 2


def test_a_kept_parquet_copy_missing_or_gaining_a_file_is_never_taken(haven):
    """Promise (a reviewer's find): an entry half removed (a removal killed part-way, its
    meta left) or added to is not given as the copy: the stage makes its own."""
    parts = {"apc/range=0/a.parquet": b"rows of range 0", "apc/range=1/b.parquet": b"range 1"}
    entry = _parquet_entry(haven, "m" * 40, parts)
    with store.scratch_workspace(haven.settings) as folder:
        assert cache_module.take(haven, "m" * 40, folder) is not None  # the control
    (entry / "parquet" / "apc/range=1/b.parquet").unlink()
    with store.scratch_workspace(haven.settings) as folder:
        assert cache_module.take(haven, "m" * 40, folder) is None
        assert not (folder / "parquet").exists()
    (entry / "parquet" / "apc/range=1/b.parquet").write_bytes(b"range 1")
    (entry / "parquet" / "apc/range=1/c.parquet").write_bytes(b"more")
    with store.scratch_workspace(haven.settings) as folder:
        assert cache_module.take(haven, "m" * 40, folder) is None


def test_a_parquet_copy_that_cannot_be_linked_is_made_afresh_not_failed(haven, monkeypatch):
    """Promise: a cache on another filesystem than the workspace (no hard link) costs a fresh
    copy, never the stage; and a workspace copy with a symlink inside is never kept."""
    _parquet_entry(haven, "x" * 40, {"apc/range=0/a.parquet": b"rows"})

    def no_link(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    with store.scratch_workspace(haven.settings) as folder:
        (folder / "parquet" / "apc" / "range=0").mkdir(parents=True)
        (folder / "parquet" / "apc" / "range=0" / "a.parquet").write_bytes(b"rows")
        with monkeypatch.context() as patched:
            patched.setattr(cache_module.os, "link", no_link)
            with store.scratch_workspace(haven.settings) as other:
                assert cache_module.take(haven, "x" * 40, other) is None
                assert not (other / "parquet").exists()
            assert not cache_module.keep(haven, "y" * 40, lambda: "y" * 40, folder,
                                         {"ids": {}, "rows": 1, "ranges": [[None, None]]})
        assert store.linked_cache_entries(haven.settings) == 0
        (folder / "parquet" / "apc" / "range=0" / "b.parquet").symlink_to(
            folder / "parquet" / "apc" / "range=0" / "a.parquet")
        assert not cache_module.keep(haven, "y" * 40, lambda: "y" * 40, folder,
                                     {"ids": {}, "rows": 1, "ranges": [[None, None]]})
        (folder / "parquet" / "apc" / "range=0" / "b.parquet").unlink()
        assert cache_module.keep(haven, "y" * 40, lambda: "y" * 40, folder,  # the control
                                 {"ids": {}, "rows": 1, "ranges": [[None, None]]})
    with store.scratch_workspace(haven.settings) as folder:
        assert cache_module.take(haven, "y" * 40, folder)["rows"] == 1
        assert (folder / "parquet" / "apc" / "range=0" / "a.parquet").read_bytes() == b"rows"
