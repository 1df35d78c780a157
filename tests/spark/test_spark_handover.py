"""Sealed hand-over files (`pipeline/engines/spark_handover.py`), which Spark tasks leave for
the driver: what is read back is exactly what a task of the same job sealed under that name,
whole, or nothing; whatever else is found in a file's place is refused with an error that
names neither the path nor the key, without being read or unpickled."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from pipeline.engines import spark_handover
from pipeline.engines.spark_handover import Handover, seal, unsealed


def _handover(tmp_path: Path) -> Handover:
    return Handover.made(tmp_path / "handover")


def test_data_comes_back_whole_in_segments_of_its_own(tmp_path: Path, monkeypatch) -> None:
    """Sealed in segments (AES-GCM takes at most 2 GiB at once), read back whole; a file cut
    by a whole segment, or with two segments swapped, is refused."""
    monkeypatch.setattr(spark_handover, "SEGMENT", 64)
    handover = _handover(tmp_path)
    data = secrets.token_bytes(64 * 3 + 10)
    name = seal(handover, data, ".bucket-0")
    path = Path(handover.folder) / name
    on_disk = path.read_bytes()
    assert data[:16] not in on_disk
    assert unsealed(handover, name, "this link") == data
    assert not path.exists()  # removed once read
    segment = spark_handover.LENGTH.size + 12 + 64 + 16
    first, second = on_disk[:segment], on_disk[segment:2 * segment]
    for tampered in (on_disk[:-len(on_disk) + 3 * segment],  # the last segment gone
                     second + first + on_disk[2 * segment:],  # two segments swapped
                     on_disk[:-1], b"", on_disk + b"\0"):
        path.write_bytes(tampered)
        with pytest.raises(RuntimeError, match="not sealed by this link's tasks"):
            unsealed(handover, name, "this link")
    assert unsealed(handover, seal(handover, b"", ".empty"), "this link") == b""


def test_what_is_not_a_plain_file_is_refused_unread_and_unnamed(tmp_path: Path) -> None:
    """A link, a pipe or a folder in a file's place, or a file gone, is refused with an
    error naming neither the folder nor the file (a pipe does not block the driver)."""
    handover = _handover(tmp_path)
    outside = tmp_path / "outside"
    outside.write_bytes(b"not for the driver")
    for plant in ("link", "pipe", "folder", "missing"):
        name = seal(handover, b"sealed", ".bucket-1")
        path = Path(handover.folder) / name
        path.unlink()
        if plant == "link":
            path.symlink_to(outside)
        elif plant == "pipe":
            os.mkfifo(path)
        elif plant == "folder":
            path.mkdir()
        with pytest.raises(RuntimeError) as refused:
            unsealed(handover, name, "this link")
        assert handover.folder not in str(refused.value) and name not in str(refused.value)
        assert handover.key.hex() not in str(refused.value)
    assert outside.read_bytes() == b"not for the driver"
