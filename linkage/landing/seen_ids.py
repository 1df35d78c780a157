"""The record ids a landing has kept so far, to refuse a later row repeating one.

Held as 64-bit keyed fingerprints (`pseudonymise.record_keys`; 8 bytes a row, never the id)
in sorted runs, newest last, whose sizes' powers of two fall from oldest to newest: a new
batch's run is merged with the last while the last's power of two is no larger (a binary
counter, whatever the batches' sizes). So there are at most about log2 of the fingerprints
runs to look a batch up in, and each fingerprint is copied about that many times over a
landing. One sorted array with each batch inserted into it copied the whole
array a batch: 16.5M rows (an outpatients extract of five million persons) took 7.1 s, 40M
rows 32 s, growing with the square of the file.
"""

from __future__ import annotations

import numpy as np


class SeenIds:
    """Fingerprints seen so far, in sorted runs (module docstring)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def seen(self, ordered: np.ndarray) -> np.ndarray:
        """Per fingerprint of `ordered` (of the runs' type; sorted, which only makes it
        faster): whether it was added before."""
        found = np.zeros(len(ordered), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, ordered), len(run) - 1)
            found |= run[at] == ordered
        return found

    def add(self, fresh: np.ndarray) -> None:
        """Remember `fresh` (sorted, none seen before, all of one integer type: merging
        int64 with uint64 would make floats that compare wrongly)."""
        if not len(fresh):
            return
        if self.runs and fresh.dtype != self.runs[0].dtype:
            raise TypeError(f"fingerprints of type {fresh.dtype} among {self.runs[0].dtype}")
        self.runs.append(fresh)
        while len(self.runs) > 1 and (len(self.runs[-2]).bit_length()
                                      <= len(self.runs[-1]).bit_length()):
            last = self.runs.pop()
            merged = np.concatenate([self.runs.pop(), last])
            merged.sort(kind="stable")  # two sorted runs: merged in one pass
            self.runs.append(merged)
