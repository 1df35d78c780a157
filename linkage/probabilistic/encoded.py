"""Reading keyed encodings: `Encoded` holds cached numpy views of a frame of `lk_*` columns
(int64 keys, Bloom filter words, blocking-pass keys, value frequencies) for every later step."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from linkage.encodings import PREFIX, encoded_fields


class Encoded:
    """A frame of encodings with cached numpy views: int64 keys (0 = missing), Bloom bits,
    blocking-pass keys. Safe to share between threads (the caches are filled under a lock)."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.n = len(frame)
        self._keys: dict[str, np.ndarray] = {}
        self._bits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._pass_keys: dict[tuple[str, ...], np.ndarray] = {}
        self._frequencies: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:
        """Pickled (sent to a Spark executor) as its frame alone: the caches are made again
        where they are needed, and a lock cannot travel."""
        return {"frame": self.frame}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["frame"])  # type: ignore[misc]

    def has(self, name: str) -> bool:
        return PREFIX + name in self.frame.columns

    def key(self, name: str) -> np.ndarray:
        """int64 keyed hashes of column `lk_<name>`; 0 where missing."""
        if name not in self._keys:
            with self._lock:
                if name not in self._keys:
                    self._keys[name] = _as_keys(self.frame[PREFIX + name], name)
        return self._keys[name]

    def bits(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(n, words) uint64 Bloom filter of column `lk_<name>` (zeros where missing), popcounts."""
        if name not in self._bits:
            with self._lock:
                if name not in self._bits:
                    bits = _as_bits(self.frame[PREFIX + name])
                    self._bits[name] = (bits, np.bitwise_count(bits).sum(axis=1,
                                                                         dtype=np.int32))
        return self._bits[name]

    def frequency(self, name: str) -> np.ndarray:
        """Per record: the share of records with a value of `lk_<name>` that have this one
        (0 where missing); what term-frequency adjustments weigh exact agreement by."""
        if name not in self._frequencies:
            with self._lock:
                if name not in self._frequencies:
                    keys = self.key(name)
                    present = np.flatnonzero(keys != 0)
                    out = np.zeros(self.n, dtype=np.float64)
                    if len(present):
                        _, inverse, counts = np.unique(keys[present], return_inverse=True,
                                                       return_counts=True)
                        out[present] = counts[inverse] / len(present)
                    self._frequencies[name] = out
        return self._frequencies[name]

    def pass_key(self, columns: Sequence[str]) -> np.ndarray:
        """Combined int64 key of a blocking pass (0 where any element is missing)."""
        cols = tuple(columns)
        if cols not in self._pass_keys:
            with self._lock:
                if cols not in self._pass_keys:
                    self._pass_keys[cols] = _pass_key(self, cols)
        return self._pass_keys[cols]


def _as_keys(series: pd.Series, name: str) -> np.ndarray:
    if pd.api.types.is_float_dtype(series.dtype):  # int64 with nulls read by plain to_pandas()
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.nanmax(np.abs(values), initial=0.0) >= 2.0 ** 53:
            raise TypeError(f"encoding column lk_{name} lost precision in float64")
        return np.nan_to_num(values, nan=0.0).astype(np.int64)
    if isinstance(series.dtype, pd.ArrowDtype) or pd.api.types.is_extension_array_dtype(
            series.dtype):
        return series.to_numpy(dtype=np.int64, na_value=0)
    return np.asarray(series, dtype=np.int64)


def _as_bits(series: pd.Series) -> np.ndarray:
    """Bloom filters (bytes objects, Arrow binary or fixed_size_binary) as (n, words) uint64;
    (n, 0) when none has a value (a few profiles taken from a register may have none)."""
    if isinstance(series.dtype, pd.ArrowDtype) and pa.types.is_fixed_size_binary(
            series.dtype.pyarrow_dtype):
        arr = pa.array(series.array)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        width = arr.type.byte_width
        data = np.frombuffer(arr.buffers()[1], dtype="<u8", offset=arr.offset * width,
                             count=len(arr) * width // 8).reshape(len(arr), width // 8).copy()
        data[arr.is_null().to_numpy(zero_copy_only=False)] = 0
        return data
    values = series.to_numpy(dtype=object, na_value=None)
    present = pd.notna(values)
    if not present.any():  # no filter to take a width from: none (compares as missing)
        return np.zeros((len(values), 0), dtype="<u8")
    width = len(values[present][0])
    filled = values.copy()
    filled[~present] = bytes(width)  # (np.where would turn this into b"": numpy strips NULs)
    raw = b"".join(filled.tolist())
    if len(raw) != width * len(values):
        raise ValueError("Bloom filters of different lengths in one column")
    return np.frombuffer(raw, dtype="<u8").reshape(len(values), width // 8).copy()


def _mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Combine two uint64 key arrays into one (order-dependent)."""
    return a * np.uint64(0x9E3779B97F4A7C15) + (b ^ (b >> np.uint64(29)))


def _element_key(enc: Encoded, element: str) -> np.ndarray:
    """uint64 key of one pass element: a column, or `a|b` the unordered pair of two columns."""
    if "|" in element:
        a, b = (enc.key(c).astype(np.uint64) for c in element.split("|", 1))
        key = _mix(np.minimum(a, b), np.maximum(a, b))
        key[(a == 0) | (b == 0)] = 0
        return key
    return enc.key(element).astype(np.uint64)


def pass_columns(cols: Sequence[str]) -> list[str]:
    """The encoding columns a blocking pass reads (`a|b` elements split in two)."""
    return [c for element in cols for c in element.split("|")]


def _pass_key(enc: Encoded, columns: Sequence[str]) -> np.ndarray:
    """Combined int64 key of a pass's elements; 0 if any is missing."""
    key = _element_key(enc, columns[0])
    missing = key == 0
    for element in columns[1:]:
        other = _element_key(enc, element)
        missing |= other == 0
        key = _mix(key, other)
    key = key.view(np.int64)
    key[key == 0] = 1
    key[missing] = 0
    return key


def compared_fields(left: Encoded, right: Encoded) -> list[str]:
    """Fields encoded in both frames, in a stable order."""
    rset = set(encoded_fields(right.frame))
    return [f for f in encoded_fields(left.frame) if f in rset]
