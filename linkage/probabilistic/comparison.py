"""Comparison: a small-integer level per field for each candidate pair (0 missing, 1 disagree,
higher = closer), from keyed hashes, Bloom-filter Dice, phonetic, name-variant and partial-date
encodings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from linkage.encodings import SEP, field_kind
from linkage.probabilistic.encoded import Encoded, compared_fields

MISSING, DIFFERENT = 0, 1

# Dice cut points on Bloom filters, per kind (a level for each cut passed).
DICE_CUTS: dict[str, tuple[float, ...]] = {
    "forename": (0.5, 0.7, 0.85),
    "surname": (0.5, 0.7, 0.85),
    "postcode": (0.7,),
    "address": (0.5, 0.7, 0.85),
    "identifier": (0.5, 0.7),
}
# Forenames that differ but are variants of one name ("Bill", "William": a shared slot of their
# keyed `nk` encodings): a level of its own between the similarity bands and exact agreement.
VARIANT_LEVEL = 5
# Highest (exact agreement) level of each kind, as `compare` assigns them.
TOP_LEVEL = {"forename": 6, "surname": 5, "date_of_birth": 4, "sex": 2, "postcode": 5,
             "address": 5, "identifier": 4}
COMPARE_CHUNK = 1 << 20


def _dice_level(lbits: tuple[np.ndarray, np.ndarray], rbits: tuple[np.ndarray, np.ndarray],
                li: np.ndarray, ri: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    lb, lpop = lbits
    rb, rpop = rbits
    if lb.shape[1] != rb.shape[1]:
        if min(lb.shape[1], rb.shape[1]) == 0:  # one side has no filter at all: no agreement
            return np.zeros(len(li), dtype=np.int8)
        raise ValueError("Bloom filters of different lengths on the two sides")
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

    def variants(col: str) -> np.ndarray:
        """Any slot of one record's variant set equal to any slot of the other's."""
        if not (L.has(col) and R.has(col)):
            return np.zeros(len(li), dtype=bool)
        a = np.take(L.bits(col)[0], li, axis=0)
        b = np.take(R.bits(col)[0], ri, axis=0)
        hit = np.zeros(len(li), dtype=bool)
        for i in range(a.shape[1]):
            ai = a[:, i]
            present = ai != 0
            for j in range(b.shape[1]):
                hit |= present & (ai == b[:, j])
        return hit

    if kind in ("forename", "surname"):
        cuts = DICE_CUTS[kind]
        level += dice(cuts)
        level = np.maximum(level, np.where(eq("ph"), 2, DIFFERENT).astype(np.int8))
        top = 2 + len(cuts)
        if kind == "forename":
            level[variants(f"{name}{SEP}nk")] = VARIANT_LEVEL
            top = TOP_LEVEL["forename"]
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


NAME_TOP = 2 + len(DICE_CUTS["forename"])  # a name's exact level before variants (5)


def _cross_name_level(L: Encoded, R: Encoded, li: np.ndarray, ri: np.ndarray, left: str,
                      right: str) -> np.ndarray:
    """Level of one record's `left` name against the other's `right` name (forename and
    surname share a key domain, so their encodings compare): exact NAME_TOP, else Dice bands
    and phonetic agreement as for names, 1 if they differ, 0 if either is missing."""
    lx, rx = L.key(left)[li], R.key(right)[ri]
    missing = (lx == 0) | (rx == 0)
    level = np.full(len(li), DIFFERENT, dtype=np.int8)
    lb, rb = f"{left}{SEP}bf", f"{right}{SEP}bf"
    if L.has(lb) and R.has(rb):
        level += _dice_level(L.bits(lb), R.bits(rb), li, ri, DICE_CUTS["forename"])
    lp, rp = f"{left}{SEP}ph", f"{right}{SEP}ph"
    if L.has(lp) and R.has(rp):
        a, b = L.key(lp)[li], R.key(rp)[ri]
        level = np.maximum(level, np.where((a == b) & (a != 0), 2, DIFFERENT).astype(np.int8))
    level[(lx == rx) & ~missing] = NAME_TOP
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
            fore, sur = out["forename"][lo:lo + len(li)], out["surname"][lo:lo + len(li)]
            a, c = L.key("forename")[li], R.key("forename")[ri]
            cross_f = _cross_name_level(L, R, li, ri, "forename", "surname")
            cross_s = _cross_name_level(L, R, li, ri, "surname", "forename")
            # each name agrees better with the other's other name, and the two forenames are
            # not the same (a forename equal to its own surname would look swapped)
            swapped = (cross_f > fore) & (cross_s > sur) & (a != c)
            # a swap is only as convincing as its weaker side (a shared surname and a forename
            # of the same Soundex is not "White Georgia" for "Grace White"), and never exact
            level = np.minimum(np.minimum(cross_f, cross_s), NAME_TOP - 1)
            for part in (fore, sur):
                part[swapped] = np.maximum(part[swapped], level[swapped])
    return pd.DataFrame(block.T, index=pairs.index, columns=names, copy=False)
