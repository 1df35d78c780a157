"""Probabilistic linkage on keyed encodings: blocking, comparison, Fellegi-Sunter scores, decisions.

Everything here works on frames of `lk_*` columns made by `linkage.encodings` (never on clear
values) and on record *positions* (0..n-1 within the frames given), so a caller can map
positions back to its own ids. `link` and `dedupe` take inputs of any size: blocking is
planned once on the whole inputs, then the left records are scored a partition at a time
(about `PARTITION_PAIRS` candidate pairs each), several partitions at once in threads. A
fitted `MatchModel` serialises with `to_dict` and can be passed back as `model=`; its `prior`
is P(match) for two random records, whatever the partition size.

Pipeline (what `link` and `dedupe` do; each step is also public):
1. `plan_blocking` + `pairs_for_rows` (or `candidate_pairs` for everything at once) - union of
   blocking passes. A pass is a tuple of encoding columns that must all be present and equal
   (e.g. keyed Soundex of surname + year-month of birth). Joins are vectorised (sort, group,
   repeat), never Python loops over pairs; a block whose pair count on the whole inputs
   exceeds `max_block_pairs` is skipped for that pass (other passes still catch its true pairs)
   and counted; a pass keeps only the pairs no earlier pass made, so the union needs no sort.
2. `compare` - one small-integer level per field (0 missing, 1 disagree, higher = closer): exact
   equality of keyed hashes, Dice similarity of keyed bigram Bloom filters (np.bitwise_count on
   AND-ed 64-bit words), phonetic agreement, partial dates (day/month swap, two of three
   components), postcode sector/district, swapped forename/surname.
   recordlinkage's own Index/Compare classes work on clear strings and loop in Python per pair at
   scale, so blocking and comparison are done here, vectorised; recordlinkage does the
   classification.
3. `fit_model` - a `MatchModel`: a log2 Bayes factor (match weight) per field level, and a prior.
   * `method="ecm"` (default, `fit_fellegi_sunter`): unsupervised Fellegi-Sunter the way Splink
     does it, with recordlinkage's `ECMClassifier` doing the EM. u = P(level | non-match) from
     random pairs (`estimate_u`; exact agreement from the keyed values' frequencies); m =
     P(level | match) from an ECM fit *within each blocking pass*, on the fields that pass does
     not block on, averaged over passes. The ECM kernel is seeded with an ordered start (stock
     'jaro' accepts binary features only; its naive Bayes one-hot encodes multi-level fields,
     so m is per level), its E-step floors log-probabilities (a level with no mass otherwise
     turns every later step to NaN) and caches the binarised patterns (speed). The missing level
     has weight 0. The prior, P(match) for two random records, is the fixed point of expected
     matches among candidates (`estimate_prior`).
     Why not one ECM over all candidates: its u is conditional on blocking (agreement on a
     blocked field looks common among non-matches; the union of passes makes fields look
     negatively correlated), which underweights the agreements that matter, and when matches are
     a small share of candidates EM can pick the wrong class (it always finds two).
   * `method="logistic"`: `recordlinkage.LogisticRegressionClassifier` on one-hot levels,
     trained on pairs labelled for free by agreement of the NHS-number pseudonym (`person_id`)
     where both records have one (`nhs_labels`). Weight = (log-odds - training prior log-odds)
     / ln 2; its prior is the labelled candidates' match rate.
   Choice, by the figures of bench/linkage.py (encoded only; logistic trained on true labels of
   half the candidate pairs, an optimistic stand-in for NHS-number labels):
     FEBRL4 F1: ecm 1.0000, logistic 0.9994; FEBRL3: both 0.9997.
     Generated 50k x 50k with planted typo'd copies, 50% shared: ecm 0.994, logistic 0.994,
     one ECM over all candidates 0.956; 2% shared: ecm 0.992, logistic 0.970, one ECM over all
     candidates finds no plausible match class. (Third decimals move by about 0.001 with the
     random key, through Bloom-filter collisions.)
   So ECM is the default for `link-files`: as good as labels where labels are plentiful,
   better where matches are rare, and NHS-labelled pairs are biased anyway (records carrying
   an NHS number are better recorded than the ones linkage is for). The person index, which
   links rows to a register of persons, has its own supervised matcher trained on a sample
   of NHS-labelled rows (`linkage/index_matcher.py`).
   `method="auto"` uses logistic only with >= 200 labelled pairs of each kind.
   A fitted model whose match class is implausible (agreement on some field makes a match less
   likely: `MatchModel.implausible_fields`) makes no links and says so in `LinkResult.warnings`.
   Term frequencies (ecm): exact agreement on a name is weighed by how common the keyed value
   is (`term_frequency_adjustment`; `pair_weights` = level weights + these terms).
4. Decisions, on the posterior probability (from the weight and the model's prior, which is fixed
   once fitted, so decisions are consistent across partitions):
   * two files: `one_to_one` greedy assignment by weight (vectorised as rounds of mutually-best
     pairs, which is exactly greedy matching with ties broken by position), or `best_right`
     (each left record's best candidate; for episode records against a register of persons);
   * one file: `clusters` = connected components of pairs at or above `upper`;
   * a review band: pairs with `lower <= probability < upper` that would otherwise be linked
     (assigned one-to-one, or joining two different clusters) are returned in `review`, never
     linked.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from linkage.encodings import PREFIX, SEP, encoded_fields, field_kind

MISSING, DIFFERENT = 0, 1

# Blocking passes: columns (without the `lk_` prefix) that must all agree.
# An element `a|b` is the unordered pair of two columns (forename/surname swapped still agree).
DEFAULT_PASSES: tuple[tuple[str, ...], ...] = (
    ("date_of_birth",),
    ("forename__ph|surname__ph",),
    ("surname__ph", "date_of_birth__ym"),
    ("forename__ph", "date_of_birth__md"),
    ("surname", "date_of_birth__yd"),
    ("postcode", "surname__ph"),
    ("postcode", "forename__ph"),
    ("postcode", "date_of_birth__swap"),
    ("identifier",),
    ("address", "surname__ph"),
    ("postcode", "address"),
)

# Dice cut points on Bloom filters, per kind (a level for each cut passed).
DICE_CUTS: dict[str, tuple[float, ...]] = {
    "forename": (0.5, 0.7, 0.85),
    "surname": (0.5, 0.7, 0.85),
    "postcode": (0.7,),
    "address": (0.5, 0.7, 0.85),
    "identifier": (0.5, 0.7),
}
# Highest (exact agreement) level of each kind, as `compare` assigns them.
TOP_LEVEL = {"forename": 5, "surname": 5, "date_of_birth": 4, "sex": 2, "postcode": 5,
             "address": 5, "identifier": 4}
COMPARE_CHUNK = 1 << 20
LOG_FLOOR = math.log(1e-12)
M_PSEUDO = 1.0  # pseudo-matches per level when averaging m (see fit_fellegi_sunter)
TF_KINDS = ("forename", "surname")  # exact agreement weighed by the value's frequency


# --------------------------------------------------------------------------------------------
# Reading encodings

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
    """Bloom filters (bytes objects, Arrow binary or fixed_size_binary) as (n, words) uint64."""
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
    width = len(values[present][0]) if present.any() else 8
    filled = values.copy()
    filled[~present] = bytes(width)  # (np.where would turn this into b"": numpy strips NULs)
    raw = b"".join(filled.tolist())
    if len(raw) != width * len(values):
        raise ValueError("Bloom filters of different lengths in one column")
    return np.frombuffer(raw, dtype="<u8").reshape(len(values), width // 8).copy()


# --------------------------------------------------------------------------------------------
# Blocking

@dataclass
class BlockingStats:
    """What blocking did: pairs per pass (before union), blocks skipped as oversized, total."""

    per_pass: dict[str, int] = field(default_factory=dict)
    skipped_blocks: dict[str, int] = field(default_factory=dict)
    pairs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


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


def _pass_columns(cols: Sequence[str]) -> list[str]:
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


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c), vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return offsets + np.arange(total, dtype=np.int64)


Groups = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _groups(keys: np.ndarray) -> Groups:
    """Records with a key, sorted by key: (order, distinct keys, starts, counts)."""
    present = np.flatnonzero(keys != 0)
    order = present[np.argsort(keys[present], kind="stable")]
    ordered = keys[order]
    if len(ordered) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return order, ordered, empty, empty
    first = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(first, len(ordered)))
    return order, ordered[first], first, counts


def _join(left_groups: Groups, right_groups: Groups, max_block_pairs: int | None = None
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Every (left, right) pair of records sharing a key; blocks over the cap skipped."""
    lo, lu, ls, lc = left_groups
    ro, ru, rs, rc = right_groups
    _, li, ri = np.intersect1d(lu, ru, assume_unique=True, return_indices=True)
    lstart, lcount, rstart, rcount = ls[li], lc[li], rs[ri], rc[ri]
    skipped = 0
    if max_block_pairs is not None:
        keep = lcount * rcount <= max_block_pairs
        skipped = int((~keep).sum())
        lstart, lcount, rstart, rcount = lstart[keep], lcount[keep], rstart[keep], rcount[keep]
    members = _ranges(lstart, lcount)
    reps = np.repeat(rcount, lcount)
    first = np.repeat(lo[members], reps)
    starts = np.repeat(np.repeat(rstart, lcount), reps)
    within = np.arange(len(first), dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps)
    return first, ro[starts + within], skipped


def block_pairs(left_keys: np.ndarray, right_keys: np.ndarray | None,
                max_block_pairs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """All pairs agreeing on a key (right None: within left, i < j); (left, right, skipped)."""
    lo, lu, ls, lc = _groups(left_keys)
    if right_keys is None:
        sizes = lc * (lc - 1) // 2
        keep = (lc > 1) & (sizes <= max_block_pairs)
        skipped = int(((lc > 1) & ~keep).sum())
        ls, lc = ls[keep], lc[keep]
        # every ordered pair in each block, then keep i < j
        members = _ranges(ls, lc)
        reps = np.repeat(lc, lc)
        first = np.repeat(lo[members], reps)
        block_start = np.repeat(np.repeat(ls, lc), reps)
        within = np.arange(len(first), dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps)
        second = lo[block_start + within]
        mask = first < second
        return first[mask], second[mask], skipped
    return _join((lo, lu, ls, lc), _groups(right_keys), max_block_pairs)


def usable_passes(left: Encoded, right: Encoded | None, passes: Iterable[Sequence[str]]
                  ) -> list[tuple[str, ...]]:
    """The passes whose columns both frames have; if none, one pass per shared exact encoding
    (so a file mapped with unusual fields still gets candidates, oversized blocks capped)."""
    other = left if right is None else right
    usable = [tuple(cols) for cols in passes
              if all(left.has(c) and other.has(c) for c in _pass_columns(cols))]
    if usable:
        return usable
    return [(f,) for f in compared_fields(left, other)]


@dataclass
class BlockingPlan:
    """Blocking keys of every usable pass, decided once on the whole inputs.

    A block over `max_block_pairs` (counted on the whole inputs) has its left keys zeroed, so
    any subset of left rows yields exactly its share of the unpartitioned candidate pairs
    (`pairs_for_rows`): partitions together make the same candidate set as one run, and the
    same pairs are skipped. `estimated_pairs` is the sum of kept block sizes over passes (an
    upper bound of the union), which the drivers use to size partitions.
    """

    passes: list[tuple[str, ...]]
    left: list[np.ndarray]
    right: list[np.ndarray]
    right_groups: list[Groups]
    within: bool
    n_left: int
    n_right: int
    estimated_pairs: int
    stats: BlockingStats


def plan_blocking(left: Encoded, right: Encoded | None, passes: Iterable[Sequence[str]], *,
                  max_block_pairs: int = 100_000, stats: BlockingStats | None = None
                  ) -> BlockingPlan:
    """Keys and right-side groups of every usable pass, oversized blocks removed."""
    stats = stats if stats is not None else BlockingStats()
    usable = usable_passes(left, right, passes)
    lefts, rights, groups = [], [], []
    estimated = 0
    for cols in usable:
        name = "+".join(cols)
        lk = left.pass_key(cols)
        rk = lk if right is None else right.pass_key(cols)
        lgroups = _groups(lk)
        rgroups = lgroups if right is None else _groups(rk)
        _, lu, _, lc = lgroups
        if right is None:
            sizes, keys = lc * (lc - 1) // 2, lu
        else:
            keys, li, ri = np.intersect1d(lu, rgroups[1], assume_unique=True,
                                          return_indices=True)
            sizes = lc[li] * rgroups[3][ri]
        big = keys[sizes > max_block_pairs]
        stats.skipped_blocks[name] = int(((sizes > max_block_pairs) & (sizes > 0)).sum())
        stats.per_pass[name] = 0
        estimated += int(sizes[sizes <= max_block_pairs].sum())
        if len(big):
            lk = np.where(np.isin(lk, big), 0, lk)
            if right is None:
                rk = lk
                rgroups = _groups(lk)
        lefts.append(lk)
        rights.append(rk)
        groups.append(rgroups)
    return BlockingPlan(passes=usable, left=lefts, right=rights, right_groups=groups,
                        within=right is None, n_left=left.n,
                        n_right=left.n if right is None else right.n,
                        estimated_pairs=estimated, stats=stats)


def pairs_for_rows(plan: BlockingPlan, rows: np.ndarray | None = None, *,
                   max_pairs: int = 50_000_000, sort: bool = False) -> pd.DataFrame:
    """Candidate pairs of the left records at positions `rows` (all when None): DataFrame
    `left`, `right` of positions in the whole inputs, each pair once.

    The union of passes needs no sort: a pass keeps only the pairs that no earlier pass made
    (they disagree on every earlier pass's key). Pairs come pass by pass, block by block;
    `sort=True` orders them by (left, right). Deduplication (`plan.within`) keeps left < right.
    """
    stats = plan.stats
    lefts: list[np.ndarray] = []
    rights: list[np.ndarray] = []
    total = 0
    for i, cols in enumerate(plan.passes):
        keys = plan.left[i] if rows is None else plan.left[i][rows]
        a, b, _ = _join(_groups(keys), plan.right_groups[i])
        if rows is not None:
            a = rows[a]
        if plan.within:
            keep = a < b
            a, b = a[keep], b[keep]
        name = "+".join(cols)
        with stats.lock:
            stats.per_pass[name] = stats.per_pass.get(name, 0) + len(a)
        for j in range(i):  # made by an earlier pass already?
            if len(a) == 0:
                break
            earlier = plan.left[j][a]
            fresh = (earlier != plan.right[j][b]) | (earlier == 0)
            a, b = a[fresh], b[fresh]
        total += len(a)
        if total > max_pairs:
            raise MemoryError("blocking produced too many candidate pairs; partition the input")
        lefts.append(a)
        rights.append(b)
    a = np.concatenate(lefts) if lefts else np.zeros(0, dtype=np.int64)
    b = np.concatenate(rights) if rights else np.zeros(0, dtype=np.int64)
    if sort and len(a):
        order = np.argsort(a * np.int64(plan.n_right) + b)
        a, b = a[order], b[order]
    with stats.lock:
        stats.pairs += len(a)
    return pd.DataFrame({"left": a.astype(np.int64, copy=False),
                         "right": b.astype(np.int64, copy=False)})


def candidate_pairs(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None = None,
                    passes: Iterable[Sequence[str]] = DEFAULT_PASSES, *,
                    max_block_pairs: int = 100_000, max_pairs: int = 50_000_000,
                    stats: BlockingStats | None = None) -> pd.DataFrame:
    """Union of blocking passes: DataFrame `left`, `right` of positions, sorted, each pair once.

    With `right` None the pairs are within `left` (left < right). Passes whose columns are not all
    present (in both frames) are skipped (see `usable_passes`). For inputs too large to block
    at once, use `plan_blocking` and `pairs_for_rows` one partition of left rows at a time.
    """
    lenc = left if isinstance(left, Encoded) else Encoded(left)
    renc = None if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    plan = plan_blocking(lenc, renc, passes, max_block_pairs=max_block_pairs, stats=stats)
    return pairs_for_rows(plan, max_pairs=max_pairs, sort=True)


# --------------------------------------------------------------------------------------------
# Comparison

def compared_fields(left: Encoded, right: Encoded) -> list[str]:
    """Fields encoded in both frames, in a stable order."""
    rset = set(encoded_fields(right.frame))
    return [f for f in encoded_fields(left.frame) if f in rset]


def _dice_level(lbits: tuple[np.ndarray, np.ndarray], rbits: tuple[np.ndarray, np.ndarray],
                li: np.ndarray, ri: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    lb, lpop = lbits
    rb, rpop = rbits
    both = np.take(lb, li, axis=0)
    both &= np.take(rb, ri, axis=0)
    ones = np.bitwise_count(both)
    common = np.zeros(len(li), dtype=np.int32)
    for word in range(ones.shape[1]):  # faster than sum(axis=1) over a short axis
        common += ones[:, word]
    denom = lpop[li] + rpop[ri]
    dice = np.divide(2.0 * common, denom, out=np.zeros(len(li)), where=denom > 0)
    level = np.zeros(len(li), dtype=np.int8)
    for cut in cuts:
        level += dice >= cut
    return level


def _field_levels(kind: str, name: str, L: Encoded, R: Encoded, li: np.ndarray,
                  ri: np.ndarray) -> np.ndarray:
    """Level of one field for pairs (li, ri): 0 missing, 1 disagree, higher = closer."""
    lx, rx = L.key(name)[li], R.key(name)[ri]
    missing = (lx == 0) | (rx == 0)
    exact = (lx == rx) & ~missing
    level = np.full(len(li), DIFFERENT, dtype=np.int8)

    def eq(part: str) -> np.ndarray:
        col = f"{name}{SEP}{part}"
        if not (L.has(col) and R.has(col)):
            return np.zeros(len(li), dtype=bool)
        a, b = L.key(col)[li], R.key(col)[ri]
        return (a == b) & (a != 0)

    def dice(cuts: Sequence[float]) -> np.ndarray:
        col = f"{name}{SEP}bf"
        if not (L.has(col) and R.has(col)):
            return np.zeros(len(li), dtype=np.int8)
        return _dice_level(L.bits(col), R.bits(col), li, ri, cuts)

    if kind in ("forename", "surname"):
        cuts = DICE_CUTS[kind]
        level += dice(cuts)
        level = np.maximum(level, np.where(eq("ph"), 2, DIFFERENT).astype(np.int8))
        top = 2 + len(cuts)
    elif kind == "date_of_birth":
        two_of_three = eq("ym") | eq("yd") | eq("md")
        level[two_of_three] = 2
        level[eq("swap")] = 3
        top = 4
    elif kind == "postcode":
        level[eq("district")] = 2
        level[eq("sector")] = 3
        level[dice(DICE_CUTS["postcode"]) > 0] = 4
        top = 5
    elif kind in ("address", "identifier"):
        cuts = DICE_CUTS[kind]
        level += dice(cuts)
        top = 2 + len(cuts)
    else:  # sex and anything exact-only
        top = 2
    level[exact] = top
    level[missing] = MISSING
    return level


def compare(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
            pairs: pd.DataFrame, fields: Sequence[str] | None = None) -> pd.DataFrame:
    """Comparison vectors: an int8 level per field for each pair (same row order as `pairs`).

    `right` None compares within `left` (deduplication).
    """
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = L if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    names = list(fields) if fields is not None else compared_fields(L, R)
    li_all = pairs["left"].to_numpy(dtype=np.int64)
    ri_all = pairs["right"].to_numpy(dtype=np.int64)
    # one (fields, pairs) block: a DataFrame over its transpose needs no copy
    block = np.zeros((len(names), len(li_all)), dtype=np.int8)
    out = dict(zip(names, block, strict=True))
    for lo in range(0, len(li_all), COMPARE_CHUNK):
        li, ri = li_all[lo:lo + COMPARE_CHUNK], ri_all[lo:lo + COMPARE_CHUNK]
        for f in names:
            kind = field_kind(f)
            if kind is not None and L.has(f) and R.has(f):  # else: missing (level 0)
                out[f][lo:lo + len(li)] = _field_levels(kind, f, L, R, li, ri)
        names_present = all(L.has(f) and R.has(f) for f in ("forename", "surname"))
        if "forename" in out and "surname" in out and names_present:  # names swapped
            a, b = L.key("forename")[li], L.key("surname")[li]
            c, d = R.key("forename")[ri], R.key("surname")[ri]
            swapped = (a == d) & (b == c) & (a != 0) & (b != 0) & (a != c)
            for f in ("forename", "surname"):
                top = 2 + len(DICE_CUTS[f])
                part = out[f][lo:lo + len(li)]
                part[swapped] = np.maximum(part[swapped], top - 1)
    return pd.DataFrame(block.T, index=pairs.index, columns=names, copy=False)


# --------------------------------------------------------------------------------------------
# Scoring

def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class MatchModel:
    """Fellegi-Sunter style scores: a log2 Bayes factor for each level of each field.

    `weight(vectors)` = bias + sum of level weights (log2 of P(levels | match) / P(levels |
    non-match)); `probability` adds the prior log-odds (ecm: P(match) for two random records;
    logistic: the labelled candidates' match rate) and gives P(match | candidate pair).
    Serialisable with `to_dict`/`from_dict`, so one fitted model can score every partition;
    `notes` lists blocking passes whose ECM fit was set aside as implausible. `tf` maps a
    field to the u of its exact level: exact agreement on that field is then weighed by how
    common the agreed value is (`pair_weights`), as Splink's term-frequency adjustments do.
    """

    fields: tuple[str, ...]
    level_weights: dict[str, dict[int, float]]
    prior: float
    method: str
    bias: float = 0.0
    m: dict[str, dict[int, float]] = field(default_factory=dict)
    u: dict[str, dict[int, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tf: dict[str, float] = field(default_factory=dict)

    def implausible_fields(self, margin: float = 1.0) -> list[str]:
        """Fields whose closest level does not favour a match (weight < -margin, or below the
        weight of disagreement).

        A Fellegi-Sunter match class must make agreement more likely for every identifier. EM
        always finds two classes, even when the inputs share no person (it then splits the
        candidate pairs by which blocking pass made them); this check catches that.
        """
        bad = []
        for f in self.fields:
            levels = {k: v for k, v in self.level_weights.get(f, {}).items() if k != MISSING}
            if len(levels) < 2 or DIFFERENT not in levels:
                continue
            top = levels[max(levels)]
            if top < -margin or top < levels[DIFFERENT]:
                bad.append(f)
        return bad

    def weight(self, vectors: pd.DataFrame) -> np.ndarray:
        """Match weight (log2 Bayes factor) of each comparison vector."""
        total = np.full(len(vectors), self.bias, dtype=np.float64)
        for f in self.fields:
            if f not in vectors.columns:
                continue
            table = np.zeros(128, dtype=np.float64)
            for level, w in self.level_weights[f].items():
                table[int(level)] = w
            total += table[vectors[f].to_numpy(dtype=np.int64)]
        return total

    def probability(self, weights: np.ndarray) -> np.ndarray:
        """Posterior probability of a match from weights and the prior."""
        log_odds = np.asarray(weights) * math.log(2) + _logit(self.prior)
        return 1.0 / (1.0 + np.exp(-np.clip(log_odds, -700, 700)))

    def to_dict(self) -> dict[str, Any]:
        return {"fields": list(self.fields), "prior": self.prior, "method": self.method,
                "bias": self.bias,
                "level_weights": {f: {str(k): v for k, v in w.items()}
                                  for f, w in self.level_weights.items()},
                "m": {f: {str(k): v for k, v in w.items()} for f, w in self.m.items()},
                "u": {f: {str(k): v for k, v in w.items()} for f, w in self.u.items()},
                "notes": list(self.notes), "tf": dict(self.tf)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MatchModel:
        def levels(d: dict[str, dict[str, float]]) -> dict[str, dict[int, float]]:
            return {f: {int(k): float(v) for k, v in w.items()} for f, w in d.items()}
        return cls(fields=tuple(data["fields"]), prior=float(data["prior"]),
                   method=data["method"], bias=float(data.get("bias", 0.0)),
                   level_weights=levels(data["level_weights"]), m=levels(data.get("m", {})),
                   u=levels(data.get("u", {})), notes=list(data.get("notes", [])),
                   tf={f: float(v) for f, v in data.get("tf", {}).items()})


def term_frequency_adjustment(model: MatchModel, left: Encoded, right: Encoded,
                              pairs: pd.DataFrame, vectors: pd.DataFrame) -> np.ndarray:
    """log2 adjustment of each pair's weight for exact agreement on a common or rare value.

    For a value v with shares p_L(v), p_R(v) among the records of each side, two non-matching
    records agree on v with probability p_L p_R and a match has v with probability about
    sqrt(p_L p_R); against the average u of exact agreement that is a factor of
    u / sqrt(p_L p_R): a shared rare surname counts for more than a shared Smith. Frequencies
    are of keyed values (never clear text), counted over the whole inputs.
    """
    adjustment = np.zeros(len(vectors), dtype=np.float64)
    if not model.tf:
        return adjustment
    li, ri = pairs["left"].to_numpy(), pairs["right"].to_numpy()
    for f, u_exact in model.tf.items():
        if f not in vectors.columns:
            continue
        exact = np.flatnonzero(vectors[f].to_numpy() == TOP_LEVEL[field_kind(f) or ""])
        shared = np.sqrt(left.frequency(f)[li[exact]] * right.frequency(f)[ri[exact]])
        adjustment[exact] = np.log2(u_exact / np.maximum(shared, 1e-12))
    return adjustment


def pair_weights(model: MatchModel, left: Encoded, right: Encoded | None, pairs: pd.DataFrame,
                 vectors: pd.DataFrame) -> np.ndarray:
    """Match weight of each candidate pair: the levels' weights plus term-frequency terms."""
    weights = model.weight(vectors)
    if model.tf:
        weights += term_frequency_adjustment(model, left, left if right is None else right,
                                             pairs, vectors)
    return weights


def _seeded_ecm_kernel(max_iter: int, atol: float) -> Any:
    """recordlinkage's ECM kernel with an ordered start for multi-level features."""
    from recordlinkage.algorithms.nb_sklearn import ECM

    class OrderedStartECM(ECM):
        """ECM whose start favours higher levels for matches (stock 'jaro' is binary-only)."""

        def _init_parameters_jaro(self, X_bin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m_parts, u_parts = [], []
            for binarizer in self._binarizers:
                levels = np.asarray(binarizer.classes_, dtype=np.float64)
                rank = np.where(levels == MISSING, 0.0, levels)
                m = np.exp(rank)
                u = np.exp(-rank)
                m[levels == MISSING] = u[levels == MISSING] = 0.05
                if len(levels) == 1:
                    m, u = np.ones(1), np.ones(1)
                m_parts.append(m / m.sum())
                u_parts.append(u / u.sum())
            feature = np.vstack([np.concatenate(u_parts), np.concatenate(m_parts)])
            return np.log(np.array([0.99, 0.01])), np.log(feature)

        def fit(self, X: np.ndarray) -> Any:
            try:
                return super().fit(X)
            finally:
                self._binarised = None

        def _transform_data(self, X: np.ndarray) -> np.ndarray:
            # EM re-binarises the same distinct patterns every iteration with sklearn's
            # LabelBinarizer, whose per-call checks dominate the fit: remember the last one.
            key = (X.__array_interface__["data"][0], X.shape, X.strides)
            cached = getattr(self, "_binarised", None)
            if cached is not None and cached[0] == key:
                return cached[1]
            out = super()._transform_data(X).astype(np.float64)
            # A missing field is no evidence either way: zero its one-hot column, so it adds
            # nothing to either class's likelihood (rather than being a level EM can exploit).
            offset = 0
            for binarizer in self._binarizers:
                classes = np.asarray(binarizer.classes_)
                out[:, offset + np.flatnonzero(classes == MISSING)] = 0.0
                offset += len(classes)
            self._binarised = (key, out)
            return out

        def _joint_log_likelihood(self, X: np.ndarray) -> np.ndarray:
            # A level with no mass in a class has log-probability -inf, and -inf * 0 in the
            # one-hot dot product is NaN, which would poison every later EM step: floor it.
            saved = self.feature_log_prob_
            self.feature_log_prob_ = np.maximum(saved, LOG_FLOOR)
            try:
                return super()._joint_log_likelihood(X)
            finally:
                self.feature_log_prob_ = saved

    return OrderedStartECM(init="jaro", max_iter=max_iter, atol=atol, binarize=None)


def _sample(vectors: pd.DataFrame, labels: np.ndarray | None, max_pairs: int, seed: int
            ) -> tuple[pd.DataFrame, np.ndarray | None]:
    if len(vectors) <= max_pairs:
        return vectors, labels
    pick = np.sort(np.random.default_rng(seed).choice(len(vectors), max_pairs, replace=False))
    return vectors.iloc[pick], None if labels is None else labels[pick]


def fit_ecm(vectors: pd.DataFrame, *, max_pairs: int = 500_000, max_iter: int = 200,
            seed: int = 0) -> MatchModel:
    """Unsupervised Fellegi-Sunter fit with recordlinkage's ECMClassifier (EM on levels)."""
    import recordlinkage

    if len(vectors) == 0:
        raise ValueError("no candidate pairs to fit a model on")
    sample, _ = _sample(vectors, None, max_pairs, seed)
    clf = recordlinkage.ECMClassifier(init="jaro", binarize=None, max_iter=max_iter, atol=1e-6)
    clf.kernel = _seeded_ecm_kernel(max_iter, 1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):
        clf.fit(sample.astype(np.int8))
    log_m, log_u = clf.log_m_probs, clf.log_u_probs
    weights: dict[str, dict[int, float]] = {}
    ms: dict[str, dict[int, float]] = {}
    us: dict[str, dict[int, float]] = {}
    for f in vectors.columns:
        weights[f], ms[f], us[f] = {}, {}, {}
        for level in log_m[f]:
            m = float(np.clip(np.exp(log_m[f][level]), 1e-6, 1.0))
            u = float(np.clip(np.exp(log_u[f][level]), 1e-6, 1.0))
            ms[f][int(level)], us[f][int(level)] = m, u
            weights[f][int(level)] = 0.0 if level == MISSING else math.log2(m / u)
    prior = float(np.clip(np.exp(clf.log_p), 1e-9, 1 - 1e-9))
    return MatchModel(fields=tuple(vectors.columns), level_weights=weights, prior=prior,
                      method="ecm", m=ms, u=us)


def fit_logistic(vectors: pd.DataFrame, labels: np.ndarray, *, max_pairs: int = 2_000_000,
                 seed: int = 0) -> MatchModel:
    """Supervised fit with recordlinkage's LogisticRegressionClassifier on one-hot levels.

    `labels`: 1 match, 0 non-match, -1 unknown (ignored), e.g. from `nhs_labels`.
    """
    import recordlinkage

    known = np.asarray(labels) >= 0
    sample, y = _sample(vectors[known], np.asarray(labels)[known], max_pairs, seed)
    assert y is not None
    if y.min() == y.max():
        raise ValueError("logistic fit needs labelled matches and non-matches")
    columns: list[tuple[str, int]] = []
    parts = []
    for f in vectors.columns:
        values = sample[f].to_numpy()
        for level in np.unique(vectors[f].to_numpy()):
            columns.append((f, int(level)))
            parts.append(values == level)
    onehot = pd.DataFrame(np.column_stack(parts).astype(np.float64), index=sample.index)
    clf = recordlinkage.LogisticRegressionClassifier(C=10.0, max_iter=2000)
    matches = sample.index[y == 1]
    clf.fit(onehot, matches)
    prior = float(np.clip(y.mean(), 1e-9, 1 - 1e-9))
    coef = np.asarray(clf.coefficients, dtype=np.float64)
    weights: dict[str, dict[int, float]] = {f: {} for f in vectors.columns}
    for (f, level), c in zip(columns, coef, strict=True):
        weights[f][level] = c / math.log(2)
    bias = (float(clf.intercept) - _logit(prior)) / math.log(2)
    return MatchModel(fields=tuple(vectors.columns), level_weights=weights, prior=prior,
                      method="logistic", bias=bias)


def random_pairs(n_left: int, n_right: int | None, count: int, seed: int = 0) -> pd.DataFrame:
    """Uniform random pairs of positions (every pair when there are fewer than `count`).

    `n_right` None: pairs within one frame (left < right).
    """
    rng = np.random.default_rng(seed)
    if n_right is None:
        if n_left * (n_left - 1) // 2 <= count:
            a, b = np.triu_indices(n_left, 1)
            return pd.DataFrame({"left": a.astype(np.int64), "right": b.astype(np.int64)})
        a, b = rng.integers(0, n_left, count), rng.integers(0, n_left - 1, count)
        b = b + (b >= a)  # uniform over b != a
        return pd.DataFrame({"left": np.minimum(a, b), "right": np.maximum(a, b)})
    if n_left * n_right <= count:
        a, b = np.divmod(np.arange(n_left * n_right, dtype=np.int64), n_right)
        return pd.DataFrame({"left": a, "right": b})
    return pd.DataFrame({"left": rng.integers(0, n_left, count),
                         "right": rng.integers(0, n_right, count)})


def _exact_agreement(L: Encoded, R: Encoded | None, name: str) -> float:
    """P(two random records agree exactly on `name`), from the keyed values' frequencies."""
    lk = L.key(name)
    lv, lc = np.unique(lk[lk != 0], return_counts=True)
    if R is None:
        n = L.n
        return float((lc * (lc - 1)).sum() / max(1, n * (n - 1)))
    rk = R.key(name)
    rv, rc = np.unique(rk[rk != 0], return_counts=True)
    _, li, ri = np.intersect1d(lv, rv, assume_unique=True, return_indices=True)
    return float((lc[li] * rc[ri]).sum() / max(1, L.n * R.n))


def estimate_u(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
               fields: Sequence[str], *, count: int = 300_000, seed: int = 0
               ) -> dict[str, dict[int, float]]:
    """u = P(level | non-match) per field, from random pairs (nearly all non-matches).

    The exact-agreement level uses the exact frequency formula (sum over values of the product
    of their frequencies) instead of the sample, so rare agreements (full date of birth) are
    estimated precisely; the other levels share the rest in their sampled proportions.
    """
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = None if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    sample = random_pairs(L.n, None if R is None else R.n, count, seed)
    vectors = compare(L, R, sample, fields=fields)
    out: dict[str, dict[int, float]] = {}
    for f in fields:
        kind = field_kind(f)
        top = TOP_LEVEL.get(kind or "", 2)
        counts = np.bincount(vectors[f].to_numpy(dtype=np.int64), minlength=top + 1)
        counts = counts.astype(np.float64) + 0.5  # smoothing: no level has u = 0
        u = counts / counts.sum()
        exact = max(_exact_agreement(L, R, f), 0.5 / max(1, len(sample)))
        rest = u.sum() - u[top]
        u[:top] *= (1.0 - exact) / rest
        u[top] = exact
        out[f] = {level: float(u[level]) for level in range(len(u))}
    return out


def _pass_fields(cols: Sequence[str]) -> set[str]:
    return {c.split(SEP)[0] for c in _pass_columns(cols)}


def pass_membership(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
                    pairs: pd.DataFrame, passes: Iterable[Sequence[str]]
                    ) -> dict[tuple[str, ...], np.ndarray]:
    """For each usable pass, which candidate pairs agree on all its keys."""
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = L if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    li, ri = pairs["left"].to_numpy(), pairs["right"].to_numpy()
    out = {}
    for cols in usable_passes(L, R, passes):
        lk, rk = L.pass_key(cols)[li], R.pass_key(cols)[ri]
        out[cols] = (lk == rk) & (lk != 0)
    return out


def estimate_prior(weights: np.ndarray, comparisons: float, iterations: int = 100) -> float:
    """P(match) for two random records: fixed point of expected matches among the candidates.

    `comparisons`: size of the comparison space (n_left * n_right, or n(n-1)/2).
    """
    w = np.asarray(weights, dtype=np.float64) * math.log(2)
    lam = min(0.5, 1.0 / max(comparisons, 2.0))
    for _ in range(iterations):
        post = 1.0 / (1.0 + np.exp(-np.clip(w + _logit(lam), -700, 700)))
        new = float(np.clip(post.sum() / comparisons, 1e-15, 0.5))
        if abs(new - lam) <= 1e-6 * lam:
            return new
        lam = new
    return lam


def fit_fellegi_sunter(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
                       pairs: pd.DataFrame, vectors: pd.DataFrame, *,
                       passes: Iterable[Sequence[str]] = DEFAULT_PASSES,
                       u: dict[str, dict[int, float]] | None = None,
                       max_pairs_per_pass: int = 100_000, min_pass_pairs: int = 30,
                       seed: int = 0, comparisons: float | None = None,
                       term_frequency: bool = True) -> MatchModel:
    """Unsupervised Fellegi-Sunter: u from random pairs, m from ECM within each blocking pass.

    Within one pass the blocked fields agree by construction, so recordlinkage's ECM is run on
    the pass's pairs with those fields left out, and gives m for the others; each field's m is
    the average over the passes that leave it free, weighted by the matches each pass found.
    Why not one ECM over all candidates: its u would be conditional on blocking (agreement on a
    blocked field looks common among non-matches, and the union of passes makes fields look
    negatively correlated), which underweights exactly the agreements that matter and, when
    matches are a small share of candidates, can make EM pick the wrong class entirely.
    `comparisons`: the size of the space `pairs` were drawn from, when they are the candidates
    of a sample of left records (the prior is P(match) for two random records).
    `term_frequency`: weigh exact agreement on names by the value's frequency (`TF_KINDS`).
    """
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = None if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    fields = list(vectors.columns)
    if u is None:
        u = estimate_u(L, R, fields, seed=seed)
    sums: dict[str, dict[int, float]] = {f: {} for f in fields}
    totals: dict[str, float] = dict.fromkeys(fields, 0.0)
    notes: list[str] = []
    for cols, mask in pass_membership(L, R, pairs, passes).items():
        free = [f for f in fields if f not in _pass_fields(cols)]
        n = int(mask.sum())
        if not free or n < min_pass_pairs:
            continue
        sub = vectors.loc[mask, free]
        if all(sub[f].nunique() < 2 for f in free):
            continue
        fitted = fit_ecm(sub, max_pairs=max_pairs_per_pass, seed=seed)
        if fitted.implausible_fields():
            notes.append("+".join(cols))
            continue
        found = fitted.prior * n
        for f in free:
            totals[f] += found
            for level, m in fitted.m[f].items():
                sums[f][level] = sums[f].get(level, 0.0) + found * m
    missing = [f for f in fields if totals[f] <= 0]
    if missing:  # fields no pass could estimate: one ECM over all candidates
        fitted = fit_ecm(vectors, max_pairs=max_pairs_per_pass, seed=seed)
        for f in missing:
            totals[f] = 1.0
            sums[f] = dict(fitted.m[f])
    m_all: dict[str, dict[int, float]] = {}
    weights: dict[str, dict[int, float]] = {}
    for f in fields:
        m_all[f], weights[f] = {}, {}
        # m and u both conditional on the field being present in both records; m smoothed
        # with one pseudo-match per level (a level never seen among a few hundred matches is
        # rare, not impossible), negligible once thousands of matches are found
        levels = [lvl for lvl in u[f] if lvl != MISSING]
        found_f = totals[f] if f not in missing else 1000.0
        counts = {lvl: sums[f].get(lvl, 0.0) / totals[f] * found_f for lvl in levels}
        norm = sum(counts.values()) + M_PSEUDO * len(levels)
        u_norm = sum(u[f][lvl] for lvl in levels) or 1.0
        for level, uu in u[f].items():
            if level == MISSING:
                m_all[f][level], weights[f][level] = 0.0, 0.0
                continue
            m = float(np.clip((counts[level] + M_PSEUDO) / norm, 1e-6, 1.0))
            m_all[f][level] = m
            weights[f][level] = math.log2(m / (uu / u_norm))
    tf = {}
    for f in fields:
        top = TOP_LEVEL.get(field_kind(f) or "", 2)
        present = sum(uu for lvl, uu in u[f].items() if lvl != MISSING)
        if term_frequency and field_kind(f) in TF_KINDS and top in u[f] and present > 0:
            tf[f] = u[f][top] / present
    model = MatchModel(fields=tuple(fields), level_weights=weights, prior=0.5, method="ecm",
                       m=m_all, u=u, notes=notes, tf=tf)
    space = L.n * (L.n - 1) / 2 if R is None else float(L.n) * R.n
    model.prior = estimate_prior(pair_weights(model, L, R, pairs, vectors),
                                 comparisons or space)
    return model


def fit_model(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
              pairs: pd.DataFrame, vectors: pd.DataFrame, *, labels: np.ndarray | None = None,
              method: str = "ecm", passes: Iterable[Sequence[str]] = DEFAULT_PASSES,
              **kwargs: Any) -> MatchModel:
    """`ecm` (default: `fit_fellegi_sunter`), `logistic` (needs labels) or `auto` (logistic
    when there are >= 200 labelled matches and non-matches, else ecm)."""
    if method == "auto":
        enough = labels is not None and min(int((labels == 1).sum()),
                                            int((labels == 0).sum())) >= 200
        method = "logistic" if enough else "ecm"
    if method == "ecm":
        return fit_fellegi_sunter(left, right, pairs, vectors, passes=passes, **kwargs)
    if method == "logistic":
        if labels is None:
            raise ValueError("logistic fit needs labels")
        return fit_logistic(vectors, labels, **kwargs)
    raise ValueError(f"unknown method {method!r}")


def nhs_labels(left: pd.DataFrame, right: pd.DataFrame | None, pairs: pd.DataFrame,
               column_name: str = "person_id") -> np.ndarray | None:
    """Free labels from the NHS-number pseudonym: 1 equal, 0 different, -1 unknown; None if absent.
    """
    r = left if right is None else right
    if column_name not in left.columns or column_name not in r.columns:
        return None
    a = left[column_name].to_numpy(dtype=object)[pairs["left"].to_numpy()]
    b = r[column_name].to_numpy(dtype=object)[pairs["right"].to_numpy()]
    known = pd.notna(a) & pd.notna(b)
    return np.where(known, (a == b).astype(np.int8), -1).astype(np.int8)


# --------------------------------------------------------------------------------------------
# Decisions

def one_to_one(left: np.ndarray, right: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Greedy one-to-one assignment by weight (ties by position): boolean mask of chosen pairs.

    Vectorised as rounds: a pair that is the best remaining pair of both its records is chosen,
    the records are removed, repeat. This selects exactly what sequential greedy would.
    """
    n = len(weight)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen
    order = np.lexsort((right, left, -np.asarray(weight, dtype=np.float64)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    _, lcode = np.unique(left, return_inverse=True)
    _, rcode = np.unique(right, return_inverse=True)
    alive = np.arange(n)
    while len(alive):
        r, lc, rc = rank[alive], lcode[alive], rcode[alive]
        best_l = np.full(lcode.max() + 1, n, dtype=np.int64)
        best_r = np.full(rcode.max() + 1, n, dtype=np.int64)
        np.minimum.at(best_l, lc, r)
        np.minimum.at(best_r, rc, r)
        win = (best_l[lc] == r) & (best_r[rc] == r)
        winners = alive[win]
        chosen[winners] = True
        used_l = np.zeros(lcode.max() + 1, dtype=bool)
        used_r = np.zeros(rcode.max() + 1, dtype=bool)
        used_l[lcode[winners]] = True
        used_r[rcode[winners]] = True
        alive = alive[~(used_l[lc] | used_r[rc])]
    return chosen


def best_right(left: np.ndarray, right: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each left record's highest-weight pair (ties by position): boolean mask of chosen pairs."""
    chosen = np.zeros(len(weight), dtype=bool)
    if len(weight) == 0:
        return chosen
    order = np.lexsort((right, -np.asarray(weight, dtype=np.float64), left))
    first = np.concatenate(([True], left[order][1:] != left[order][:-1]))
    chosen[order[first]] = True
    return chosen


def clusters(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected components of the graph of pairs: a cluster label for each of `n` records."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def cluster_pairs(labels: np.ndarray, max_cluster: int = 1000) -> pd.DataFrame:
    """Every pair (left < right) of records sharing a cluster label, sorted; clusters larger
    than `max_cluster` are left out (their pairs would be quadratic; review them instead)."""
    counts = np.bincount(labels)
    keep = (counts[labels] > 1) & (counts[labels] <= max_cluster)
    keys = np.where(keep, labels + 1, 0).astype(np.int64)
    a, b, _ = block_pairs(keys, None, max_block_pairs=max_cluster * max_cluster)
    order = np.lexsort((b, a))
    return pd.DataFrame({"left": a[order], "right": b[order]})


@dataclass
class LinkResult:
    """Outcome of `link`/`dedupe`; `left`/`right` are positions in the frames given.

    `matches` and `review` have columns left, right, weight, probability. For `dedupe`,
    `matches` are the direct links (pairs at or above `upper`) and `clusters` labels every record.
    """

    matches: pd.DataFrame
    review: pd.DataFrame
    model: MatchModel
    blocking: BlockingStats
    clusters: np.ndarray | None = None
    scored: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out = {"candidate_pairs": self.blocking.pairs, "matches": len(self.matches),
               "review": len(self.review)}
        if self.clusters is not None:
            out["clusters"] = int(len(np.unique(self.clusters)))
        return out


def score(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
          pairs: pd.DataFrame, model: MatchModel) -> pd.DataFrame:
    """Pairs with their match weight and probability under `model`."""
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = None if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    vectors = compare(L, R, pairs, fields=model.fields)
    w = pair_weights(model, L, R, pairs, vectors)
    return pd.DataFrame({"left": pairs["left"].to_numpy(), "right": pairs["right"].to_numpy(),
                         "weight": w, "probability": model.probability(w)})


PARTITION_PAIRS = 4_000_000  # candidate pairs per partition: bounds memory, feeds the threads


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _partitions(plan: BlockingPlan, partition_pairs: int) -> list[np.ndarray]:
    """Left row ranges with about `partition_pairs` candidate pairs each."""
    k = max(1, min(plan.n_left, math.ceil(plan.estimated_pairs / max(1, partition_pairs))))
    bounds = np.linspace(0, plan.n_left, k + 1).astype(np.int64)
    parts = [np.arange(lo, hi, dtype=np.int64) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                 strict=True) if hi > lo]
    return parts or [np.zeros(0, dtype=np.int64)]


def _scored_frame(L: Encoded, R: Encoded | None, pairs: pd.DataFrame, model: MatchModel,
                  vectors: pd.DataFrame, lower: float | None) -> pd.DataFrame:
    w = pair_weights(model, L, R, pairs, vectors)
    p = model.probability(w)
    keep = np.ones(len(p), dtype=bool) if lower is None else p >= lower
    return pd.DataFrame({"left": pairs["left"].to_numpy()[keep],
                         "right": pairs["right"].to_numpy()[keep], "weight": w[keep],
                         "probability": p[keep]})


def _prepare(left: pd.DataFrame, right: pd.DataFrame | None, passes: Iterable[Sequence[str]],
             model: MatchModel | None, method: str, max_block_pairs: int, max_pairs: int,
             *, lower: float | None = None, partition_pairs: int = PARTITION_PAIRS,
             workers: int | None = None, seed: int = 0,
             progress: Callable[[str], None] | None = None,
             ) -> tuple[pd.DataFrame, MatchModel, BlockingStats]:
    """Scored candidate pairs (only those with probability >= `lower` unless it is None).

    Blocking is planned once on the whole inputs; the left records are then taken one
    partition at a time (about `partition_pairs` candidate pairs each), `workers` partitions at
    once in threads (numpy releases the GIL in the heavy steps). A model not given is fitted on
    the candidates of one partition's worth of randomly chosen left records (all of them when
    one partition holds everything), then scores every partition, so decisions do not depend
    on the partitioning. `progress` is told what was done, step by step (counts only).
    """
    say = progress or (lambda _message: None)
    passes = tuple(tuple(p) for p in passes)
    L = Encoded(left)
    R = None if right is None else Encoded(right)
    stats = BlockingStats()
    plan = plan_blocking(L, R, passes, max_block_pairs=max_block_pairs, stats=stats)
    parts = _partitions(plan, partition_pairs)
    say(f"blocking planned: {len(plan.passes)} passes, at most {plan.estimated_pairs:,} "
        f"candidate pairs, {len(parts)} partition(s)")
    fields = compared_fields(L, L if R is None else R)
    done: pd.DataFrame | None = None
    if model is None:
        whole = len(parts) == 1
        rows = None if whole else np.sort(np.random.default_rng(seed).choice(
            plan.n_left, size=len(parts[0]), replace=False))
        sample_stats = BlockingStats()
        sample_plan = plan if whole else dataclasses.replace(plan, stats=sample_stats)
        pairs = pairs_for_rows(sample_plan, rows, max_pairs=max_pairs)
        vectors = compare(L, R, pairs, fields=fields)
        if len(pairs) == 0:  # nothing to fit on, nothing to decide
            model = MatchModel(fields=tuple(fields), prior=1e-9, method="none",
                               level_weights={f: {} for f in fields})
        else:
            labels = nhs_labels(left, right, pairs) if method in ("auto", "logistic") else None
            extra: dict[str, Any] = {}
            if not whole and method != "logistic":
                n_rows = len(rows) if rows is not None else plan.n_left
                extra["comparisons"] = (n_rows * (plan.n_left - 1) / 2 if R is None
                                        else float(n_rows) * plan.n_right)
            model = fit_model(L, R, pairs, vectors, labels=labels, method=method,
                              passes=passes, **extra)
            say(f"model fitted ({model.method}) on {len(pairs):,} candidate pairs")
        if whole:
            done = _scored_frame(L, R, pairs, model, vectors, lower)
            del vectors
    if done is None:
        fitted = model
        finished = [0]
        lock = threading.Lock()

        def one(rows: np.ndarray) -> pd.DataFrame:
            pairs = pairs_for_rows(plan, rows, max_pairs=max_pairs)
            scored = _scored_frame(L, R, pairs, fitted,
                                   compare(L, R, pairs, fields=fitted.fields), lower)
            with lock:
                finished[0] += 1
                say(f"partition {finished[0]}/{len(parts)} scored ({len(pairs):,} pairs)")
            return scored

        workers = workers or _default_workers()
        if workers == 1 or len(parts) == 1:
            frames = [one(rows) for rows in parts]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="haven-link") as pool:
                frames = list(pool.map(one, parts))
        done = pd.concat(frames, ignore_index=True)
    return done, model, stats


def link(left: pd.DataFrame, right: pd.DataFrame, *, upper: float = 0.9, lower: float = 0.5,
         passes: Iterable[Sequence[str]] = DEFAULT_PASSES, model: MatchModel | None = None,
         method: str = "ecm", max_block_pairs: int = 100_000, max_pairs: int = 50_000_000,
         keep_scored: bool = False, assignment: str = "one_to_one",
         partition_pairs: int = PARTITION_PAIRS, workers: int | None = None,
         progress: Callable[[str], None] | None = None) -> LinkResult:
    """Two-file linkage: matches (probability >= upper) and a review band.

    `assignment`: "one_to_one" (each record in at most one pair; two files of distinct people)
    or "best_right" (each left record's best right record; many left records may share one,
    as when records of episodes are linked to a register of persons). Inputs of any size:
    the left file is taken in partitions (`partition_pairs`, `workers`: see `_prepare`).
    """
    scored, model, stats = _prepare(left, right, passes, model, method, max_block_pairs,
                                    max_pairs, lower=None if keep_scored else lower,
                                    partition_pairs=partition_pairs, workers=workers,
                                    progress=progress)
    warnings = _model_warnings(model)
    if warnings:
        scored_out = scored if keep_scored else None
        return LinkResult(matches=scored.iloc[:0], review=scored.iloc[:0], model=model,
                          blocking=stats, scored=scored_out, warnings=warnings)
    eligible = scored[scored["probability"] >= lower]
    pick = {"one_to_one": one_to_one, "best_right": best_right}.get(assignment)
    if pick is None:
        raise ValueError(f"unknown assignment {assignment!r}")
    chosen = eligible[pick(eligible["left"].to_numpy(), eligible["right"].to_numpy(),
                           eligible["weight"].to_numpy())]
    matches = chosen[chosen["probability"] >= upper].reset_index(drop=True)
    review = chosen[chosen["probability"] < upper].reset_index(drop=True)
    return LinkResult(matches=matches, review=review, model=model, blocking=stats,
                      scored=scored if keep_scored else None, warnings=warnings)


def dedupe(frame: pd.DataFrame, *, upper: float = 0.9, lower: float = 0.5,
           passes: Iterable[Sequence[str]] = DEFAULT_PASSES, model: MatchModel | None = None,
           method: str = "ecm", max_block_pairs: int = 100_000, max_pairs: int = 50_000_000,
           keep_scored: bool = False, partition_pairs: int = PARTITION_PAIRS,
           workers: int | None = None, progress: Callable[[str], None] | None = None
           ) -> LinkResult:
    """Deduplication: clusters of records joined by pairs at or above `upper`, and a review band
    of pairs between `lower` and `upper` whose records ended up in different clusters."""
    scored, model, stats = _prepare(frame, None, passes, model, method, max_block_pairs,
                                    max_pairs, lower=None if keep_scored else lower,
                                    partition_pairs=partition_pairs, workers=workers,
                                    progress=progress)
    warnings = _model_warnings(model)
    if warnings:  # no plausible match class: every record is its own cluster
        return LinkResult(matches=scored.iloc[:0], review=scored.iloc[:0], model=model,
                          blocking=stats, clusters=np.arange(len(frame), dtype=np.int64),
                          scored=scored if keep_scored else None, warnings=warnings)
    strong = scored[scored["probability"] >= upper]
    labels = clusters(len(frame), strong["left"].to_numpy(), strong["right"].to_numpy())
    band = scored[(scored["probability"] >= lower) & (scored["probability"] < upper)]
    apart = labels[band["left"].to_numpy()] != labels[band["right"].to_numpy()]
    return LinkResult(matches=strong.reset_index(drop=True),
                      review=band[apart].reset_index(drop=True), model=model, blocking=stats,
                      clusters=labels, scored=scored if keep_scored else None)


def _model_warnings(model: MatchModel) -> list[str]:
    if model.method == "none":
        return ["no candidate pairs: no two records agree on any blocking pass"]
    bad = model.implausible_fields()
    if not bad:
        return []
    return [f"no plausible match class (agreement on {', '.join(bad)} made a match less "
            "likely): no links made; do the inputs share any people?"]


__all__ = [
    "DEFAULT_PASSES", "BlockingStats", "Encoded", "LinkResult", "MatchModel", "best_right",
    "block_pairs",
    "candidate_pairs", "cluster_pairs", "clusters", "compare", "dedupe", "estimate_prior",
    "estimate_u", "fit_ecm", "fit_fellegi_sunter", "fit_logistic", "fit_model", "link",
    "nhs_labels", "one_to_one", "pair_weights", "pass_membership", "random_pairs", "score",
    "term_frequency_adjustment", "usable_passes",
]
