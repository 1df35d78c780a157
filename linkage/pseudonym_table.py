"""Pseudonyms held as fixed-width bytes, ordered by a 64-bit hash of their bytes, each with a
value if wanted (a person key): membership and lookup by binary search on the hashes, each hit
confirmed on the bytes (exact), and no Python object made per pseudonym. Three million
pseudonyms take about 72 bytes each; a dict or pandas Index of Python strings took five times
that, and the freed objects' memory stayed with the process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Strings combined into one array before a dictionary is made of them, up to this many bytes:
# encoding chunk by chunk and unifying the chunks' dictionaries takes time growing with the
# chunks (a profile bucket holds a batch of every register read, more the larger the
# register). Past it (32-bit offsets hold 2 GiB) the chunks are encoded one by one.
ONE_ARRAY_BYTES = 1 << 30


def dictionary_of(values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """`values` dictionary-encoded as one array: the indices number the distinct values in
    the order they first appear, whether or not the values came in chunks."""
    if isinstance(values, pa.ChunkedArray):
        if values.nbytes <= ONE_ARRAY_BYTES:
            values = values.combine_chunks()
        else:
            return pc.dictionary_encode(values).unify_dictionaries().combine_chunks()
    return pc.dictionary_encode(values)


class PseudonymTable:
    """Distinct pseudonyms (bytes), optionally each with a value (bytes)."""

    def __init__(self, ids: np.ndarray, values: np.ndarray | None = None):
        ids = _padded(ids, -(-max(ids.dtype.itemsize, 1) // 8) * 8)
        hashes = _hashed(ids)
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.ids = hashes[order], ids[order]
        self.values = None if values is None else values[order]
        edges = np.flatnonzero(self.hashes[1:] != self.hashes[:-1]) + 1
        runs = np.diff(np.concatenate(([0], edges, [len(self.hashes)])))
        self.longest_run = int(runs.max(initial=1))  # pseudonyms sharing one hash, at most

    @classmethod
    def from_arrow(cls, ids: pa.Array | pa.ChunkedArray,
                   values: pa.Array | pa.ChunkedArray | None = None) -> PseudonymTable:
        """A table of distinct pseudonyms (strings), with their values (strings) if given."""
        held = fixed_width(pc.cast(ids, pa.binary()))
        return cls(held, None if values is None else fixed_width(pc.cast(values, pa.binary())))

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, person_ids: pd.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each pseudonym's place in the table, -1 if absent (nulls are absent); each
        distinct one is looked up once."""
        if not len(person_ids):
            return np.zeros(0, dtype=np.int64)
        if isinstance(person_ids, pa.Array | pa.ChunkedArray):
            values = person_ids
        elif isinstance(person_ids.dtype, pd.ArrowDtype):
            values = pa.array(person_ids.array)
        else:
            values = pa.array(person_ids.to_numpy(dtype=object), type=pa.string(),
                              from_pandas=True)
        encoded = dictionary_of(values.cast(pa.string()))
        found = np.full(len(encoded.dictionary), -1, dtype=np.int64)
        if len(self.ids) and len(encoded.dictionary):
            distinct = fixed_width(encoded.dictionary.cast(pa.binary()))
            width = self.ids.dtype.itemsize
            fits = np.ones(len(distinct), dtype=bool)
            if distinct.dtype.itemsize > width:  # longer than every pseudonym held: absent
                fits = np.char.str_len(distinct) <= width
            wanted = _padded(distinct, width)
            hashes = _hashed(wanted)
            # In the hashes' order, searched and confirmed moving forwards through the table
            # (`linkage.sorted_search`'s idea, here with the confirmation in the same order):
            # in random order each lookup misses the caches once the table outgrows them.
            order = np.argsort(hashes, kind="stable")
            hashes, wanted, fits = hashes[order], wanted[order], fits[order]
            first = np.searchsorted(self.hashes, hashes)
            hits = np.full(len(order), -1, dtype=np.int64)
            for step in range(self.longest_run):  # past pseudonyms sharing the hash, if any
                at = np.minimum(first + step, len(self.ids) - 1)
                hit = fits & (hits < 0) & (self.hashes[at] == hashes) & (self.ids[at] == wanted)
                hits[hit] = at[hit]
            found[order] = hits
        indices = encoded.indices
        if not len(found):  # every pseudonym asked is null
            return np.full(len(indices), -1, dtype=np.int64)
        out = found[pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)]
        out[pc.is_null(indices).to_numpy(zero_copy_only=False)] = -1
        return out

    def contains(self, person_ids: pd.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Whether each pseudonym is in the table."""
        return self.positions(person_ids) >= 0

    def lookup(self, person_ids: pd.Series) -> np.ndarray:
        """Each pseudonym's value as a string (None if absent)."""
        if self.values is None:
            raise ValueError("this table holds pseudonyms without values")
        at = self.positions(person_ids)
        out = np.full(len(at), None, dtype=object)
        hit = at >= 0
        out[hit] = np.char.decode(self.values[at[hit]], "utf-8").astype(object)
        return out

    def lookup_arrow(self, person_ids: pa.Array) -> pa.Array:
        """`lookup` for an Arrow array, as an Arrow string array (null if absent): no Python
        object per row."""
        if self.values is None:
            raise ValueError("this table holds pseudonyms without values")
        at = self.positions(person_ids)
        hit = at >= 0
        found = _as_text(self.values[at[hit]])
        spread = np.full(len(at), -1, dtype=np.int64)
        spread[hit] = np.arange(int(hit.sum()))
        return found.take(pa.array(spread, mask=~hit))


def fixed_width(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Binary values (none null) as a numpy bytes array, zero-copy when all have one length."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if values.null_count:
        raise ValueError("a pseudonym table holds no null")
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
    width = int(lengths.max(initial=1))
    if len(values) and (lengths == width).all() and width > 0:
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int32,
                                count=len(values) + 1, offset=values.offset * 4)
        start = int(offsets[0])
        data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[start:start + width * len(values)]
        return data.view(f"S{width}").copy()
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=f"S{max(width, 1)}")


def _as_text(values: np.ndarray) -> pa.Array:
    """Fixed-width bytes (UTF-8) as an Arrow string array: laid end to end without a copy
    when none is shorter than the width (NUL-padded ones are cut as numpy cuts them)."""
    width = values.dtype.itemsize
    if len(values) and width and (np.char.str_len(values) == width).all():
        offsets = np.arange(0, width * (len(values) + 1), width, dtype=np.int32)
        return pa.Array.from_buffers(pa.string(), len(values), [
            None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(values))])
    return pa.array(np.char.decode(values, "utf-8").astype(object), pa.string())


def _padded(values: np.ndarray, width: int) -> np.ndarray:
    """Bytes values at exactly `width` bytes (NUL-padded; longer ones cut: callers rule those
    out), so their words can be read as integers."""
    return values if values.dtype.itemsize == width else values.astype(f"S{width}")


def pseudonym_hashes(person_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each pseudonym (none null) from its bytes, made in numpy: equal
    pseudonyms have equal hashes whatever else is in the batch."""
    held = fixed_width(pc.cast(person_ids, pa.binary()))
    return _hashed(_padded(held, -(-max(held.dtype.itemsize, 1) // 8) * 8))


def one_person_in(person_ids: pa.Array | pa.ChunkedArray, every: int) -> np.ndarray:
    """Whether each row's person (pseudonym, none null) is in a fixed sample of about one
    person in `every`, chosen by the high half of the pseudonym's hash (its low half places
    persons in buckets): a person's rows are kept or left together, whatever the batch."""
    if every <= 1:
        return np.ones(len(person_ids), dtype=bool)
    return (pseudonym_hashes(person_ids) >> np.uint64(32)) % np.uint64(every) == 0


def _hashed(values: np.ndarray) -> np.ndarray:
    """A 64-bit hash of fixed-width bytes (width a multiple of 8), word by word, in numpy.
    Folded from the last word, which leaves the NUL words of padding out (a zero word on a
    zero hash stays zero): the same value padded to any width hashes alike."""
    words = values.view(np.uint64).reshape(len(values), values.dtype.itemsize // 8)
    hashed = np.zeros(len(values), dtype=np.uint64)
    for i in reversed(range(words.shape[1])):
        hashed ^= words[:, i]
        hashed *= np.uint64(0x9E3779B97F4A7C15)
        hashed ^= hashed >> np.uint64(29)
    return hashed
