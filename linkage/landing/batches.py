"""Prepare a landing's batches: check and pseudonymise each one, in this process or on two.

What a batch becomes depends on that batch alone (its rows, the contract and the keys), so
batches can be prepared in parallel; what depends on the whole file (a record id seen in an
earlier batch, a person already sealed into the vault, the opt-out register) is decided
afterwards, in file order, by the landing itself (linkage/landing/land.py).

In one process a batch is checked and its persons hashed on a thread of its own, a batch
ahead of the thread that makes the rest of its landed form. On a machine with cores to spare a
large extract is prepared on a pool of two processes forked for the landing instead (forked,
not spawned, so a worker starts in milliseconds with everything imported). Forking is only safe
while this process runs a single thread, so the pool is used only then (the command line; a
multi-threaded server prepares in its own process), and only when cores are free (see
`pool_size`: on a 2-core machine it costs more than it saves). At most one batch per worker
waits in flight, so memory stays bounded by a few batches.

A worker dies with the landing that forked it: it inherits the open file of the data
directory's lock, so a worker outliving a killed landing would hold that lock and every later
landing would wait for ever (see `_start_worker`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from governance.keys import Key
from linkage.landing.ahead import ahead
from linkage.landing.contracts import CONTRACTS
from linkage.landing.pseudonymise import (
    DistinctHashes,
    HashMemo,
    Pseudonymised,
    person_hashes,
    pseudonymise,
    record_keys,
)
from linkage.landing.reader import Batch
from linkage.landing.validate import Checked, check_batch

WORKERS = 2
# Below this many batches a pool costs more (forking, copying batches) than it saves.
MIN_POOLED_BATCHES = 3
# A pool's workers need cores beside the two a landing's own threads keep busy.
POOL_CORES = 4


@dataclass(frozen=True)
class Job:
    """What preparing a batch needs besides the batch: the same for every batch of a file."""

    source: str
    extract_id: str
    sender: str
    keys: dict[str, Key]


@dataclass
class Prepared:
    """One batch checked and pseudonymised, before the checks that span the file.

    `candidates` are the batch positions of rows that meet the contract (and gave consent);
    `result` holds exactly those rows in the landed form. `fingerprints` (per batch row, for
    sources with a unique record id) let the landing find ids repeated across batches.
    """

    rows: np.ndarray
    reasons: list[tuple[int, str]]
    nhs_invalid: int
    nhs_missing: int
    dropped_no_consent: int
    candidates: np.ndarray
    fingerprints: np.ndarray | None
    result: Pseudonymised | None


@dataclass
class Examined:
    """A batch checked but not pseudonymised yet: `prepared` lacks only its `result`."""

    prepared: Prepared
    kept: Checked | None  # the rows that meet the contract (and gave consent), if any
    record_key: pa.Array | None  # their keyed record ids, for sources with one
    hashed: DistinctHashes | None  # their persons' pseudonyms, for sources with NHS numbers


def prepare_batch(batch: Batch, job: Job, memo: HashMemo) -> Prepared:
    """Check a batch against its contract and pseudonymise the rows that meet it.

    `memo` spares re-hashing NHS numbers already hashed for this file; it changes no output.
    """
    return finish(examine(batch, job, memo), job)


def examine(batch: Batch, job: Job, memo: HashMemo) -> Examined:
    """The first half of `prepare_batch`: check a batch, choose the rows that will land and
    make their pseudonyms (record ids and persons: keyed hashing).

    Runs on a thread of its own ahead of the rest (see `prepared_batches`); `memo` is that
    thread's alone.
    """
    contract = CONTRACTS[job.source]
    checked = check_batch(batch.table.select(contract.names), batch.rows, contract)
    nhs_missing = 0
    if "nhs_number" in contract.names:
        nhs_missing = int(pc.sum(pc.is_null(checked.table.column("nhs_number"))).as_py() or 0)
    meets = checked.good  # the contract (consent aside)
    good = meets
    reasons_of = checked.reasons
    dropped = 0
    if contract.consent_column:
        consent = pc.fill_null(pc.equal(checked.table.column(contract.consent_column), "Y"),
                               False).to_numpy(zero_copy_only=False)
        dropped = int((good & ~consent).sum())
        good = good & consent
    rows = batch.rows.to_numpy()
    bad = np.flatnonzero(~meets)
    reasons = list(zip(rows[bad].tolist(), reasons_of[bad].tolist(), strict=True))
    record_key = fingerprints = None
    if contract.unique:
        record_key, fingerprints = record_keys(checked.table.column(contract.unique),
                                               job.keys["pseudonym"],
                                               f"{contract.source}|{job.sender}")
    candidates = np.flatnonzero(good)
    nhs_invalid = int(checked.nhs_invalid.sum())
    kept = hashed = None
    if len(candidates):
        everyone = len(candidates) == len(good)  # every row kept: nothing to filter
        kept = checked if everyone else _only(checked, good)
        kept.reasons = np.full(len(candidates), None, dtype=object)
        if not everyone and record_key is not None:
            record_key = pc.filter(record_key, pa.array(good))
        if "nhs_number" in contract.names:
            hashed = person_hashes(kept.nhs_normalised, job.keys["pseudonym"], memo)
    return Examined(Prepared(rows, reasons, nhs_invalid, nhs_missing, dropped, candidates,
                             fingerprints, None), kept, record_key, hashed)


def finish(examined: Examined, job: Job) -> Prepared:
    """The second half of `prepare_batch`: turn the rows `examine` kept into the landed form."""
    prepared = examined.prepared
    if examined.kept is not None:
        prepared.result = pseudonymise(examined.kept, CONTRACTS[job.source], job.extract_id,
                                       job.keys, job.sender, None, examined.record_key,
                                       examined.hashed)
    return prepared


def _only(checked: Checked, good: np.ndarray) -> Checked:
    """The `good` rows of a checked batch (its reasons are left to the caller)."""
    mask = pa.array(good)
    return Checked(
        table=checked.table.filter(mask), rows=pc.filter(checked.rows, mask),
        reasons=checked.reasons[good], nhs_valid=checked.nhs_valid[good],
        nhs_invalid=checked.nhs_invalid[good],
        nhs_normalised=pc.filter(checked.nhs_normalised, mask)
        if checked.nhs_normalised is not None else None,
        parsed={k: pc.filter(v, mask) for k, v in checked.parsed.items()})


def pool_size(batches: int) -> int:
    """How many processes should prepare a file of about `batches` batches (1: this one).

    A pool adds work (each batch is copied to a worker and back; each worker hashes the persons
    it meets): it pays only when cores would otherwise sit idle. A landing in one process
    already keeps about two cores busy (reading, checking and hashing, pseudonymising, writing
    each on a thread of its own), so the pool needs `POOL_CORES` cores and a load average that
    leaves two of them free. On the 2-core machine the pool was slower with every load
    (1M apc rows: 3.6 to 3.8 s against 2.3 to 2.8 s in one process).
    """
    cores = os.cpu_count() or 1
    if batches < MIN_POOLED_BATCHES or cores < POOL_CORES:
        return 1
    if threading.active_count() > 1:  # forking a threaded process can copy a held lock
        return 1
    if os.getloadavg()[0] > cores - WORKERS:
        return 1
    return WORKERS


def prepared_batches(batches: Iterator[Batch], job: Job, workers: int) -> Iterator[Prepared]:
    """Each batch prepared, in file order: here when `workers` is 1, else on a process pool.

    Call before starting any thread of one's own when `workers` > 1 (the pool forks on entry).
    """
    if workers <= 1:
        # Checking and hashing run a batch ahead on a thread of their own while this thread
        # makes the rest of the landed form (the linkage encodings, the generalised fields).
        examined = ahead(_examined(batches, job, HashMemo()), "landing-check")
        try:
            for each in examined:
                prepared = finish(each, job)
                del each  # the checked batch is not held while the landing takes this one
                yield prepared
        finally:
            examined.close()
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker, initargs=(os.getpid(),))
    pending: deque[Future[Prepared]] = deque()
    try:
        pool.submit(_ready).result()  # fork every worker now, before any other thread starts
        for batch in batches:
            pending.append(pool.submit(_prepare_in_worker, batch, job))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _examined(batches: Iterator[Batch], job: Job, memo: HashMemo) -> Iterator[Examined]:
    """Each batch examined; the raw batch let go before its result waits to be taken."""
    for batch in batches:
        examined = examine(batch, job, memo)
        del batch
        yield examined


_WORKER_MEMO: list[HashMemo] = []


def _start_worker(parent: int) -> None:
    _WORKER_MEMO[:] = [HashMemo()]
    _die_with(parent)


# prctl(PR_SET_PDEATHSIG, ...): Linux sends the signal when the forking thread's process dies.
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """End this worker when `parent` ends, however it ends (SIGKILL included).

    On Linux the kernel sends SIGKILL on the parent's death; elsewhere a watchdog thread polls
    for it. Either way a parent already gone by now is caught by the check after arming.
    """
    if not _arm_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _arm_death_signal() -> bool:
    name = ctypes.util.find_library("c")
    if not name or not hasattr(signal, "SIGKILL"):
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _ready() -> bool:
    return True


def _prepare_in_worker(batch: Batch, job: Job) -> Prepared:
    return prepare_batch(batch, job, _WORKER_MEMO[0])
