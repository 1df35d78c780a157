"""Aggregates of the current run, published through `governance.suppression`.

Counts are taken with NumPy over the run's codes; what is shown is governance's rule
(`policies/suppression.json`, or an IG lead's override): counts 1-7 suppressed, others rounded
to the nearest 5, and secondary suppression so that no suppressed count can be recovered from
the totals published beside it. By one dimension the cells are suppressed with their total
(`suppress`); by two, the cells with their row, column and grand totals (`suppress_grid`).
Haven holds one area's data, never a nation's, so every count is below national level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from api.scored_run import AGE_BANDS, SEXES, TIERS, Release
from governance.suppression import Rule, suppress, suppress_grid

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


def _figure(shown: Any, rule: Rule) -> dict[str, Any]:
    hidden = shown == rule.symbol
    return {"count": None if hidden else int(shown), "suppressed": bool(hidden)}


def rule_json(rule: Rule) -> dict[str, Any]:
    return {"suppressed": f"{rule.suppress_from}-{rule.suppress_to}",
            "rounded_to": rule.round_to, "secondary": "rows, columns and totals"}


def aggregate(release: Release, rows: np.ndarray, by: Sequence[str], rule: Rule
              ) -> dict[str, Any]:
    """Cells, margins and total of the persons at `rows` (by one or two dimensions), as
    published."""
    by = list(by)
    true = count(release, rows, by)
    margins: dict[str, list[dict[str, Any]]] = {}
    if len(by) == 1:
        shown = suppress({key[0]: n for key, n in true.items()}, rule)
        total = _figure(shown.pop("total"), rule)
        cells = [{by[0]: label, **_figure(value, rule)} for label, value in sorted(shown.items())]
        return {"by": by, "cells": cells, "margins": margins, "total": total,
                "rule": rule_json(rule)}
    table = pd.Series(true, dtype="int64")
    grid_true = table.unstack(fill_value=0) if len(table) else pd.DataFrame(dtype="int64")
    grid = suppress_grid(grid_true, rule)
    cells = []
    shown_cells = grid.cells.to_numpy()
    zero = grid_true.reindex(index=grid.cells.index, columns=grid.cells.columns).to_numpy() == 0
    for i, row_label in enumerate(grid.cells.index):
        for j, column_label in enumerate(grid.cells.columns):
            value = shown_cells[i, j]
            if zero[i, j] and value != rule.symbol:
                continue  # a true zero, not hidden: left out
            cells.append({by[0]: row_label, by[1]: column_label, **_figure(value, rule)})
    for name, shown in ((by[0], grid.rows), (by[1], grid.columns)):
        margins[name] = [{name: label, **_figure(value, rule)}
                         for label, value in sorted(shown.items())]
    return {"by": by, "cells": cells, "margins": margins, "total": _figure(grid.total, rule),
            "rule": rule_json(rule)}
