"""The data directory: where landed extracts, the person index, runs and exports live as files.

Landed rows are Parquet, one folder per extract, so an analyst's own tools can read them and
destruction is the removal of one folder. Writes go to `staging/` first and are moved into
place in one rename, under a lock, so an extract is present whole or not at all.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from governance.settings import Settings


@contextmanager
def data_lock(settings: Settings, name: str = "data") -> Iterator[None]:
    """An exclusive lock on the data directory for one writer at a time."""
    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.layout.lock(name)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(settings: Settings, extract_id: str) -> Path:
    """Move a staged extract into place in one rename (atomic on one filesystem)."""
    source = settings.layout.staged(extract_id)
    target = settings.layout.extract(extract_id)
    settings.layout.extracts_dir.mkdir(parents=True, exist_ok=True)
    _fsync_tree(source)
    os.replace(source, target)
    return target


class UnsafeFolder(RuntimeError):
    """A working folder of the data directory is a symlink, or lies under one, or is not a
    folder: refused, so that a planted link never leads a write, a read or a removal out of
    the data directory."""


def write_whole(write: Callable[[Path], None], path: Path) -> None:
    """Make `path` whole or not at all: `write` writes a partial file of its own name beside
    it, which then replaces `path` in one rename. A task retried, or run twice at once by a
    speculative scheduler, writes the same bytes; a reader never finds half a file."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def own_folder(settings: Settings, path: Path, create: bool = True) -> Path:
    """`path`, a folder under the data directory, made if missing (when `create`); refused
    (UnsafeFolder, naming it relative to the data directory) when it or any folder between
    the data directory and it is a symlink or not a folder."""
    home = settings.home
    current = home
    for part in path.relative_to(home).parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise UnsafeFolder(
                f"{current.relative_to(home)} in the data directory is a symlink or not a "
                "folder: refused (remove it; Haven makes the folder again when it needs it)")
        if create and not current.exists():
            current.mkdir(exist_ok=True)
    return path


def remove_tree(path: Path) -> None:
    """Remove a folder, a file or a symlink: a symlink itself, never what it points to (a
    folder's contents are removed without following the links inside it)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def landed_folders(settings: Settings) -> list[str]:
    if not settings.layout.extracts_dir.exists():
        return []
    return sorted(p.name for p in settings.layout.extracts_dir.iterdir() if p.is_dir())


def clear_staging(settings: Settings) -> int:
    """Remove whatever an interrupted landing left in staging; returns how many folders."""
    if not settings.layout.staging_dir.exists():
        return 0
    removed = 0
    for path in settings.layout.staging_dir.iterdir():
        remove_tree(path)
        removed += 1
    return removed


@contextmanager
def scratch_workspace(settings: Settings) -> Iterator[Path]:
    """A folder of this process's own for a stage's working copy of linked rows, removed when
    the stage ends however it ends; workspaces of processes that died are removed first."""
    clear_dead_scratch(settings)
    own_folder(settings, settings.layout.scratch_dir)
    folder = settings.layout.scratch(os.getpid(), secrets.token_hex(4))
    folder.mkdir()
    try:
        yield folder
    finally:
        remove_tree(folder)


def clear_dead_scratch(settings: Settings) -> int:
    """Remove workspaces whose process is gone (killed mid-stage); returns how many."""
    if not settings.layout.scratch_dir.exists():
        return 0
    own_folder(settings, settings.layout.scratch_dir, create=False)
    removed = 0
    for path in settings.layout.scratch_dir.iterdir():
        if not _owner_alive(path.name.split("-", 1)[0]):
            remove_tree(path)
            removed += 1
    return removed


def clear_linked_cache(settings: Settings) -> int:
    """Remove every cached copy of linked rows (`Layout.linked_cache_dir`), under its lock:
    what destruction, a purge and a key rotation do, whatever the copies' keys; returns how
    many entries (finished or half-written, or anything else found there) went, counted
    before and after. A symlink planted in place of the folder is removed itself, never
    followed (what it points to is not the data directory's)."""
    folder = settings.layout.linked_cache_dir
    with data_lock(settings, "linked-cache"):
        before = linked_cache_entries(settings)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            folder.unlink()
        elif folder.exists():
            own_folder(settings, folder, create=False)
            for path in sorted(folder.iterdir()):
                remove_tree(path)
        return before - linked_cache_entries(settings)


def linked_cache_entries(settings: Settings) -> int:
    """How many cached copies of linked rows (finished or half-written, or anything else)
    the data directory holds now; a symlink or file in place of the folder counts as one."""
    folder = settings.layout.linked_cache_dir
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return 1
    return sum(1 for _ in folder.iterdir()) if folder.exists() else 0


def scratch_workspaces(settings: Settings) -> int:
    """How many stage workspaces the data directory holds now (live or not); a symlink or
    file in place of the folder counts as one."""
    folder = settings.layout.scratch_dir
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return 1
    return sum(1 for _ in folder.iterdir()) if folder.exists() else 0


def _owner_alive(owner: str) -> bool:
    if not owner.isdigit():
        return False  # not a workspace this code made: nothing owns it
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
