"""`linkage.map_store`: generations of the link map, swapped in whole, and what a reader or a
killed writer meets."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import pandas as pd
import pytest

from governance.settings import Settings
from linkage import map_store


def _rows(extract_id: str, n: int, key: str = "Pa") -> pd.DataFrame:
    return pd.DataFrame({
        "extract_id": extract_id, "source": "apc", "row": range(n),
        "person_id": [f"id{i % 3}" if i % 4 else None for i in range(n)],
        "person_key": [key if i % 4 else f"Pu{i}" for i in range(n)],
        "method": ["nhs_number" if i % 4 else "unlinked" for i in range(n)],
        "weight": float("nan"), "via_extract": None, "client_key": None})


def _generation(settings: Settings, frames: dict[str, pd.DataFrame]) -> map_store.Generation:
    base = map_store.current(settings)
    settings.layout.index_dir.mkdir(parents=True, exist_ok=True)
    generation = map_store.NextGeneration(settings, base)
    for extract_id, frame in frames.items():
        if frame is None:
            generation.keep(next(e for e in base.entries if e.extract_id == extract_id))
        else:
            generation.write(extract_id, "apc", [frame])
    return generation.commit()


def test_a_generation_is_swapped_in_whole_and_the_old_one_removed(tmp_path: Path):
    settings = Settings(home=tmp_path)
    assert not map_store.exists(settings) and map_store.read_table(settings).num_rows == 0
    first = _generation(settings, {"e1": _rows("e1", 8), "e2": _rows("e2", 5)})
    assert map_store.read_table(settings, ["extract_id"]).num_rows == 13
    assert first.entries[0].methods == {"nhs_number": 6, "unlinked": 2}
    second = _generation(settings, {"e1": None, "e3": _rows("e3", 2)})  # e2 left out
    assert not first.folder.exists() and second.folder.exists()
    assert (second.path("e1").stat().st_ino ==
            map_store.current(settings).path("e1").stat().st_ino)
    assert list(pd.unique(map_store.read_table(settings).column("extract_id").to_pandas())) \
        == ["e1", "e3"]
    persons = pd.read_parquet(second.persons("e1"))
    assert persons.to_dict("list") == {"person_id": ["id1", "id2", "id0"],
                                       "person_key": ["Pa", "Pa", "Pa"], "rows": [2, 2, 2]}
    assert map_store.partial(settings) == []


def test_partial_names_unfinished_and_stale_generations_not_the_live_one(tmp_path: Path):
    settings = Settings(home=tmp_path)
    live = _generation(settings, {"e1": _rows("e1", 4)})
    unfinished = settings.layout.map_generation("x").with_suffix(".tmp")
    stale = settings.layout.map_generation("y")
    shutil.copytree(live.folder, unfinished)
    shutil.copytree(live.folder, stale)
    assert map_store.partial(settings) == sorted([unfinished, stale])
    for path in map_store.partial(settings):
        map_store.remove(path)
    assert map_store.partial(settings) == [] and live.folder.exists()


def test_a_home_copied_without_its_symlink_reads_and_updates(tmp_path: Path):
    settings = Settings(home=tmp_path / "a")
    original = _generation(settings, {"e1": _rows("e1", 4)}).folder
    copied = Settings(home=tmp_path / "b")
    shutil.copytree(settings.home, copied.home)  # the symlink becomes a folder
    assert copied.layout.link_map.is_dir() and not copied.layout.link_map.is_symlink()
    assert map_store.read_table(copied).num_rows == 4
    _generation(copied, {"e1": None, "e2": _rows("e2", 3)})
    assert copied.layout.link_map.is_symlink()
    assert map_store.read_table(copied).num_rows == 7
    # the moved-aside folder was removed; the copy of the generation the symlink named is
    # stale, for the next update to remove
    assert [p.name for p in map_store.partial(copied)] == [original.name]


def test_a_read_that_meets_a_swap_reads_the_new_generation(tmp_path: Path, monkeypatch):
    settings = Settings(home=tmp_path)
    _generation(settings, {"e1": _rows("e1", 4)})
    real = map_store.files
    calls = []

    def files(settings: Settings) -> list[Path]:
        calls.append(1)
        return [tmp_path / "gone.parquet"] if len(calls) == 1 else real(settings)

    monkeypatch.setattr(map_store, "files", files)
    assert map_store.read_table(settings).num_rows == 4 and len(calls) == 2
    monkeypatch.setattr(map_store, "files", lambda settings: [tmp_path / "gone.parquet"])
    with pytest.raises(FileNotFoundError):
        map_store.read_table(settings)


def test_a_batch_read_across_a_swap_reads_one_generation_whole(tmp_path: Path):
    settings = Settings(home=tmp_path)
    _generation(settings, {"e1": _rows("e1", 8, key="Pold"), "e2": _rows("e2", 8, key="Pold")})
    reader = map_store.batches(settings, ["person_key"], batch_rows=3)
    keys = next(reader).column("person_key").to_pylist()
    _generation(settings, {"e1": _rows("e1", 8, key="Pnew"), "e2": _rows("e2", 8, key="Pnew")})
    for batch in reader:  # the old generation's files were removed meanwhile
        keys += batch.column("person_key").to_pylist()
    assert len(keys) == 16 and "Pold" in keys and "Pnew" not in keys


def test_the_current_generation_when_a_swap_removes_the_one_being_opened(tmp_path: Path,
                                                                         monkeypatch):
    settings = Settings(home=tmp_path)
    old = _generation(settings, {"e1": _rows("e1", 4)})
    real = Path.read_text
    swapped = []

    def read_text(self: Path, *args, **kwargs) -> str:
        if self.name == map_store.MANIFEST and not swapped:
            swapped.append(1)  # an update swaps a generation in and removes this one
            with monkeypatch.context() as inner:
                inner.setattr(Path, "read_text", real)
                _generation(settings, {"e1": None, "e2": _rows("e2", 3)})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    found = map_store.current(settings)
    assert swapped and not old.folder.exists()
    assert [e.extract_id for e in found.entries] == ["e1", "e2"]


def test_a_pinned_read_lets_each_file_go_once_it_moves_on(tmp_path: Path):
    """A pinned read opens each of the map's files as it reaches it and lets the last one go
    when it moves on, reading every row in map order (issue #12: a `ParquetFile` read
    through holds memory of its reading; the 3M map read with its files held at once took
    1.6 GB, one at a time 0.8 GB)."""
    settings = Settings(home=tmp_path)
    _generation(settings, {"e1": _rows("e1", 8), "e2": _rows("e2", 5), "e3": _rows("e3", 3)})
    with map_store.Pinned(settings) as pinned:
        opened = iter(pinned.files())
        first = weakref.ref(next(opened))
        second = next(opened)
        gc.collect()
        assert first() is None and second.metadata.num_rows == 5
        assert [b.num_rows for b in pinned.batches(["row"])] == [8, 5, 3]


def test_hard_links_of_a_generation_outlive_its_swap_and_removal(tmp_path: Path):
    # what Spark's tasks read the map through (pipeline/engines/spark_copy.py): processes
    # that cannot share this one's open files still read one generation whole
    settings = Settings(home=tmp_path / "home")
    old = _generation(settings, {"e1": _rows("e1", 5, key="Pold"),
                                 "e2": _rows("e2", 3, key="Pold")})
    linked = map_store.hard_linked(settings, tmp_path / "home" / "scratch" / "map")
    assert isinstance(linked, dict) and sorted(linked) == ["e1", "e2"]
    _generation(settings, {"e1": _rows("e1", 5, key="Pnew"), "e2": _rows("e2", 3, key="Pnew")})
    assert not old.folder.exists()  # the update removed the generation the links were made of
    keys = [k for path in linked.values()
            for k in pd.read_parquet(path, columns=["person_key"])["person_key"]]
    assert len(keys) == 8 and set(keys) - {"Pu0", "Pu4"} == {"Pold"}


def test_hard_links_are_made_again_when_a_swap_removes_a_file_half_way(tmp_path: Path,
                                                                      monkeypatch):
    settings = Settings(home=tmp_path / "home")
    _generation(settings, {"e1": _rows("e1", 4, key="Pold"), "e2": _rows("e2", 2, key="Pold")})
    real = map_store.os.link
    calls = []

    def link(source, target, *args, **kwargs):
        calls.append(source)
        if len(calls) == 2:  # an update swaps a generation in between two files' links
            _generation(settings, {"e1": _rows("e1", 4, key="Pnew"),
                                   "e2": _rows("e2", 2, key="Pnew")})
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(map_store.os, "link", link)
    linked = map_store.hard_linked(settings, tmp_path / "home" / "scratch" / "map")
    keys = {k for path in linked.values()
            for k in pd.read_parquet(path, columns=["person_key"])["person_key"]}
    assert keys - {"Pu0"} == {"Pnew"} and len(calls) == 4  # never a file of each generation
