"""Aggregates of the current run: the anonymous tier, published tables only.

What may be published (JSNA, the Health and Wellbeing Board) must stay safe whatever else is
published beside it, so `/aggregates` answers from a fixed set of tables, never from a query:
persons by one dimension (tier, age band, sex, or long-term condition, where a person counts
under each of their conditions) on one geography (practice, PCN, locality or the whole area,
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
can learn. Counts are taken with NumPy over the run's codes.
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


# Conditions are counted through a histogram of condition sets when it stays this small
# (persons x bins); beyond it, one pass per condition.
MASK_BINS = 1 << 22


def _dimension(release: Release, name: str, rows: np.ndarray | None
               ) -> tuple[np.ndarray, list[str]]:
    """Codes 0..n-1 of the rows (None: every row) on one single-valued dimension, with the
    label of each code (unknown last)."""
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


DIMENSIONS = ("tier", "age_band", "sex", "condition")
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
                  "sex": [*SEXES, UNKNOWN], "condition": list(release.conditions)}
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
    hidden = protect(true, groups, rule, at_most)
    shown = {key: rule.symbol if key in hidden else rule.show(value)
             for key, value in true.items()}
    return Publication(units=units, categories=categories, shown=shown,
                       zero=frozenset(k for k, v in true.items() if v == 0), rule=rule)


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
