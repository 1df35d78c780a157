"""Small-number suppression for counts Haven publishes (rule in `policies/suppression.json`).

Primary: a count from `suppress_from` to `suppress_to` (1-7) is shown as `symbol` (`*`); every
other count below national level is rounded to the nearest `round_to` (5), halves up; zero
stays zero. Secondary: a table is published with its totals (row, column and grand totals of a
grid; the total of a list), and each total and its parts form one equation. Wherever an
equation has exactly one hidden figure, it could be solved for, so one more is hidden: the
smallest non-zero part still shown (or, when only zeros are left, a zero, and failing that the
total), until no equation has a single unknown. That alone is not enough: equations combine
(two hidden cells shared by a row and a column whose totals are shown, a chain of geographies,
a total of zero forcing its hidden parts to zero), so `protect` then solves the published system
exactly, as someone holding every published figure would: for each hidden figure an integer
programme over all the equations (and any `at_most` inequalities) asks whether any other value
fits everything shown; where none does, one more figure is hidden and the check repeats. Shown
figures are taken as exact there, though they are rounded: the check gives the reader more than
is published. The API's aggregates and the opt-out report both publish through these functions,
so the rule is applied the same way everywhere.

Two published tables can be functions of the same unpublished figures (persons by condition and
by number of conditions both count condition sets; by tier and by change of tier both count
(tier, previous tier) pairs). `latent` figures stand for those: never shown, never exposed, always
unknown to the reader, and linked to the published ones by equations, so the exact check sees what
the tables together say. A publisher may give fewer latent figures than a reader could imagine
(only the combinations that occur): a solution found among fewer is still one the reader must
allow, so the check stays on the safe side.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from governance.policy_tables import json_object
from policies import POLICIES_DIR

POLICY = "suppression.json"


class PublicationUnchecked(RuntimeError):
    """The exact check of a publication could not be completed (the solver gave no answer):
    the publication is refused rather than released unchecked."""


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
    data = json_object(content, POLICY)
    try:
        Rule.from_json(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc


Equation = tuple[Hashable, list[Hashable]]


def protect(true: Mapping[Hashable, int], groups: list[Equation], rule: Rule,
            at_most: Sequence[tuple[Hashable, Hashable]] = (),
            latent: Collection[Hashable] = ()) -> set[Hashable]:
    """The figures to hide: primary suppression, then secondary until no equation
    `total = sum(parts)` among `groups` has exactly one hidden figure and no hidden figure's
    value is fixed by the figures shown (`exposed`; `at_most` pairs `(a, b)` say a <= b).
    `latent` figures (keys of `true` too) are never published: unknown from the start, never
    reported as fixed, and not in the answer."""
    unseen = frozenset(latent)
    hidden = {key for key, value in true.items() if key in unseen or rule.hides(value)}
    while True:
        _no_single_unknown(true, groups, hidden, unseen)
        found = exposed(true, groups, hidden, at_most, unseen)
        if not found:
            return hidden - unseen
        hidden.add(_victim(true, groups, hidden, at_most, found[0]))


def _smallest(true: Mapping[Hashable, int], keys: list[Hashable]) -> Hashable | None:
    """The smallest non-zero of `keys`, else a zero, else None."""
    nonzero = [k for k in keys if true[k] > 0]
    pool = nonzero or keys
    return min(pool, key=lambda k: (true[k], str(k))) if pool else None


def _no_single_unknown(true: Mapping[Hashable, int], groups: list[Equation],
                       hidden: set[Hashable], latent: frozenset = frozenset()) -> None:
    changed = True
    while changed:
        changed = False
        for total, parts in groups:
            unknown = [k for k in (*parts, total) if k in hidden]
            if len(unknown) != 1 or unknown[0] in latent:
                continue
            victim = _smallest(true, [k for k in parts if k not in hidden])
            hidden.add(total if victim is None else victim)
            changed = True


def _victim(true: Mapping[Hashable, int], groups: list[Equation], hidden: set[Hashable],
            at_most: Sequence[tuple[Hashable, Hashable]], figure: Hashable) -> Hashable:
    """A shown figure to hide so that `figure` is no longer fixed: the smallest part shown in
    one of its relations (else the total of one); failing both, the same among the relations
    of the hidden figures those reach, and so on outwards."""
    relations = [(total, list(parts)) for total, parts in groups]
    relations += [(None, [small, big]) for small, big in at_most]
    reached = frontier = {figure}
    while frontier:
        touching = [(total, parts) for total, parts in relations
                    if total in frontier or frontier.intersection(parts)]
        for pool in ([k for _, parts in touching for k in parts if k not in hidden],
                     [total for total, _ in touching
                      if total is not None and total not in hidden]):
            victim = _smallest(true, pool)
            if victim is not None:
                return victim
        frontier = {k for total, parts in touching for k in (total, *parts)
                    if k in hidden} - reached
        reached = reached | frontier
    raise ValueError("suppression: a hidden figure is fixed by nothing shown")  # pragma: no cover


def exposed(true: Mapping[Hashable, int], groups: list[Equation], hidden: set[Hashable],
            at_most: Sequence[tuple[Hashable, Hashable]] = (),
            latent: frozenset = frozenset()) -> list[Hashable]:
    """Hidden figures whose value is fixed by the shown ones, in a stable order.

    The published system: every equation `total = sum(parts)` and inequality `a <= b`, shown
    figures at their true values, hidden ones non-negative integers (at most the sum of all
    figures). Hidden figures are split into components (linked by a relation); in each, integer
    programmes look for another solution: the sum of the undecided figures is pushed up and
    down while that moves some of them, then each one left is pushed alone. A figure no
    solution moves is exposed. `latent` figures are unknowns of the system but never
    published, so never exposed (a component of latent figures alone is not checked)."""
    relations = [[(1, total)] + [(-1, part) for part in parts] for total, parts in groups]
    relations += [[(1, small), (-1, big)] for small, big in at_most]
    inequality = [False] * len(groups) + [True] * len(at_most)
    parent: dict[Hashable, Hashable] = {}

    def root(key: Hashable) -> Hashable:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for relation in relations:
        unknown = [key for _, key in relation if key in hidden]
        for key in unknown[1:]:
            parent[root(key)] = root(unknown[0])
    components: dict[Hashable, list[Hashable]] = {}
    for key in sorted(hidden, key=str):
        components.setdefault(root(key), []).append(key)
    ceiling = sum(true.values()) + 1
    found: list[Hashable] = []
    for members in components.values():
        index = {key: i for i, key in enumerate(members)}
        rows = [(relation, less) for relation, less in zip(relations, inequality, strict=True)
                if any(key in index for _, key in relation)]
        published = {i for i, key in enumerate(members) if key not in latent}
        if rows and published:  # a figure in no relation is fixed by nothing
            found += [members[i] for i in _fixed(true, members, index, rows, ceiling,
                                                 published)]
    return found


def _fixed(true: Mapping[Hashable, int], members: list[Hashable],
           index: dict[Hashable, int], rows: list[tuple[list, bool]], ceiling: int,
           checked: set[int] | None = None) -> list[int]:
    """Positions in `members` (those `checked`, else all) that no other integer solution of
    `rows` moves."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    n = len(members)
    entries: list[tuple[int, int, float]] = []
    bound = np.zeros(len(rows))
    for r, (relation, _) in enumerate(rows):
        for sign, key in relation:
            if key in index:
                entries.append((r, index[key], sign))
            else:
                bound[r] -= sign * true[key]
    at_row, at_column, signs = zip(*entries, strict=True)  # every row has a hidden figure
    matrix = csr_array((signs, (at_row, at_column)), shape=(len(rows), n))  # duplicates add
    less = np.array([flag for _, flag in rows], dtype=bool)
    lower = np.where(less, -np.inf, bound)
    constraints = LinearConstraint(matrix, lower, bound)
    truth = np.array([true[key] for key in members], dtype=float)
    box = Bounds(np.zeros(n), np.full(n, float(ceiling)))

    def moved(weights: np.ndarray, among: set[int]) -> set[int]:
        solution = milp(weights, constraints=constraints, integrality=np.ones(n), bounds=box)
        if solution.x is None:  # no answer: nothing may be published on an unchecked claim
            raise PublicationUnchecked(
                "the exact check of the hidden figures found no solution "
                f"(solver status {solution.status}); nothing is published")
        return {i for i in among if abs(solution.x[i] - truth[i]) > 0.5}

    undecided = set(range(n)) if checked is None else set(checked)
    progress = True
    while undecided and progress:
        progress = False
        for sign in (-1.0, 1.0):
            weights = np.zeros(n)
            weights[sorted(undecided)] = sign
            free = moved(weights, undecided)
            undecided -= free
            progress = progress or bool(free)
    fixed = []
    for i in sorted(undecided):
        weights = np.zeros(n)
        weights[i] = 1.0
        if not moved(-weights, {i}) and not moved(weights, {i}):
            fixed.append(i)
    return fixed


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
