"""Files Spark tasks leave for the driver in a folder both reach, sealed under a key of the job.

A task's result can be far larger than Spark should carry: a landing slice's rows, or a
linkage bucket's best pairs for every query row. Sent through Spark, each is copied several
times in the driver's JVM and all of a job's are held at once. Left as a file in a folder the
executors and the driver share (in the data directory), each is read by the driver one at a
time and removed.

Each file is AES-GCM ciphertext under a key made for the job alone, held in memory (the
driver's, and the broadcast's, which Spark encrypts: `spark_protections`), with the file's
name as associated data. So a file a crash leaves behind is ciphertext, and a file planted in
the folder, swapped for another or cut short is refused before the driver reads a byte of it
(a linkage bucket's result is a pickle: opened unsealed, a planted one would run code).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


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
    name. Written under a temporary name and renamed, so the driver never reads half a file
    (a retried task attempt leaves a file of its own, removed with the folder)."""
    name = f"{uuid.uuid4().hex}{suffix}"
    nonce = os.urandom(12)
    sealed = AESGCM(handover.key).encrypt(nonce, data, name.encode())
    partial = os.path.join(handover.folder, f".{name}.part")
    with open(partial, "wb") as file:
        file.write(nonce + sealed)
    os.replace(partial, os.path.join(handover.folder, name))
    return name


def unsealed(handover: Handover, name: str, what: str) -> bytes:
    """The data `seal` left under `name`, its file removed. RuntimeError, naming `what` (the
    job: "this landing"), for a name the job's tasks cannot have made (hidden, or leading out
    of the folder) or a file not sealed under its key for that name (swapped, cut short,
    altered, planted)."""
    if not name or os.sep in name or name.startswith(".") or (
            os.altsep is not None and os.altsep in name):
        raise RuntimeError(f"a task named a hand-over file {what} did not make")
    path = Path(handover.folder) / name
    data = path.read_bytes()
    path.unlink()
    try:
        return AESGCM(handover.key).decrypt(data[:12], data[12:], name.encode())
    except InvalidTag:
        raise RuntimeError(f"a hand-over file was not sealed by {what}'s tasks") from None


def remove(folder: Path, what: str) -> None:
    """The hand-over folder removed, or RuntimeError: a file a late task attempt wrote while
    it was removed would otherwise stay in the data directory until the next `what`."""
    for _ in range(3):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
    raise RuntimeError(f"the {what}'s hand-over folder could not be removed: a Spark task "
                       f"may still be writing to it (the next {what} clears it)")
