"""Aggregates of the current run: the anonymous tier, published tables only.

What may be published (JSNA, the Health and Wellbeing Board) must stay safe whatever else is
published beside it, so `/aggregates` answers from a fixed set of tables, never from a query:
persons by one dimension (tier, age band, sex, long-term condition, where a person counts
under each of their conditions, number of long-term conditions, or change of tier since the last
run) on one geography (practice, PCN, locality or the whole area,
`governance.geography`), with no filters. Arbitrary practice sets and filters let a reader
difference answers until a suppressed cell is solved; a fixed set of tables can instead be
protected as one publication.

`publish` makes that publication once per run, rule and geography table: every figure of every
table (cells, each unit's total, each category's total over the area) is one figure however many
tables show it, and the equations between them are all written down: a unit's total is the sum
of its categories, a PCN's cell the sum of its practices' cells, and so up to the area; a
condition's count is at most the unit's persons. `governance.suppression.protect` hides counts
of 1-7 and then enough others that no hidden figure can be solved from everything shown
together, checked exactly (an integer programme over the whole publication). Every table is then
read from that one publication, so a figure is never shown in one table and hidden in another.

Why one dimension at a time: persons by tier on practices, by age band on practices and by tier
and age band over the area would together be a three-way table (practice x tier x age band) with
its two-way margins published, which sums alone do not describe; with one dimension per table,
every table is the sum over practices of per-practice counts, and any per-practice counts that
fit the published figures can be made from some persons, so the equations say all a reader
can learn. Two pairs of tables are the exception, each pair counting one thing two ways: by
condition and by number of conditions both count persons' condition sets, by tier and by change
of tier both count (tier, previous tier) pairs (a very high person cannot have gone down, a low
one up). For those, `publish` writes the shared counts per practice as latent figures (never
published, `protect(latent=)`) and each table's cells as sums of them: every (tier, change) pair
that can occur, and the condition sets that occur in the practice with the empty set, each
single condition and a set of each size (fewer sets than a reader may suppose, which keeps the
check on the safe side). Counts are taken with NumPy over the run's codes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.scored_run import AGE_BANDS, SEXES, TIERS, Release
from governance.geography import AREA, LEVELS, Geography
from governance.suppression import Rule, protect

UNKNOWN = "unknown"
# Persons by how many long-term conditions they have: 0, 1, 2, 3, 4 or more.
CONDITION_COUNTS = ("0", "1", "2", "3", "4+")
# Change of tier since the last run: up, same, down; new where the last run gave no tier
# (or there was none); unknown where this run's tier is unknown.
TIER_CHANGES = ("up", "same", "down", "new")


# Conditions are counted through a histogram of condition sets when it stays this small
# (persons x bins); beyond it, one pass per condition.
MASK_BINS = 1 << 22


def condition_counts(release: Release) -> list[str]:
    """The number-of-conditions categories a run can have (up to its conditions' number)."""
    return list(CONDITION_COUNTS[:min(len(release.conditions), 4) + 1])


def _number_of_conditions(bits: np.ndarray) -> np.ndarray:
    return np.minimum(np.bitwise_count(bits.astype(np.uint64)), 4).astype(np.int64)


def _tier_change(tier: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Codes into TIER_CHANGES (unknown: -1) from tier codes (TIERS order: higher first)."""
    out = np.where(tier < previous, 0, np.where(tier == previous, 1, 2)).astype(np.int64)
    out[previous < 0] = 3
    out[tier < 0] = -1
    return out


def _dimension(release: Release, name: str, rows: np.ndarray | None
               ) -> tuple[np.ndarray, list[str]]:
    """Codes 0..n-1 of the rows (None: every row) on one single-valued dimension, with the
    label of each code (unknown last)."""
    if name == "condition_count":  # every person has a number, if only 0
        bits = release.condition_bits if rows is None else release.condition_bits[rows]
        return _number_of_conditions(bits), condition_counts(release)
    if name == "tier_change":
        tier, previous = release.tier, release.previous_tier
        if rows is not None:
            tier, previous = tier[rows], previous[rows]
        codes = _tier_change(tier, previous)
        codes[codes < 0] = len(TIER_CHANGES)
        return codes, [*TIER_CHANGES, UNKNOWN]
    column, labels = {
        "practice": (release.practice, release.practices),
        "age_band": (release.age_band, list(AGE_BANDS)),
        "sex": (release.sex, list(SEXES)),
        "tier": (release.tier, list(TIERS)),
    }[name]
    codes = (column if rows is None else column[rows]).astype(np.int64)
    codes[codes < 0] = len(labels)
    return codes, [*labels, UNKNOWN]


def _by_condition(release: Release, rows: np.ndarray | None, flat: np.ndarray, size: int
                  ) -> np.ndarray:
    """Counts per (other cell `flat` of `size`, condition) of the rows (None: every row): a
    person counts once under each of their conditions. Returns a (size, conditions) array."""
    names = len(release.conditions)
    bits = release.condition_bits if rows is None else release.condition_bits[rows]
    if names and size << names <= MASK_BINS:  # one histogram of (cell, condition set)
        sets = np.bincount(flat * (1 << names) + bits, minlength=size << names)
        has = (np.arange(1 << names)[:, None] >> np.arange(names)) & 1
        return sets.reshape(size, 1 << names) @ has
    out = np.zeros((size, names), dtype=np.int64)
    for i in range(names):
        out[:, i] = np.bincount(flat, weights=(bits >> i) & 1, minlength=size).astype(np.int64)
    return out


def count(release: Release, rows: np.ndarray, by: Sequence[str]) -> dict[tuple[str, ...], int]:
    """True counts of persons per combination of `by` (combinations with nobody left out).

    A person with several conditions counts once under each when `by` includes condition.
    Counted with one `bincount` over the combined codes of the rows.
    """
    every_row = rows is release.everyone and release.live is None  # columns as they are
    rows = np.asarray(rows, dtype=np.int64)
    if not by:
        return {(): int(len(rows))}
    codes, labels = [], []
    for name in by:
        if name != "condition":
            found, named = _dimension(release, name, None if every_row else rows)
            codes.append(found)
            labels.append(named)
    sizes = [len(named) for named in labels]
    flat = np.zeros(len(rows), dtype=np.int64)
    for found, size in zip(codes, sizes, strict=True):
        flat = flat * size + found
    size = int(np.prod(sizes)) if sizes else 1
    if "condition" in by:
        tallies = _by_condition(release, None if every_row else rows, flat, size)
        where = by.index("condition")
        labels.insert(where, list(release.conditions))
        sizes.insert(where, len(release.conditions))
        order = [d for d in range(len(by)) if d != where] + [where]
        tallies = tallies.reshape([sizes[d] for d in order]).transpose(
            np.argsort(order)).ravel()
    else:
        tallies = np.bincount(flat, minlength=size)
    out = {}
    for index in np.flatnonzero(tallies):
        parts = np.unravel_index(int(index), sizes)
        out[tuple(labels[d][int(p)] for d, p in enumerate(parts))] = int(tallies[index])
    return out


DIMENSIONS = ("tier", "age_band", "sex", "condition", "condition_count", "tier_change")
GEOGRAPHIES = tuple(reversed(LEVELS))  # area, locality, pcn, practice: coarsest first


@dataclass(frozen=True)
class Publication:
    """Every figure of every published table of one run: `shown[key]` is the count as published
    (an int, or the rule's symbol), `zero` the figures that are truly zero."""

    units: dict[str, list[str]]
    categories: dict[str, list[str]]
    shown: dict[Hashable, int | str]
    zero: frozenset
    rule: Rule


def _measure(dimension: str) -> str:
    """What a table's totals count: persons, or for conditions persons-with-a-condition summed
    over conditions (a person with two counts twice)."""
    return "mentions" if dimension == "condition" else "persons"


def publish(release: Release, geography: Geography, rule: Rule) -> Publication:
    """Every published table of `release` (module docstring), suppressed as one."""
    rows = release.everyone
    categories = {"tier": [*TIERS, UNKNOWN], "age_band": [*AGE_BANDS, UNKNOWN],
                  "sex": [*SEXES, UNKNOWN], "condition": list(release.conditions),
                  "condition_count": condition_counts(release),
                  "tier_change": [*TIER_CHANGES, UNKNOWN]}
    leaf = {key[0]: n for key, n in count(release, rows, ["practice"]).items()}
    practices = sorted(leaf)
    units = {level: sorted({geography.unit(level, p) for p in practices}) for level in LEVELS}
    units["area"] = [AREA]
    true: dict[Hashable, int] = {}
    for p in practices:
        true[("persons", "practice", p)] = leaf[p]
        true[("mentions", "practice", p)] = 0
        for dimension in DIMENSIONS:
            for c in categories[dimension]:
                true[("cell", "practice", p, dimension, c)] = 0
    for dimension in DIMENSIONS:
        for (p, c), n in count(release, rows, ["practice", dimension]).items():
            true[("cell", "practice", p, dimension, c)] = n
            if dimension == "condition":
                true[("mentions", "practice", p)] += n
    groups: list[tuple[Hashable, list[Hashable]]] = []
    at_most: list[tuple[Hashable, Hashable]] = []
    for below, level in zip(LEVELS, LEVELS[1:], strict=False):
        children: dict[str, list[str]] = {u: [] for u in units[level]}
        for unit in units[below]:
            parent = geography.unit(level, unit if below == "practice" else
                                    _practice_in(geography, below, unit, practices))
            children[parent].append(unit)
        for unit, parts in children.items():
            keys = [("persons",), ("mentions",)] + [("cell", d, c) for d in DIMENSIONS
                                                     for c in categories[d]]
            for key in keys:
                name, rest = key[0], key[1:]
                total = (name, level, unit, *rest)
                true[total] = sum(true[(name, below, child, *rest)] for child in parts)
                groups.append((total, [(name, below, child, *rest) for child in parts]))
    for level in LEVELS:
        for unit in units[level]:
            for dimension in DIMENSIONS:
                parts = [("cell", level, unit, dimension, c) for c in categories[dimension]]
                groups.append(((_measure(dimension), level, unit), parts))
            at_most += [(("cell", level, unit, "condition", c), ("persons", level, unit))
                        for c in categories["condition"]]
    latent = _shared_counts(release, practices, true, groups)
    hidden = protect(true, groups, rule, at_most, latent)
    for key in latent:
        del true[key]  # never published
    shown = {key: rule.symbol if key in hidden else rule.show(value)
             for key, value in true.items()}
    return Publication(units=units, categories=categories, shown=shown,
                       zero=frozenset(k for k, v in true.items() if v == 0), rule=rule)


def _possible_changes(tier: int) -> list[int]:
    """TIER_CHANGES codes a person of this tier code can have (-1: unknown tier)."""
    if tier < 0:
        return [-1]
    return [c for c in range(len(TIER_CHANGES))
            if not (c == 0 and tier == 0) and not (c == 2 and tier == len(TIERS) - 1)]


def _shared_counts(release: Release, practices: list[str], true: dict[Hashable, int],
                   groups: list[tuple[Hashable, list[Hashable]]]) -> list[Hashable]:
    """Latent figures (module docstring) per practice, added to `true` with the equations
    making each cell of the tables that share them; returns their keys."""
    rows = release.everyone
    code = {UNKNOWN: -1, **{p: i for i, p in enumerate(release.practices)}}  # -1: no practice
    latent: list[Hashable] = []
    # (tier, change) pairs: every pair that can occur.
    pairs = [(t, c) for t in (*range(len(TIERS)), -1) for c in _possible_changes(t)]
    tier, change = release.tier[rows].astype(np.int64), _tier_change(
        release.tier[rows], release.previous_tier[rows])
    tier_labels, change_labels = [*TIERS, UNKNOWN], [*TIER_CHANGES, UNKNOWN]
    practice = release.practice[rows].astype(np.int64)
    seen: dict[tuple[int, int, int], int] = {}
    found, n = np.unique(np.stack([practice, tier, change]), axis=1, return_counts=True)
    for (at, t, c), k in zip(found.T.tolist(), n.tolist(), strict=True):
        seen[(at, t, c)] = k
    # condition sets: those that occur, the empty set, each condition alone, one of each size.
    names = len(release.conditions)
    fixed = {0, *(1 << i for i in range(names)),
             *((1 << k) - 1 for k in range(2, min(names, 4) + 1))}
    bits = release.condition_bits[rows].astype(np.int64)
    sets: dict[tuple[int, int], int] = {}
    found, n = np.unique(np.stack([practice, bits]), axis=1, return_counts=True)
    for (at, mask), k in zip(found.T.tolist(), n.tolist(), strict=True):
        sets[(at, mask)] = k
    counts = condition_counts(release)
    for p in practices:
        at = code[p]
        tier_parts: dict[str, list[Hashable]] = {t: [] for t in tier_labels}
        change_parts: dict[str, list[Hashable]] = {c: [] for c in change_labels}
        for t, c in pairs:
            key = ("latent", p, "tier_change", tier_labels[t], change_labels[c])
            true[key] = seen.get((at, t, c), 0)
            latent.append(key)
            tier_parts[tier_labels[t]].append(key)
            change_parts[change_labels[c]].append(key)
        for dimension, parts in (("tier", tier_parts), ("tier_change", change_parts)):
            groups += [(("cell", "practice", p, dimension, label), keys)
                       for label, keys in parts.items()]
        masks = sorted(fixed | {m for (q, m) in sets if q == at})
        condition_parts: dict[str, list[Hashable]] = {c: [] for c in release.conditions}
        count_parts: dict[str, list[Hashable]] = {c: [] for c in counts}
        for mask in masks:
            key = ("latent", p, "conditions", mask)
            true[key] = sets.get((at, mask), 0)
            latent.append(key)
            for i, name in enumerate(release.conditions):
                if mask >> i & 1:
                    condition_parts[name].append(key)
            count_parts[counts[min(mask.bit_count(), 4)]].append(key)
        for dimension, parts in (("condition", condition_parts),
                                 ("condition_count", count_parts)):
            groups += [(("cell", "practice", p, dimension, label), keys)
                       for label, keys in parts.items()]
    return latent


def _practice_in(geography: Geography, level: str, unit: str, practices: list[str]) -> str:
    """A practice counted in `unit` of `level` (units are named by their practices' mapping)."""
    return next(p for p in practices if geography.unit(level, p) == unit)


def _figure(publication: Publication, key: Hashable) -> dict[str, Any]:
    shown = publication.shown[key]
    hidden = shown == publication.rule.symbol
    return {"count": None if hidden else int(shown), "suppressed": bool(hidden)}


def rule_json(rule: Rule) -> dict[str, Any]:
    return {"suppressed": f"{rule.suppress_from}-{rule.suppress_to}",
            "rounded_to": rule.round_to,
            "secondary": "every table, total and geography level as one publication; no "
                         "hidden figure can be solved from the figures shown"}


def table(publication: Publication, geography: str, dimension: str) -> dict[str, Any]:
    """One published table: `dimension` on the units of `geography`, with the units' totals
    and the categories' totals over the area (one dimension when the geography is the area)."""
    measure = _measure(dimension)
    categories = publication.categories[dimension]

    def listed(key: Hashable) -> bool:  # a true zero not hidden is left out
        return key not in publication.zero or publication.shown[key] == publication.rule.symbol

    area = [{dimension: c, **_figure(publication, ("cell", "area", AREA, dimension, c))}
            for c in categories if listed(("cell", "area", AREA, dimension, c))]
    total = _figure(publication, (measure, "area", AREA))
    answer: dict[str, Any] = {"by": [dimension], "geography": geography}
    if geography == "area":
        return {**answer, "cells": area, "margins": {}, "total": total,
                "rule": rule_json(publication.rule)}
    units = publication.units[geography]
    cells = [{geography: u, dimension: c,
              **_figure(publication, ("cell", geography, u, dimension, c))}
             for u in units for c in categories
             if listed(("cell", geography, u, dimension, c))]
    margins = {geography: [{geography: u, **_figure(publication, (measure, geography, u))}
                           for u in units],
               dimension: area}
    return {"by": [geography, dimension], "geography": geography, "cells": cells,
            "margins": margins, "total": total, "rule": rule_json(publication.rule)}
