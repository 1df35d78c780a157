"""Files Spark tasks leave for the driver in a folder both reach, sealed under a key of the job.

A task's result can be far larger than Spark should carry: a landing slice's rows, or a
linkage bucket's best pairs for every query row. Sent through Spark, each is copied several
times in the driver's JVM and all of a job's are held at once. Left as a file in a folder the
executors and the driver share (in the data directory), each is read by the driver one at a
time and removed.

Each file is AES-GCM ciphertext under a key made for the job alone, held in memory (the
driver's, and the broadcast's, which Spark encrypts: `spark_protections`), with the file's
name as associated data. So a file a crash leaves behind is ciphertext, and a file planted in
the folder, swapped for another or cut short is refused before anything is made of its bytes
(a linkage bucket's result is a pickle: opened unsealed, a planted one would run code); a
link, a pipe or a folder in a file's place is refused without being read.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Sealed a segment at a time: AES-GCM in `cryptography` refuses more than 2**31 - 1 bytes at
# once (a linkage bucket's results for tens of millions of query rows would be more).
SEGMENT = 1 << 30
LENGTH = struct.Struct(">I")  # each segment's length (nonce, ciphertext and tag) before it


@dataclass(frozen=True)
class Handover:
    """The folder a job's tasks leave their results in and the key they seal them under
    (never printed)."""

    folder: str
    key: bytes = field(repr=False)

    @classmethod
    def made(cls, folder: Path) -> Handover:
        """A new, empty folder (FileExistsError if there is one) and a fresh 256-bit key."""
        folder.mkdir(parents=True, exist_ok=False)
        return cls(str(folder), AESGCM.generate_key(bit_length=256))


def seal(handover: Handover, data: bytes, suffix: str) -> str:
    """Leave `data` sealed in the folder under a new name ending in `suffix`; returns the
    name. Sealed in segments of at most `SEGMENT` bytes (AES-GCM here takes at most 2 GiB at
    once), each bound to the name, its place and their count, so a file cut short by whole
    segments, or with segments swapped, is refused too. Written under a temporary name and
    renamed, so the driver never reads half a file (a retried task attempt leaves a file of
    its own, removed with the folder)."""
    name = f"{uuid.uuid4().hex}{suffix}"
    count = max(1, -(-len(data) // SEGMENT))
    cipher, whole = AESGCM(handover.key), memoryview(data)  # segments sliced, not copied
    partial = os.path.join(handover.folder, f".{name}.part")
    with open(partial, "wb") as file:
        for index in range(count):
            nonce = os.urandom(12)
            sealed = cipher.encrypt(nonce, whole[index * SEGMENT:(index + 1) * SEGMENT],
                                    _bound(name, index, count))
            file.write(LENGTH.pack(len(nonce) + len(sealed)) + nonce + sealed)
    os.replace(partial, os.path.join(handover.folder, name))
    return name


def unsealed(handover: Handover, name: str, what: str) -> bytes:
    """The data `seal` left under `name`, its file removed. RuntimeError, naming `what` (the
    job: "this landing") and never the path, for a name the job's tasks cannot have made
    (hidden, or leading out of the folder), a file missing or not a plain file (a link, a
    pipe, a folder: refused without reading it), or one not sealed under its key for that
    name (swapped, cut short, altered, planted): nothing is handed on that was not sealed by
    the job's tasks."""
    if not name or os.sep in name or name.startswith(".") or (
            os.altsep is not None and os.altsep in name):
        raise RuntimeError(f"a task named a hand-over file {what} did not make")
    path = Path(handover.folder) / name
    data = memoryview(_read_plain(path, what))  # segments sliced, not copied
    path.unlink()
    refused = RuntimeError(f"a hand-over file was not sealed by {what}'s tasks")
    segments, at = [], 0
    while at < len(data):
        if at + LENGTH.size > len(data):
            raise refused
        (size,) = LENGTH.unpack_from(data, at)
        at += LENGTH.size
        if size < 28 or at + size > len(data):  # a nonce and a tag at least
            raise refused
        segments.append(data[at:at + size])
        at += size
    cipher = AESGCM(handover.key)
    opened = []
    try:
        for index, segment in enumerate(segments):
            opened.append(cipher.decrypt(segment[:12], segment[12:],
                                         _bound(name, index, len(segments))))
    except InvalidTag:
        raise refused from None
    if not opened:
        raise refused
    return opened[0] if len(opened) == 1 else b"".join(opened)


def _bound(name: str, index: int, count: int) -> bytes:
    """What a segment is bound to: the file's name, its place and how many there are."""
    return f"{name}\x00{index}\x00{count}".encode()


def _read_plain(path: Path, what: str) -> bytes:
    """The whole of the plain file at `path`, opened without following a link and without
    waiting on a pipe; RuntimeError (not naming the path) for anything else."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        raise RuntimeError(f"a hand-over file of {what}'s tasks is missing or cannot be "
                           "opened") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise RuntimeError(f"a hand-over file of {what}'s tasks is not a plain file")
    with os.fdopen(descriptor, "rb") as file:
        return file.read()


def remove(folder: Path, what: str,
           why: str = "hand-over folder could not be removed: a Spark task may still be "
                      "writing to it") -> None:
    """The folder removed, or RuntimeError (`what`'s folder `why`): a file a late task
    attempt wrote while it was removed would otherwise stay in the data directory until the
    next `what`."""
    for _ in range(3):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
    raise RuntimeError(f"the {what}'s {why} (the next {what} clears it)")
