"""Record-level releases to a named recipient (`policies/release.json`): what a file may hold.

Recipient pseudonyms stop two recipients joining their files on the person, but every other
column joins them as well: probability to four decimals, age band, sex, conditions, reasons and
sources together single out nearly everyone. So a recipient receives only the columns its
purpose needs (`columns`, per purpose), coarsened (probability in `probability_bands`, not its
value), and `k_anonymise` then coarsens further, row by row, until every combination of
released values is shared by at least `k` persons of the file; rows it cannot bring into such
a group are left out. Two files then never link one-to-one on what they share: every value a
row carries is carried by at least k - 1 other rows of its own file. `linkable_share` states
the share of rows that may link one-to-one to another recipient's file (0), which the tests
measure. An IG lead changes the table with `haven policy set release.json FILE` (checked here,
audited).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine

from governance.policy_tables import json_object

POLICY = "release.json"
# Every column a record-level release may carry (beside the recipient's pseudonym).
RELEASABLE = ("tier", "probability_band", "practice", "age_band", "sex", "conditions_count")


@dataclass(frozen=True)
class ReleaseRule:
    """Which columns each purpose's recipients receive, how probability is banded, and k."""

    k: int = 10
    linkable_share: float = 0.0
    probability_bands: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    columns: tuple[tuple[str, tuple[str, ...]], ...] = (("commissioning", RELEASABLE),)

    @classmethod
    def load(cls, text: str | None = None, engine: Engine | None = None) -> ReleaseRule:
        """The rule from JSON `text`, else the table in force (an IG lead's override when an
        engine is given, else the shipped `policies/release.json`)."""
        if text is None:
            from governance.policy_tables import policy_text

            text = policy_text(POLICY, engine)
        return cls.from_json(json.loads(text))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReleaseRule:
        """Read and check the rule; ValueError says what is wrong."""
        try:
            k = int(data["k"])
            share = float(data["linkable_share"])
            bands = tuple(float(edge) for edge in data["probability_bands"])
            columns = tuple((str(purpose), tuple(str(c) for c in names))
                            for purpose, names in sorted(data["columns"].items()))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{POLICY}: needs k, linkable_share, probability_bands and "
                             "columns (purpose -> column names)") from exc
        if k < 2:
            raise ValueError(f"{POLICY}: k must be at least 2")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{POLICY}: linkable_share is a share, from 0 to 1")
        if any(not 0.0 < edge < 1.0 for edge in bands) or list(bands) != sorted(set(bands)):
            raise ValueError(f"{POLICY}: probability_bands are increasing edges between 0 "
                             "and 1")
        for _, names in columns:
            unknown = set(names) - set(RELEASABLE)
            if unknown or not names or len(set(names)) != len(names):
                raise ValueError(f"{POLICY}: columns are some of {', '.join(RELEASABLE)} "
                                 "(at least one), each once")
        return cls(k, share, bands, columns)

    def columns_for(self, purpose: str) -> tuple[str, ...]:
        """The columns a recipient receives for `purpose` (none for a purpose not listed)."""
        return dict(self.columns).get(purpose, ())

    def band(self, probability: float | None) -> str:
        """A probability as its band, e.g. `0.10-0.20` (`unknown` when missing)."""
        if probability is None or probability != probability:
            return "unknown"
        edges = (0.0, *self.probability_bands, 1.0)
        at = int(np.searchsorted(edges, probability, side="right")) - 1
        at = min(max(at, 0), len(edges) - 2)
        return f"{edges[at]:.2f}-{edges[at + 1]:.2f}"


def validate_release(content: str, _engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` is a usable release rule."""
    data = json_object(content, POLICY)
    ReleaseRule.from_json(data)


def k_anonymise(ladders: Mapping[str, Sequence[Sequence[str]]],
                steps: Sequence[tuple[str, int]], k: int
                ) -> tuple[dict[str, list[str]], np.ndarray]:
    """Coarsen rows until every combination of released values is shared by `k` rows.

    `ladders[column][level]` holds every row's value of the column at that level, level 0 the
    finest (each level must be a coarsening of the one before). Rows start at level 0; at each
    of `steps` (column, level), the rows whose combination is shared by fewer than k rows are
    raised to at least that level of that column. Returns the released columns and which rows
    are kept: those still in a combination of fewer than k rows after the last step are not.
    Every step's column must be one of the ladders, and there must be at least one ladder.
    """
    names = list(ladders)
    n = len(ladders[names[0]][0]) if names else 0
    if not n:
        return {name: [] for name in names}, np.zeros(0, dtype=bool)
    codes, level = {}, {}
    for name in names:  # one code per distinct value across a column's levels
        values = np.asarray([list(row) for row in ladders[name]], dtype=str)
        _, inverse = np.unique(values, return_inverse=True)
        codes[name] = inverse.reshape(values.shape)
        level[name] = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)

    def small() -> np.ndarray:
        key = np.stack([codes[name][level[name], rows] for name in names], axis=1)
        _, group, sizes = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        return sizes[group.ravel()] < k

    for name, wanted in steps:
        below = small()
        if not below.any():
            break
        level[name][below] = np.maximum(level[name][below], wanted)
    keep = ~small()
    released = {name: [ladders[name][int(lv)][i] for i, lv in enumerate(level[name])]
                for name in names}
    return released, keep
