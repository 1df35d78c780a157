"""The last working copy of linked rows, kept so the next stage that needs the same one copies
a file instead of reading and filtering every linked row again.

Score, the model report, journeys, costs and segments each read every linked row their
purpose may use into a DuckDB file of their own (`pipeline.linked_copy`): at a million persons
48M rows, about 40 s a stage, the same rows five times over when they run one after another.
A copy is kept under `Layout.linked_cache(key)` and given to a stage whose key is the same;
the stage gets a copy of the file in its own workspace (stages write working tables into it).
On Spark the copy is Parquet files in ranges of persons (`pipeline.engines.spark_copy`), which
no stage writes into: they are hard-linked into the entry and back into a stage's workspace
(the cache, the workspaces and the index on one filesystem, the data directory's; a link that
cannot be made leaves the stage to make its own copy), with the ranges and every file's name
and size in the entry's meta: an entry whose files are not exactly those (half removed by a
killed removal) is not taken. The form is in the key, so one engine's copy is never given to
the other.

The key digests everything the copy's rows depend on, read when the copy is taken and again
when it is kept (kept only if nothing changed meanwhile):
- the map's generation (a link, a purge's or a destruction's re-linking, a key rotation each
  make a new one),
- every landed extract (id, source, sender) with its rows file's size, modification and
  change times and inode (a landing, a purge's rewrite, a destruction each change them; the
  change time also catches a rewrite in place whose modification time was set back, which
  `os.utime` can do and nothing but the clock can do to the change time),
- the purpose's opt-out filter (`governance.optouts.filter_digest`: the day, the policy rows,
  every opt-out in force, the councils' senders: an opt-out registered since, or a new day,
  gives another key, so a cached copy never outlives the opt-outs in force when it is used),
- the columns copied and this module's version.
One entry is kept at a time. Destruction, a purge and a key rotation remove every entry
whatever its key (`governance.store.clear_linked_cache`), and destruction counts entries left
(`linked_cache_entries`) before it certifies. The key is taken the second time under the cache's
lock, which those removals take after changing the rows, so an entry either sees their change
(another key: not kept) or is removed by them.

The cache folder and its entries are refused when they are symlinks, or hold one
(`store.own_folder`): a planted symlink never leads a copy of linked rows out of the data
directory, or a removal out of it. (A planted hard link is a file of the data directory's, as
the landed rows are: whoever can make one can rewrite those too.) An entry is not
authenticated: whoever can write the data directory can also rewrite the
landed rows it was copied from (docs/threat-model.md: the data directory is protected by the
operating system's permissions, on an encrypted volume).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from governance import optouts, store
from linkage import map_store
from linkage.person_index import landed_extracts
from pipeline.context import Context
from stratify.features import PARQUET_COPY

VERSION = 4  # 3: copies kept in person-key order (features.cluster_by_person); 4: a form
FILE = "sources.duckdb"
META = "meta.json"


def cache_key(ctx: Context, purpose: str, applied: dict[str, Any],
              columns: dict[str, list[str]], form: str = "duckdb") -> str | None:
    """The key of the copy of `purpose`'s linked rows under `applied` (what
    `pipeline.serving.optouts_applied` recorded) made in `form` (`duckdb`: the embedded
    engine's file; `parquet`: Spark's ranges); None when the map has no generation yet."""
    generation = map_store.current(ctx.settings)
    if generation is None:
        return None
    landed = []
    for item in landed_extracts(ctx.engine).sort_values("extract_id").itertuples():
        path = ctx.settings.layout.rows(str(item.extract_id))
        try:
            found = path.stat()
        except FileNotFoundError:
            return None  # an extract being destroyed: no key, no copy kept or taken
        landed.append([str(item.extract_id), str(item.source), str(item.sender),
                       found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino])
    rules = optouts.parse_coverage(applied["policy"])
    allowed = optouts.filter_digest(ctx.engine, purpose,
                                    dt.date.fromisoformat(applied["in_force_on"]), rules,
                                    applied["register"])
    payload = json.dumps({"version": VERSION, "generation": generation.folder.name,
                          "landed": landed, "filter": allowed, "columns": columns,
                          "form": form},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


def take(ctx: Context, key: str, folder: Path) -> dict[str, Any] | None:
    """Copy the entry `key` (if kept) into the stage's workspace `folder`; its meta (`ids`,
    `rows`), or None when there is no such entry."""
    entry = ctx.settings.layout.linked_cache(key)
    with store.data_lock(ctx.settings, "linked-cache"):
        if not ctx.settings.layout.linked_cache_dir.exists():
            return None
        store.own_folder(ctx.settings, entry.parent, create=False)
        if entry.is_symlink() or any((entry / name).is_symlink()
                                     for name in (META, FILE, PARQUET_COPY)):
            return None  # planted: never followed (the next keep or clear removes it)
        try:
            meta = json.loads((entry / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if "ranges" not in meta:
            shutil.copyfile(entry / FILE, folder / FILE)
        elif not _linked_whole(entry / PARQUET_COPY, folder / PARQUET_COPY,
                               meta.get("files")):
            return None  # not the copy kept whole: the stage makes its own
    return meta


def _parquet_files(root: Path) -> dict[str, int] | None:
    """The Parquet files under a Parquet copy, relative to it, with their sizes (None when
    anything there is a symlink or not a folder or file: planted, never followed)."""
    if not root.exists():
        return {}
    if root.is_symlink() or not root.is_dir():
        return None
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            return None
        if path.is_file() and path.suffix == ".parquet":
            found[str(path.relative_to(root))] = path.stat().st_size
    return found


def _linked_whole(source: Path, target: Path, wanted: dict[str, int] | None) -> bool:
    """Hard-link the Parquet copy in `source` into `target` when its files are exactly
    `wanted` (names and sizes, as kept): an entry half removed (a removal killed part-way)
    or added to is never given as the copy. False, with nothing left in `target`, when
    they are not, or a link cannot be made (another filesystem: the cache, the workspace
    and the index must share the data directory's)."""
    if wanted is None or _parquet_files(source) != wanted:
        return False
    try:
        for name in wanted:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(source / name, target / name)
    except OSError:
        store.remove_tree(target)
        return False
    return True


def keep(ctx: Context, key: str, key_now: Callable[[], str | None], folder: Path,
         meta: dict[str, Any]) -> bool:
    """Keep the stage's fresh copy in `folder` as the entry `key`, replacing any other, when
    the key taken again (`key_now()`, under the cache's lock) is the same: the rows did not
    change while the copy was made, and a destruction, purge or rotation that changed them
    since either shows in the key or removes the entry after this. Returns whether kept."""
    cache = ctx.settings.layout.linked_cache_dir
    entry = ctx.settings.layout.linked_cache(key)
    partial = cache / f".{key}.{secrets.token_hex(4)}.tmp"
    files = _parquet_files(folder / PARQUET_COPY) if "ranges" in meta else {}
    if files is None:  # not a copy this engine made: not kept
        return False
    with store.data_lock(ctx.settings, "linked-cache"):
        if key_now() != key:
            return False
        store.own_folder(ctx.settings, cache)
        for old in sorted(cache.iterdir()):
            store.remove_tree(old)
        partial.mkdir()
        try:
            if "ranges" in meta:  # Spark's copy: its files linked (they never change)
                meta = {**meta, "files": files}
                if not _linked_whole(folder / PARQUET_COPY, partial / PARQUET_COPY, files):
                    store.remove_tree(partial)
                    return False
                kept = [partial / PARQUET_COPY / name for name in files]
            else:
                shutil.copyfile(folder / FILE, partial / FILE)
                kept = [partial / FILE]
            (partial / META).write_text(json.dumps(meta), encoding="utf-8")
            for path in (*kept, partial / META):
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(partial, entry)
        except BaseException:
            store.remove_tree(partial)
            raise
    return True
