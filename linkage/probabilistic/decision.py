"""Decisions on scored pairs: one-to-one or best-candidate assignment of two files, clusters
of one file, and `LinkResult`, what `link` and `dedupe` return."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from linkage.probabilistic.blocking import BlockingStats, block_pairs
from linkage.probabilistic.estimation import MatchModel


def one_to_one(left: np.ndarray, right: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Greedy one-to-one assignment by weight (ties by position): boolean mask of chosen pairs.

    Vectorised as rounds: a pair that is the best remaining pair of both its records is chosen,
    the records are removed, repeat. This selects exactly what sequential greedy would.
    """
    n = len(weight)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen
    order = np.lexsort((right, left, -np.asarray(weight, dtype=np.float64)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    _, lcode = np.unique(left, return_inverse=True)
    _, rcode = np.unique(right, return_inverse=True)
    alive = np.arange(n)
    while len(alive):
        r, lc, rc = rank[alive], lcode[alive], rcode[alive]
        best_l = np.full(lcode.max() + 1, n, dtype=np.int64)
        best_r = np.full(rcode.max() + 1, n, dtype=np.int64)
        np.minimum.at(best_l, lc, r)
        np.minimum.at(best_r, rc, r)
        win = (best_l[lc] == r) & (best_r[rc] == r)
        winners = alive[win]
        chosen[winners] = True
        used_l = np.zeros(lcode.max() + 1, dtype=bool)
        used_r = np.zeros(rcode.max() + 1, dtype=bool)
        used_l[lcode[winners]] = True
        used_r[rcode[winners]] = True
        alive = alive[~(used_l[lc] | used_r[rc])]
    return chosen


def best_right(left: np.ndarray, right: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each left record's highest-weight pair (ties by position): boolean mask of chosen pairs."""
    chosen = np.zeros(len(weight), dtype=bool)
    if len(weight) == 0:
        return chosen
    order = np.lexsort((right, -np.asarray(weight, dtype=np.float64), left))
    first = np.concatenate(([True], left[order][1:] != left[order][:-1]))
    chosen[order[first]] = True
    return chosen


def clusters(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected components of the graph of pairs: a cluster label for each of `n` records."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def cluster_pairs(labels: np.ndarray, max_cluster: int = 1000) -> pd.DataFrame:
    """Every pair (left < right) of records sharing a cluster label, sorted; clusters larger
    than `max_cluster` are left out (their pairs would be quadratic; review them instead)."""
    counts = np.bincount(labels)
    keep = (counts[labels] > 1) & (counts[labels] <= max_cluster)
    keys = np.where(keep, labels + 1, 0).astype(np.int64)
    a, b, _ = block_pairs(keys, None, max_block_pairs=max_cluster * max_cluster)
    order = np.lexsort((b, a))
    return pd.DataFrame({"left": a[order], "right": b[order]})


@dataclass
class LinkResult:
    """Outcome of `link`/`dedupe`; `left`/`right` are positions in the frames given.

    `matches` and `review` have columns left, right, weight, probability. For `dedupe`,
    `matches` are the direct links (pairs at or above `upper`) and `clusters` labels every record.
    """

    matches: pd.DataFrame
    review: pd.DataFrame
    model: MatchModel
    blocking: BlockingStats
    clusters: np.ndarray | None = None
    scored: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out = {"candidate_pairs": self.blocking.pairs, "matches": len(self.matches),
               "review": len(self.review)}
        if self.clusters is not None:
            out["clusters"] = int(len(np.unique(self.clusters)))
        return out
