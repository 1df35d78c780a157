"""Bootstrap spread of a model's headline figures, so a real difference is told from noise.

`bootstrap_intervals(y, models, resamples, seed)` draws `resamples` bootstrap resamples of the
persons (one draw of counts per person, shared by every model: the resamples are paired) and
works out, on each, AUROC, calibration slope and PPV in the top 5% for every model. It returns
per model and figure the estimate on all persons, the 2.5th-97.5th percentile interval and the
standard deviation over resamples; and, for each candidate against the chosen model, the same for
the difference (candidate minus chosen) and the share of resamples in which the candidate did
better. Deterministic given the seed: the draws come from `numpy.random.default_rng(seed)` over
the persons in the order given (the caller passes a stable order), never from key material.

A resample is a vector of counts (how often each person was drawn), so every figure is computed
in linear time from one sort made up front: AUROC from weighted ranks, the slope by weighted
Newton steps, PPV from the weighted top of the ranking.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np
import pandas as pd
from scipy import special

from stratify.models import logit

FIGURES = ("auroc", "calibration_slope", "ppv_top5")
RESAMPLES = 200
TOP = 0.05
LEVEL = 0.95
# What a second model worked on at once adds to the process's resident memory, a person:
# its arrays (log-odds, tie groups, the ranking, a resample's counts, the Newton step's
# buffers: 80 bytes by numpy's own count) and what the allocator keeps for a second thread
# (the report at 898,901 persons rose 127 MB).
MODEL_BYTES = 145
# What working on a second model at once may add: it halves the time on two cores (1M
# persons, 4 models and the chosen: 19.0 s -> 8.5 s for 10 resamples), but a second set of a
# whole population's arrays would make memory grow with the population again (issue #12).
PARALLEL_BYTES = 192 << 20


class _Ranked:
    """One model's probabilities, sorted once for every resample's figures."""

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.y = y
        self.z = logit(p)
        _, self.tie = np.unique(p, return_inverse=True)  # tie group of each person, ascending
        self.groups = int(self.tie.max()) + 1 if len(p) else 0
        self.desc = np.argsort(-p, kind="stable")  # as evaluate.top_share ranks

    def auroc(self, w: np.ndarray) -> float:
        """Weighted Mann-Whitney AUROC (ties count half)."""
        pos = np.bincount(self.tie, weights=w * self.y, minlength=self.groups)
        neg = np.bincount(self.tie, weights=w * (1 - self.y), minlength=self.groups)
        total = pos.sum() * neg.sum()
        if total == 0:
            return float("nan")
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / total)

    def slope(self, w: np.ndarray) -> float:
        """Calibration slope: b of y ~ a + b logit(p), weighted maximum likelihood.

        Each Newton step's products are written into five arrays made once per call, not
        new arrays per product (a few hundred a resample, each a whole population's, whose
        making was most of the time): the same operations in the same order, so the same
        values to the bit."""
        positives = float((w * self.y).sum())
        if positives == 0 or positives == float(w.sum()):
            return float("nan")
        z, y = self.z, self.y
        mu, r, v, vz, spare = (np.empty_like(z) for _ in range(5))
        a, b = 0.0, 1.0
        for _ in range(50):
            np.multiply(z, b, out=spare)
            np.add(spare, a, out=spare)
            special.expit(spare, out=mu)                      # mu = expit(a + b z)
            np.subtract(y, mu, out=r)
            np.multiply(w, r, out=r)                          # r = w (y - mu)
            np.multiply(w, mu, out=v)
            np.subtract(1, mu, out=spare)
            np.multiply(v, spare, out=v)                      # v = w mu (1 - mu)
            np.multiply(v, z, out=vz)
            cross = vz.sum()
            g = np.array([r.sum(), np.multiply(r, z, out=spare).sum()])
            h = np.array([[v.sum(), cross], [cross, np.multiply(vz, z, out=spare).sum()]])
            try:
                step = np.linalg.solve(h, g)
            except np.linalg.LinAlgError:
                return float("nan")
            a, b = a + float(step[0]), b + float(step[1])
            if np.abs(step).max() < 1e-9:
                break
        return b

    def ppv(self, w: np.ndarray, share: float = TOP) -> float:
        """Share with the outcome among the top `share` of the resample by probability."""
        k = math.ceil(share * float(w.sum()))
        if k == 0:
            return float("nan")
        ws = w[self.desc]
        before = np.cumsum(ws) - ws
        taken = np.clip(k - before, 0, ws)
        return float((taken * self.y[self.desc]).sum() / k)

    def figures(self, w: np.ndarray) -> dict[str, float]:
        return {"auroc": self.auroc(w), "calibration_slope": self.slope(w),
                "ppv_top5": self.ppv(w)}


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    kept = values[~np.isnan(values)]
    if not len(kept):
        return float("nan"), float("nan"), float("nan")
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(kept, [tail, 100 - tail])
    return float(lo), float(hi), float(kept.std(ddof=1)) if len(kept) > 1 else 0.0


def _resamples(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The counts of each of `n` persons in each of `resamples` bootstrap resamples, drawn
    from `numpy.random.default_rng(seed)` (all ones when there is no person)."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(float) if n \
            else np.ones(n)


def default_threads(persons: int) -> int:
    """Models to work on at once for `persons`: two when this process may use two cores or
    more and a second model's arrays fit in `PARALLEL_BYTES`, else one."""
    return 2 if len(os.sched_getaffinity(0)) >= 2 and persons * MODEL_BYTES <= PARALLEL_BYTES \
        else 1


class _Stopped(Exception):
    """A model's bootstrap given up because another's failed or the caller was interrupted."""


def bootstrap_intervals(y: np.ndarray, models: dict[str, np.ndarray],
                        resamples: int = RESAMPLES, seed: int = 0,
                        chosen: str = "chosen", threads: int | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(intervals, differences) over `resamples` paired bootstrap resamples; see the module
    docstring. `models` maps a name to probabilities in the order of `y`; differences are
    taken against `chosen` (left out when it is not among `models`), for every model whose
    probabilities differ from its. `threads`: models worked on at once (default:
    `default_threads`; the figures are the same whatever it is)."""
    y = np.asarray(y, dtype=float)
    if resamples < 2:
        raise ValueError("resamples: at least 2 bootstrap resamples are needed")
    for name, p in models.items():
        if len(p) != len(y):
            raise ValueError(f"models[{name!r}]: {len(p)} probabilities for {len(y)} outcomes")
    # Each model's sort and figures on every resample, each model drawing the same resamples
    # from a generator of its own with the same seed: the draws and figures are those of
    # every model at once, but memory holds `threads` models' per-person arrays, not all.
    # The models are worked on side by side (numpy lets go of the interpreter in the work).
    stop = threading.Event()

    def one(p: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        ranked = _Ranked(y, np.asarray(p, dtype=float))
        drawn = {f: np.empty(resamples) for f in FIGURES}
        for i, w in enumerate(_resamples(len(y), resamples, seed)):
            if stop.is_set():  # a resample is under a second at millions of persons
                raise _Stopped
            for figure, value in ranked.figures(w).items():
                drawn[figure][i] = value
        return ranked.figures(np.ones(len(y))), drawn

    workers = max(1, min(default_threads(len(y)) if threads is None else threads, len(models)))
    if workers == 1:  # in this thread: an interrupt stops it at once
        found = [one(p) for p in models.values()]
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="haven-bootstrap")
        try:
            futures = [pool.submit(one, p) for p in models.values()]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in futures if f.done() and f.exception()]
            if failed:  # whichever model it was, not after the ones before it finish
                raise failed[0]
            found = [f.result() for f in futures]
        finally:  # on an error or an interrupt, the other models stop at their next resample
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
    point = {name: figures for name, (figures, _) in zip(models, found, strict=True)}
    draws = {name: drawn for name, (_, drawn) in zip(models, found, strict=True)}
    rows = []
    for name in models:
        for figure in FIGURES:
            lo, hi, sd = _interval(draws[name][figure])
            rows.append({"model": name, "figure": figure, "estimate": point[name][figure],
                         "lo": lo, "hi": hi, "sd": sd, "resamples": resamples})
    differences = []
    if chosen in models:
        base = np.asarray(models[chosen], dtype=float)
        for name in models:
            if name == chosen or np.array_equal(np.asarray(models[name], dtype=float), base):
                continue
            for figure in FIGURES:
                delta = draws[name][figure] - draws[chosen][figure]
                lo, hi, sd = _interval(delta)
                kept = ~np.isnan(delta)
                if figure == "calibration_slope":  # a slope nearer 1 is better
                    better = (np.abs(draws[name][figure] - 1)
                              < np.abs(draws[chosen][figure] - 1))[kept]
                else:
                    better = delta[kept] > 0
                differences.append({
                    "model": name, "versus": chosen, "figure": figure,
                    "estimate": point[name][figure] - point[chosen][figure],
                    "lo": lo, "hi": hi, "sd": sd,
                    "share_better": float(better.mean()) if kept.any() else float("nan")})
    return pd.DataFrame(rows), pd.DataFrame(differences)
