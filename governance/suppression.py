"""Small-number suppression for counts Haven publishes (rule in `policies/suppression.json`).

Primary: a count from `suppress_from` to `suppress_to` (1-7) is shown as `symbol` (`*`); every
other count below national level is rounded to the nearest `round_to` (5), halves up; zero
stays zero. Secondary: a table is published with its totals (row, column and grand totals of a
grid; the total of a list), and each total and its parts form one equation. Wherever an
equation has exactly one hidden figure, it could be solved for, so one more is hidden: the
smallest non-zero part still shown (or, when only zeros are left, a zero, and failing that the
total), until no equation has a single unknown. The API's aggregates and the opt-out report
both publish through these functions, so the rule is applied the same way everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from policies import POLICIES_DIR

POLICY = "suppression.json"


@dataclass(frozen=True)
class Rule:
    """Which counts are hidden, and how shown counts are rounded."""

    suppress_from: int = 1
    suppress_to: int = 7
    round_to: int = 5
    symbol: str = "*"

    @classmethod
    def load(cls, text: str | None = None, engine: Engine | None = None) -> Rule:
        """The rule from JSON `text`, else the table in force (an IG lead's override, when an
        engine is given, else the shipped `policies/suppression.json`)."""
        if text is None:
            if engine is not None:
                from governance.policy_tables import policy_text

                text = policy_text(POLICY, engine)
            else:
                text = (POLICIES_DIR / POLICY).read_text(encoding="utf-8")
        return cls.from_json(json.loads(text))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rule:
        """Read the rule's fields (`suppress_min`/`suppress_max` are accepted as aliases)."""
        rule = cls(int(data.get("suppress_from", data.get("suppress_min", cls.suppress_from))),
                   int(data.get("suppress_to", data.get("suppress_max", cls.suppress_to))),
                   int(data.get("round_to", cls.round_to)), str(data.get("symbol", cls.symbol)))
        if not 1 <= rule.suppress_from <= rule.suppress_to or rule.round_to < 1:
            raise ValueError("suppression rule: need 1 <= suppress_from <= suppress_to "
                             "and round_to >= 1")
        return rule

    def hides(self, count: int) -> bool:
        return self.suppress_from <= count <= self.suppress_to

    def show(self, count: int, national: bool = False) -> int | str:
        """One count as published: the symbol, or the count rounded (exact at national level)."""
        if self.hides(count):
            return self.symbol
        if national:
            return int(count)
        return int((2 * count + self.round_to) // (2 * self.round_to) * self.round_to)

    def describe(self) -> dict[str, Any]:
        return {"suppressed": f"{self.suppress_from}-{self.suppress_to}",
                "symbol": self.symbol, "rounded_to": self.round_to,
                "secondary": "no total may be recoverable with one hidden part"}


def validate_rule(content: str, _engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` is a usable suppression rule."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise ValueError(f"{POLICY}: not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{POLICY}: expected a JSON object")
    try:
        Rule.from_json(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc


def protect(true: Mapping[Hashable, int], groups: list[tuple[Hashable, list[Hashable]]],
            rule: Rule) -> set[Hashable]:
    """The figures to hide: primary suppression, then secondary until no equation
    `total = sum(parts)` among `groups` has exactly one hidden figure."""
    hidden = {key for key, value in true.items() if rule.hides(value)}
    changed = True
    while changed:
        changed = False
        for total, parts in groups:
            unknown = [k for k in (*parts, total) if k in hidden]
            if len(unknown) != 1:
                continue
            shown = [k for k in parts if k not in hidden]
            nonzero = [k for k in shown if true[k] > 0]
            pool = nonzero or shown
            victim = min(pool, key=lambda k: (true[k], str(k))) if pool else total
            hidden.add(victim)
            changed = True
    return hidden


def suppress(counts: Mapping[str, int], rule: Rule | None = None,
             national: bool = False) -> dict[str, int | str]:
    """A list of counts as published, with its `total`; secondary suppression where needed."""
    rule = rule or Rule.load()
    true: dict[Hashable, int] = {("cell", k): int(v) for k, v in counts.items()}
    true[("total",)] = sum(true.values())
    hidden = protect(true, [(("total",), [k for k in true if k[0] == "cell"])], rule)
    shown = {k[1]: _shown(true, hidden, k, rule, national) for k in true if k[0] == "cell"}
    shown["total"] = _shown(true, hidden, ("total",), rule, national)
    return shown


@dataclass
class Grid:
    """A table of counts as published: cells, row totals, column totals and grand total."""

    cells: pd.DataFrame
    rows: pd.Series
    columns: pd.Series
    total: int | str


def suppress_grid(table: pd.DataFrame, rule: Rule | None = None,
                  national: bool = False) -> Grid:
    """A table of counts (rows x columns) as published with all its totals, suppressed
    together: no hidden cell or total can be solved for from the figures shown."""
    rule = rule or Rule.load()
    values = table.astype("int64")
    grid = values.to_numpy()  # read by position: a label lookup per cell is slow on big grids
    true: dict[Hashable, int] = {}
    groups: list[tuple[Hashable, list[Hashable]]] = []
    for i, r in enumerate(values.index):
        for j, c in enumerate(values.columns):
            true[("cell", r, c)] = int(grid[i, j])
    for i, r in enumerate(values.index):
        true[("row", r)] = int(grid[i].sum())
        groups.append((("row", r), [("cell", r, c) for c in values.columns]))
    for j, c in enumerate(values.columns):
        true[("col", c)] = int(grid[:, j].sum())
        groups.append((("col", c), [("cell", r, c) for r in values.index]))
    true[("total",)] = int(grid.sum())
    groups.append((("total",), [("row", r) for r in values.index]))
    groups.append((("total",), [("col", c) for c in values.columns]))
    hidden = protect(true, groups, rule)
    cells = pd.DataFrame(
        [[_shown(true, hidden, ("cell", r, c), rule, national) for c in values.columns]
         for r in values.index], index=values.index, columns=values.columns, dtype=object)
    return Grid(
        cells=cells,
        rows=pd.Series({r: _shown(true, hidden, ("row", r), rule, national)
                        for r in values.index}, dtype=object),
        columns=pd.Series({c: _shown(true, hidden, ("col", c), rule, national)
                           for c in values.columns}, dtype=object),
        total=_shown(true, hidden, ("total",), rule, national))


def suppress_table(table: pd.DataFrame, rule: Rule | None = None,
                   national: bool = False) -> pd.DataFrame:
    """The cells of `suppress_grid`: safe to publish beside its row, column and grand totals
    (take those from `suppress_grid` too, so they are hidden consistently)."""
    return suppress_grid(table, rule, national).cells


def _shown(true: Mapping[Hashable, int], hidden: set[Hashable], key: Hashable, rule: Rule,
           national: bool) -> int | str:
    return rule.symbol if key in hidden else rule.show(true[key], national)
