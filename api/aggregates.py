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

from api.release import AGE_BANDS, SEXES, TIERS, Release
from governance.suppression import Rule, suppress, suppress_grid

UNKNOWN = "unknown"


def _dimension(release: Release, name: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes 0..n-1 of the rows on one single-valued dimension, with the label of each code."""
    column, labels = {
        "practice": (release.practice, release.practices),
        "age_band": (release.age_band, list(AGE_BANDS)),
        "sex": (release.sex, list(SEXES)),
        "tier": (release.tier, list(TIERS)),
    }[name]
    codes = column[rows].astype(np.int64)
    codes = np.where(codes < 0, len(labels), codes)
    return codes, [*labels, UNKNOWN]


def count(release: Release, rows: np.ndarray, by: Sequence[str]) -> dict[tuple[str, ...], int]:
    """True counts of persons per combination of `by` (combinations with nobody left out).

    A person with several conditions counts once under each when `by` includes condition.
    """
    rows = np.asarray(rows)
    condition = np.empty(0, dtype=np.int64)
    if "condition" in by:
        expanded, condition_codes = [], []
        for i in range(len(release.conditions)):
            hit = rows[(release.condition_bits[rows] >> i) & 1 == 1]
            expanded.append(hit)
            condition_codes.append(np.full(len(hit), i, dtype=np.int64))
        rows = np.concatenate(expanded) if expanded else np.empty(0, dtype=np.int64)
        condition = np.concatenate(condition_codes) if condition_codes else condition
    if not by:
        return {(): int(len(rows))}
    codes, labels = [], []
    for name in by:
        if name == "condition":
            codes.append(condition)
            labels.append(list(release.conditions))
        else:
            found, named = _dimension(release, name, rows)
            codes.append(found)
            labels.append(named)
    sizes = [len(named) for named in labels]
    flat = np.ravel_multi_index(codes, sizes) if len(rows) else np.empty(0, dtype=np.int64)
    tallies = np.bincount(flat, minlength=int(np.prod(sizes)))
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
    for row_label in grid.cells.index:
        for column_label in grid.cells.columns:
            value = grid.cells.loc[row_label, column_label]
            if grid_true.loc[row_label, column_label] == 0 and value != rule.symbol:
                continue  # a true zero, not hidden: left out
            cells.append({by[0]: row_label, by[1]: column_label, **_figure(value, rule)})
    for name, shown in ((by[0], grid.rows), (by[1], grid.columns)):
        margins[name] = [{name: label, **_figure(value, rule)}
                         for label, value in sorted(shown.items())]
    return {"by": by, "cells": cells, "margins": margins, "total": _figure(grid.total, rule),
            "rule": rule_json(rule)}
