"""Small-number suppression for aggregates released for publication (rule in policies/).

Counts 1-7 are shown as suppressed and the rest rounded to the nearest 5 (below national
level). Secondary suppression: where a row or column of a table has exactly one suppressed
cell, its next smallest cell is suppressed too, so the suppressed value cannot be recovered by
subtracting the others from a total.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from policies import POLICIES_DIR


@dataclass(frozen=True)
class Rule:
    suppress_from: int = 1
    suppress_to: int = 7
    round_to: int = 5
    symbol: str = "*"

    @classmethod
    def load(cls, text: str | None = None) -> Rule:
        data = json.loads(text or (POLICIES_DIR / "suppression.json").read_text("utf-8"))
        return cls(int(data["suppress_from"]), int(data["suppress_to"]),
                   int(data["round_to"]), str(data["symbol"]))

    def hides(self, count: int) -> bool:
        return self.suppress_from <= count <= self.suppress_to

    def show(self, count: int) -> int | str:
        """One count as published: the symbol, or rounded to the nearest `round_to`."""
        if self.hides(count):
            return self.symbol
        return int(self.round_to * round(count / self.round_to))


def suppress(counts: dict[str, int], rule: Rule | None = None) -> dict[str, int | str]:
    """A one-dimensional set of counts, with the total; secondary suppression where needed."""
    rule = rule or Rule.load()
    table = pd.DataFrame({"count": pd.Series(counts, dtype="int64")})
    shown = suppress_table(table, rule)["count"].to_dict()
    shown["total"] = rule.show(int(sum(counts.values())))
    return shown


def suppress_table(table: pd.DataFrame, rule: Rule | None = None) -> pd.DataFrame:
    """A table of counts (rows x columns) as published, its row and column totals implied."""
    rule = rule or Rule.load()
    values = table.astype("int64")
    hidden = values.apply(lambda column: column.map(rule.hides))
    changed = True
    while changed:  # repeat until no row or column has a lone suppressed cell
        changed = False
        for axis in (0, 1):
            lines = hidden.T if axis == 0 else hidden
            data = values.T if axis == 0 else values
            for label in lines.index:
                line = lines.loc[label]
                if line.sum() != 1 or len(line) < 2:
                    continue
                others = data.loc[label][~line & (data.loc[label] > 0)]
                if others.empty:  # only zeros beside it: suppress one of them all the same
                    others = data.loc[label][~line]
                victim = others.idxmin()
                if axis == 0:
                    hidden.loc[victim, label] = True
                else:
                    hidden.loc[label, victim] = True
                changed = True
    shown = values.apply(lambda column: column.map(rule.show)).astype(object)
    shown[hidden] = rule.symbol
    return shown
