"""`governance.store.write_whole`: a task's file is there whole or not at all, whatever
happens to the attempt writing it (a retried or speculative Spark task, a killed one)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from governance.store import write_whole


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "records-0001.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(target)
    seen: list[Path] = []

    def write(partial: Path) -> None:
        seen.append(partial)
        pd.DataFrame({"a": [3, 4, 5]}).to_parquet(partial)
        assert pd.read_parquet(target)["a"].tolist() == [1, 2]  # the old file, untouched

    write_whole(write, target)
    assert pd.read_parquet(target)["a"].tolist() == [3, 4, 5]
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".records-0001.parquet.")
    assert [p.name for p in tmp_path.iterdir()] == ["records-0001.parquet"]


def test_an_attempt_that_fails_half_way_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "scores.part000003.parquet"

    def half(partial: Path) -> None:
        partial.write_bytes(b"PAR1 half a file")
        raise OSError("the executor was lost")

    with pytest.raises(OSError, match="executor was lost"):
        write_whole(half, target)
    assert not any(tmp_path.iterdir())  # no file, and no partial one left
