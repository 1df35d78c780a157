"""Blocking: candidate pairs, the union of passes of equal keyed values, joined vectorised and
planned once on the whole inputs, so that any partition of left records yields its exact share."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from linkage.probabilistic.encoded import Encoded, compared_fields, pass_columns
from linkage.sorted_search import search_sorted

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
    # the surname within the postcode district: a record whose postcode is mistyped in its
    # last characters and whose forename, date of birth and street are also wrong or missing
    # (FEBRL1's rec-264: found by no other pass)
    ("surname", "postcode__district"),
    ("identifier",),
    ("address", "surname__ph"),
    ("postcode", "address"),
    # further address parts (`--field address=... --field address=...`): each with a name or
    # the postcode, and the first two together, so a record whose names, date and postcode are
    # all corrupted is still found through its address (FEBRL: street + suburb, as Splink
    # blocks); passes whose columns are absent are skipped
    ("address", "forename__ph"),
    ("address_2", "surname__ph"),
    ("address_2", "forename__ph"),
    ("postcode", "address_2"),
    ("address_2", "address_4"),
    ("address", "address_2"),
)


@dataclass
class BlockingStats:
    """What blocking did: pairs per pass (before union), blocks skipped as oversized, total."""

    per_pass: dict[str, int] = field(default_factory=dict)
    skipped_blocks: dict[str, int] = field(default_factory=dict)
    pairs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


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
              if all(left.has(c) and other.has(c) for c in pass_columns(cols))]
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
                  max_block_pairs: int = 100_000, stats: BlockingStats | None = None,
                  right_totals: Sequence[np.ndarray] | None = None) -> BlockingPlan:
    """Keys and right-side groups of every usable pass, oversized blocks removed.

    `right_totals` (per usable pass, per left record: the right records sharing its key in
    the whole right side, `key_counts` summed over its parts) sizes blocks when `right` is one
    part of a larger right side, so a block is oversized by the whole's count, not the part's.
    """
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
        elif right_totals is not None:
            keys = lu
            sizes = lc * right_totals[len(lefts)][lgroups[0][lgroups[2]]]
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


def _counts_in(keys: np.ndarray, groups: Groups) -> np.ndarray:
    """Per record, the size of the group (of `groups`) its non-zero key falls in, else 0."""
    _, unique, _, counts = groups
    if len(unique) == 0:
        return np.zeros(len(keys), dtype=np.int64)
    at = np.minimum(search_sorted(unique, keys), len(unique) - 1)
    return np.where((keys != 0) & (unique[at] == keys), counts[at], 0)


def key_counts(left_keys: np.ndarray, right_keys: np.ndarray) -> np.ndarray:
    """Per left record, how many right records share its (non-zero) key."""
    return _counts_in(left_keys, _groups(right_keys))


@dataclass(frozen=True)
class KeyTally:
    """A right side's distinct non-zero keys of one pass (sorted) and how many records carry
    each: what `key_counts` needs of the right side, independent of any left side, so a
    right side read in parts is tallied once and any later left side counted against it."""

    keys: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, right_keys: np.ndarray) -> KeyTally:
        """The tally of one part's pass keys (0 = missing, not counted)."""
        _, unique, _, counts = _groups(right_keys)
        return cls(unique, counts)

    @classmethod
    def merged(cls, parts: Sequence[KeyTally]) -> KeyTally:
        """The tally of a right side made of `parts` (a key may be in several)."""
        if not parts:
            return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        keys = np.concatenate([p.keys for p in parts])
        unique, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([p.counts for p in parts]),
                             minlength=len(unique))
        return cls(unique, counts.astype(np.int64))

    def counts_for(self, left_keys: np.ndarray) -> np.ndarray:
        """Per left record, the right records sharing its non-zero key (`key_counts`)."""
        empty = np.zeros(0, dtype=np.int64)
        return _counts_in(left_keys, (empty, self.keys, empty, self.counts))


def pair_bounds(plan: BlockingPlan) -> np.ndarray:
    """Per left record, the sum over passes of the right block its key falls in: an upper
    bound of its candidate pairs (the union counts a pair once), read from the plan's groups
    without making a pair. Drivers cut left records into parts of a bounded pair count."""
    bounds = np.zeros(plan.n_left, dtype=np.int64)
    for keys, groups in zip(plan.left, plan.right_groups, strict=True):
        bounds += _counts_in(keys, groups)
    return bounds


def row_parts(bounds: np.ndarray, pairs: int, rows: int) -> list[np.ndarray]:
    """Consecutive left positions cut into parts of at most `rows` records and about `pairs`
    candidate pairs (by `pair_bounds`; a record over the budget makes a part of its own)."""
    parts, start, total = [], 0, 0
    for i, bound in enumerate(bounds.tolist()):
        if i > start and (i - start >= rows or total + bound > pairs):
            parts.append(np.arange(start, i, dtype=np.int64))
            start, total = i, 0
        total += bound
    if start < len(bounds):
        parts.append(np.arange(start, len(bounds), dtype=np.int64))
    return parts


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
        # each pair once, so its key (left, right) is unique: sorting the keys themselves and
        # taking them apart again is the order an argsort gives, in about a third of the time
        width = np.int64(plan.n_right)
        pair = a.astype(np.int64) * width + b
        pair.sort()
        a, b = np.divmod(pair, width)
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
