"""Publishing the analyses' count tables (journeys, costs, segments) as one protected publication.

Each analysis publishes a fixed set of two-way count tables (e.g. discharges by pathway and
locality, by pathway and month, by pathway and outcome). Tables sharing a dimension share its
totals: the discharges on pathway 1 are one figure however many tables show them, and practice
cells add up to their PCN's. So every figure of every table of one analysis goes into one
system of equations (cells to row and column totals, totals to the grand total, practices to
PCNs) and `governance.suppression.protect` hides counts of 1-7 and then enough others that no
hidden figure can be solved from everything shown, checked exactly, as `api.aggregates` does
for the risk tables. Money is published only beside a count that is shown (the same hidden
pattern, so no equation of spend has a single unknown), rounded to the nearest 1,000 pounds.
Every ratio shown beside them (spend per person, shares) is worked out from the published
figures only (`per_shown`), so it adds nothing a reader could not already work out.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import pandas as pd

from governance.suppression import Rule, protect

TOTAL = "total"
SPEND_ROUNDING = 1000


def _cell(row_dim: str, row: object, col_dim: str, col: object) -> tuple:
    return ("cell", row_dim, str(row), col_dim, str(col))


def publish_grids(tables: Mapping[str, pd.DataFrame], rule: Rule,
                  parents: Mapping[str, tuple[str, Mapping[str, str]]] | None = None
                  ) -> dict[str, pd.DataFrame]:
    """Every table as published (cells, a `total` column and a `total` row; each figure an int
    or the rule's symbol), protected together. A table's index and columns are named by their
    dimension; every table counts the same population. `parents` maps a dimension to (its
    parent dimension, child -> parent): cells and totals of the parent are sums of the child's
    wherever both dimensions are published against the same other dimension."""
    true, groups = publication_system(tables, parents)
    hidden = protect(true, groups, rule)

    def shown(key: Hashable) -> int | str:
        return rule.symbol if key in hidden else rule.show(true[key])

    out = {}
    for name, table in tables.items():
        rd, cd = _dims(name, table)
        frame = pd.DataFrame(
            [[shown(_cell(rd, r, cd, c)) for c in table.columns]
             + [shown(("margin", rd, str(r)))] for r in table.index]
            + [[shown(("margin", cd, str(c))) for c in table.columns] + [shown(("total",))]],
            index=pd.Index([*map(str, table.index), TOTAL], name=rd),
            columns=pd.Index([*map(str, table.columns), TOTAL], name=cd), dtype=object)
        out[name] = frame
    return out


def publication_system(tables: Mapping[str, pd.DataFrame],
                       parents: Mapping[str, tuple[str, Mapping[str, str]]] | None = None
                       ) -> tuple[dict[Hashable, int], list[tuple[Hashable, list[Hashable]]]]:
    """Every figure of the tables (true values) and the equations a reader holding them all
    knows: cells to row and column totals, totals to the grand total, children to parents."""
    true: dict[Hashable, int] = {("total",): -1}
    groups: list[tuple[Hashable, list[Hashable]]] = []
    grand = None
    for name, table in tables.items():
        rd, cd = _dims(name, table)
        values = table.fillna(0).astype("int64")
        rows = {r: [] for r in values.index}
        cols = {c: [] for c in values.columns}
        for r in values.index:
            for c in values.columns:
                key = _cell(rd, r, cd, c)
                true[key] = int(values.at[r, c])
                rows[r].append(key)
                cols[c].append(key)
        for r, parts in rows.items():
            true[("margin", rd, str(r))] = int(values.loc[r].sum())
            groups.append((("margin", rd, str(r)), parts))
        for c, parts in cols.items():
            true[("margin", cd, str(c))] = int(values[c].sum())
            groups.append((("margin", cd, str(c)), parts))
        groups.append((("total",), [("margin", rd, str(r)) for r in values.index]))
        groups.append((("total",), [("margin", cd, str(c)) for c in values.columns]))
        total = int(values.to_numpy().sum())
        if grand is not None and total != grand:
            raise ValueError(f"publication: table {name} counts another population")
        grand = total
    true[("total",)] = grand or 0
    for child, (parent, mapping) in (parents or {}).items():
        groups += _rollups(true, child, parent, mapping)
    return true, groups


def _dims(name: str, table: pd.DataFrame) -> tuple[str, str]:
    rd, cd = table.index.name, table.columns.name
    if not rd or not cd or rd == cd:
        raise ValueError(f"publication: table {name} needs two named, different dimensions")
    return str(rd), str(cd)


def _rollups(true: dict[Hashable, int], child: str, parent: str, mapping: Mapping[str, str]
             ) -> list[tuple[Hashable, list[Hashable]]]:
    """Equations making the parent dimension's figures sums of the child's, where both are
    published (cells against the same other dimension, and their totals)."""
    groups: list[tuple[Hashable, list[Hashable]]] = []
    keys = list(true)
    for key in keys:
        if key[0] == "margin" and key[1] == parent:
            parts = [("margin", child, c) for c, p in mapping.items() if p == key[2]
                     and ("margin", child, c) in true]
            if parts:
                groups.append((key, parts))
        if key[0] == "cell" and parent in (key[1], key[3]):
            at = 1 if key[1] == parent else 3
            parts = []
            for c, p in mapping.items():
                if p != key[at + 1]:
                    continue
                other = list(key)
                other[at], other[at + 1] = child, c
                if tuple(other) in true:
                    parts.append(tuple(other))
            if parts:
                groups.append((key, parts))
    return groups


def spend_beside(published: pd.DataFrame, spend: pd.Series, rule: Rule) -> pd.DataFrame:
    """A list of categories with persons as published (`published`, one column of a
    `publish_grids` table, `total` last) and, where that count is shown, the spend (rounded to
    the nearest 1,000 pounds) and the spend per person; else the symbol.

    The spend per person is the published spend over the published persons (`per_shown`),
    never the true spend over the true count: a mean to the pound beside a count rounded to 5
    and spend rounded to 1,000 would give the count exactly (41,000 over 20 shown, 1,969 a
    person: 21 persons). Worked from shown figures, it tells a reader nothing they could not
    work out, so the suppression check of the counts covers it."""
    rows = []
    for category, count in published.items():
        key = None if category == TOTAL else category
        money = float(spend.sum() if key is None else spend.get(key, 0.0))
        hidden = count == rule.symbol
        shown_spend = rule.symbol if hidden else int(round(money / SPEND_ROUNDING)
                                                     * SPEND_ROUNDING)
        rows.append({"category": category, "persons": count, "spend": shown_spend,
                     "spend_per_person": per_shown(shown_spend, count, rule)})
    return pd.DataFrame(rows)


def per_shown(numerator: int | str, denominator: int | str, rule: Rule,
              digits: int | None = 0) -> int | float | str:
    """A ratio of two published figures (numerator over denominator), rounded to `digits`
    decimals (0: a whole number): the symbol where either is hidden or the denominator is
    shown as 0. Only published figures go in, so the ratio adds nothing to what is shown."""
    if rule.symbol in (numerator, denominator) or not int(denominator):
        return rule.symbol
    value = int(numerator) / int(denominator)
    return int(round(value)) if digits == 0 else round(value, digits)
