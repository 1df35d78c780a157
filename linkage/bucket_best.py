"""Each query row's best pair over the buckets of a match, folded as the buckets' results come.

A person's profiles share a bucket, so a bucket gives each query row its best pair per person
and the sum of their evidence (`best_in_part`); across buckets only the row's best pair and the
evidence summed over buckets are carried. Folding bucket by bucket holds one frame of query
rows and 16 bytes a (row, bucket) for the sums: a list of every bucket's best pairs, which the
caller used to hold, grew with query rows times buckets, and both grow with the register.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# A query's best pair over buckets: the highest weight, ties to the lowest profile position.
_ORDER = (["query", "weight", "profile"], [True, False, True])


def best_in_part(scored: pd.DataFrame, persons: int) -> pd.DataFrame:
    """Each query's best pair in one part (one bucket), with `factor` (its person's evidence)
    and `total` (the sum of every person's in the part): `scored` holds every pair of its
    queries with the part's profiles.

    The pairs are ordered (query up, weight down, ties as they came) and each (query, person)'s
    first kept in numpy, then taken from the frame once: pandas' sort and duplicate search on
    the whole frame of pairs were a third of matching's time at a million persons. The rows,
    their labels and order, and the sums are those of sorting and dropping in pandas."""
    query = scored["query"].to_numpy(dtype=np.int64)
    weight = scored["weight"].to_numpy(dtype=np.float64)
    person = scored["person"].to_numpy(dtype=np.int64)
    if np.isnan(weight).any():
        return _best_in_part_by_pandas(scored, persons)
    order = np.lexsort((-weight, query))  # stable: ties keep the order they came in
    person = person - person.min(initial=0)
    pair = query[order] * (int(person.max(initial=0)) + 1) + person[order]
    _, first = np.unique(pair, return_index=True)
    # The best pair per (query, person) speaks for that person: its factor, summed per query
    # as pandas sums a column by group; only each query's first row is taken from the frame.
    per_person = order[np.sort(first)]
    queries = query[per_person]
    factor = np.exp2(np.clip(weight[per_person], -60, 60)) / persons
    total = pd.Series(factor).groupby(queries).transform("sum").to_numpy()
    best = np.concatenate(([True], queries[1:] != queries[:-1]))[:len(queries)]
    out = scored.iloc[per_person[best]].copy()
    out["factor"] = factor[best]
    out["total"] = total[best]
    return out


def _best_in_part_by_pandas(scored: pd.DataFrame, persons: int) -> pd.DataFrame:
    """`best_in_part` by pandas' sort and duplicate search, for a part with a weight that is
    NaN (pandas puts those last; the numpy way is not written for them)."""
    scored = scored.sort_values(["query", "weight"], ascending=[True, False], kind="stable")
    per_person = scored.drop_duplicates(["query", "person"]).copy()
    per_person["factor"] = np.exp2(np.clip(per_person["weight"].to_numpy(), -60, 60)) / persons
    per_person["total"] = per_person.groupby("query")["factor"].transform("sum").to_numpy()
    return per_person.drop_duplicates("query", keep="first")


def _first_per_query(found: pd.DataFrame) -> pd.DataFrame:
    """Each query's best row of `found`, in query order."""
    columns, ascending = _ORDER
    return found.sort_values(columns, ascending=ascending, kind="stable").drop_duplicates(
        "query", keep="first")


class BestOverBuckets:
    """The parts of a match (`best_in_part`'s frames, in bucket order) folded as they come.

    With one bucket the parts are kept as they are (each query is in one part). With several,
    each query's best pair so far is kept, and each part's `total` column as it came: the
    evidence is summed at the end over every part's totals in their order, the sum pandas made
    when the parts were one frame, so the probabilities are the same to the bit.
    """

    def __init__(self, several: bool) -> None:
        self.several = several
        self.parts: list[pd.DataFrame] = []
        self.best: pd.DataFrame | None = None
        self.queries: list[np.ndarray] = []
        self.totals: list[np.ndarray] = []

    def add(self, part: pd.DataFrame) -> None:
        """Fold in the best pairs of a part, or of a bucket's parts in one frame (a query row
        at most once: a bucket's parts hold other rows)."""
        if not self.several:
            self.parts.append(part)
            return
        self.queries.append(part["query"].to_numpy(dtype=np.int64, copy=True))
        self.totals.append(part["total"].to_numpy(dtype=np.float64, copy=True))
        held = part if self.best is None else pd.concat([self.best, part], ignore_index=True)
        self.best = _first_per_query(held)

    def found(self) -> pd.DataFrame | None:
        """Each query's best pair with `factor` and `total` (its evidence over every bucket),
        in query order for several buckets; None when no part had a pair."""
        if not self.several:
            return pd.concat(self.parts, ignore_index=True) if self.parts else None
        if self.best is None:
            return None
        queries = np.concatenate(self.queries)
        summed = pd.Series(np.concatenate(self.totals)).groupby(queries, sort=True).sum()
        best = self.best.reset_index(drop=True)
        if not np.array_equal(summed.index.to_numpy(), best["query"].to_numpy(dtype=np.int64)):
            raise AssertionError("the summed evidence and the best pairs name other queries")
        return best.assign(total=summed.to_numpy())
