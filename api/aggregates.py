"""Aggregates of the current run with small-number suppression, primary and secondary.

Primary: a count of 1-7 is shown as suppressed; every other count below national level is
rounded to the nearest 5 (the rule is `policies/suppression.json` when present). Secondary:
an answer also carries the totals the cells add up to (each dimension's margin and the grand
total), so wherever a published total has exactly one suppressed part, the next smallest part is
suppressed too, until no suppressed cell can be recovered by subtraction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine

from api.release import AGE_BANDS, SEXES, TIERS, Release

UNKNOWN = "unknown"


@dataclass(frozen=True)
class SuppressionRule:
    """Counts from `low` to `high` are suppressed; others are rounded to `base` unless national."""

    low: int = 1
    high: int = 7
    base: int = 5

    @classmethod
    def load(cls, engine: Engine | None = None) -> SuppressionRule:
        """The rule in `policies/suppression.json` (or an IG lead's override), else the default.

        Keys understood: `suppress_min`/`suppress_max` (or `min`/`max`) and `round_to`.
        """
        try:
            from governance.policy_tables import policy_text

            data = json.loads(policy_text("suppression.json", engine))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        low = data.get("suppress_min", data.get("min", cls.low))
        high = data.get("suppress_max", data.get("max", cls.high))
        base = data.get("round_to", data.get("rounding", cls.base))
        try:
            return cls(int(low), int(high), int(base))
        except (TypeError, ValueError):
            return cls()

    def publish(self, count: int, national: bool = False) -> int | None:
        """The figure shown for a true count: None when suppressed."""
        if count == 0:
            return 0
        if self.low <= count <= self.high:
            return None
        if national or self.base <= 1:
            return count
        return int((2 * count + self.base) // (2 * self.base) * self.base)  # halves round up

    def to_json(self) -> dict[str, Any]:
        return {"suppressed": f"{self.low}-{self.high}", "rounded_to": self.base,
                "rounding": "below national level"}


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
    if "condition" in by:
        expanded, condition_codes = [], []
        for i in range(len(release.conditions)):
            hit = rows[(release.condition_bits[rows] >> i) & 1 == 1]
            expanded.append(hit)
            condition_codes.append(np.full(len(hit), i, dtype=np.int64))
        rows = np.concatenate(expanded) if expanded else np.empty(0, dtype=np.int64)
        condition = np.concatenate(condition_codes) if condition_codes \
            else np.empty(0, dtype=np.int64)
    codes, labels = [], []
    for name in by:
        if name == "condition":
            codes.append(condition)
            labels.append(list(release.conditions))
        else:
            c, lab = _dimension(release, name, rows)
            codes.append(c)
            labels.append(lab)
    if not by:
        return {(): int(len(rows))}
    sizes = [len(lab) for lab in labels]
    flat = np.ravel_multi_index(codes, sizes) if len(rows) else np.empty(0, dtype=np.int64)
    tallies = np.bincount(flat, minlength=int(np.prod(sizes)))
    out = {}
    for index in np.flatnonzero(tallies):
        parts = np.unravel_index(int(index), sizes)
        out[tuple(labels[d][int(p)] for d, p in enumerate(parts))] = int(tallies[index])
    return out


@dataclass
class _Figure:
    true: int
    shown: int | None

    @property
    def suppressed(self) -> bool:
        return self.shown is None


def protect(groups: list[tuple[_Figure, list[_Figure]]]) -> None:
    """Secondary suppression: no published total may have exactly one suppressed part."""
    changed = True
    while changed:
        changed = False
        for total, parts in groups:
            if total.suppressed:
                continue
            hidden = [p for p in parts if p.suppressed]
            if len(hidden) != 1:
                continue
            candidates = [p for p in parts if not p.suppressed and p.true > 0]
            if candidates:
                min(candidates, key=lambda p: p.true).shown = None
            else:
                total.shown = None
            changed = True


def aggregate(release: Release, rows: np.ndarray, by: Sequence[str], rule: SuppressionRule,
              national: bool) -> dict[str, Any]:
    """Cells, margins and total of the persons at `rows`, suppressed and rounded."""
    by = list(by)
    cells = {key: _Figure(n, rule.publish(n)) for key, n in count(release, rows, by).items()}
    total = _Figure(int(len(rows)), rule.publish(int(len(rows)), national=national))
    groups: list[tuple[_Figure, list[_Figure]]] = []
    margins: dict[str, dict[str, _Figure]] = {}
    if len(by) > 1:
        for d, name in enumerate(by):
            single = count(release, rows, [name])
            margins[name] = {key[0]: _Figure(n, rule.publish(n)) for key, n in single.items()}
            for label, figure in margins[name].items():
                groups.append((figure, [c for k, c in cells.items() if k[d] == label]))
            groups.append((total, list(margins[name].values())))
    else:
        groups.append((total, list(cells.values())))
    protect(groups)

    def shown(figure: _Figure) -> dict[str, Any]:
        return {"count": figure.shown, "suppressed": figure.suppressed}

    return {
        "by": by,
        "cells": [{**dict(zip(by, key, strict=True)), **shown(figure)}
                  for key, figure in sorted(cells.items())],
        "margins": {name: [{name: label, **shown(figure)}
                           for label, figure in sorted(values.items())]
                    for name, values in margins.items()},
        "total": shown(total),
        "rule": rule.to_json(),
    }
