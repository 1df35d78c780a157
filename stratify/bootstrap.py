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
Newton steps, PPV from the weighted top of the ranking. AUROC and PPV are sums of whole and
half counts, exact in floating point whatever their order; the slope's steps are always the
same operations in the same order. So the figures are the same to the bit however the work
is shared out.

Models are worked on one at a time (one model's per-person arrays held); a model whose
probabilities equal an earlier one's (the chosen model is one of the candidates) is not worked
on again. A model's resamples are worked on by this thread and `threads - 1` workers beside it
(numpy lets go of the interpreter in the work): each takes the next resample as it comes free,
drawn in turn from the one generator, and writes into arrays of its own made once (`Buffers`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
from scipy import special

from stratify.models import equal_to_earlier, logit

FIGURES = ("auroc", "calibration_slope", "ppv_top5")
RESAMPLES = 200
TOP = 0.05
LEVEL = 0.95
# What a second worker adds to the process's resident memory, a person: its `Buffers` (32
# bytes), AUROC's counts by tie group (16), the resample it holds (1) and what the allocator
# keeps for its thread. Measured at 898,901 and 2,695,369 persons: 57 and 47 bytes over a
# report's bootstrap, 58 and 54 over a model's resamples alone (docs/one-machine.md).
WORKER_BYTES = 60
# What a second worker may add: it nearly halves the time on two cores, but a second set of a
# whole population's arrays would make memory grow with the population again (issue #12);
# past this (about 3.3M persons), one worker.
PARALLEL_BYTES = 192 << 20


class Buffers:
    """Four arrays of a population's length that one worker writes a resample's figures
    into, made once and used for every resample and model it works on: made anew each
    resample, a second worker's thread kept freed arrays of its own (the allocator's arena
    for that thread), and memory rose twice what the arrays hold."""

    def __init__(self, n: int) -> None:
        self.arrays = tuple(np.empty(n) for _ in range(4))


class _Ranked:
    """One model's probabilities, sorted once for every resample's figures."""

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.y = y
        self.z = logit(p)
        _, self.tie = np.unique(p, return_inverse=True)  # tie group of each person, ascending
        self.groups = int(self.tie.max()) + 1 if len(p) else 0
        self.desc = np.argsort(-p, kind="stable")  # as evaluate.top_share ranks

    def auroc(self, w: np.ndarray, buffers: Buffers | None = None) -> float:
        """Weighted Mann-Whitney AUROC (ties count half). The weights drawn with and without
        the outcome per tie group are whole counts, so taking one from the other, and the
        sums below (of halves), are exact: the figure does not depend on their order."""
        weighted, counts, below, _ = (buffers or Buffers(len(w))).arrays
        pos = np.bincount(self.tie, weights=np.multiply(w, self.y, out=weighted),
                          minlength=self.groups)
        np.copyto(counts, w)  # as floats, written here: bincount would copy them
        neg = np.bincount(self.tie, weights=counts, minlength=self.groups)
        np.subtract(neg, pos, out=neg)
        total = pos.sum() * neg.sum()
        if total == 0:
            return float("nan")
        below = np.cumsum(neg, out=below[:self.groups])
        np.subtract(below, neg, out=below)
        np.multiply(neg, 0.5, out=neg)
        np.add(below, neg, out=below)
        return float(np.multiply(pos, below, out=below).sum() / total)

    def slope(self, w: np.ndarray, buffers: Buffers | None = None) -> float:
        """Calibration slope: b of y ~ a + b logit(p), weighted maximum likelihood.

        Each Newton step's products are written into four arrays (`buffers`), not new
        arrays per product (a few hundred a resample, each a whole population's, whose
        making was most of the time): the same operations in the same order, so the same
        values to the bit."""
        z, y = self.z, self.y
        mu, r, v, vz = (buffers or Buffers(len(w))).arrays
        positives = float(np.multiply(w, y, out=mu).sum())
        if positives == 0 or positives == float(w.sum()):
            return float("nan")
        a, b = 0.0, 1.0
        for _ in range(50):
            np.multiply(z, b, out=mu)
            np.add(mu, a, out=mu)
            special.expit(mu, out=mu)                         # mu = expit(a + b z)
            np.subtract(y, mu, out=r)
            np.multiply(w, r, out=r)                          # r = w (y - mu)
            np.multiply(w, mu, out=v)
            np.subtract(1, mu, out=vz)
            np.multiply(v, vz, out=v)                         # v = w mu (1 - mu)
            np.multiply(v, z, out=vz)
            cross = vz.sum()
            g = np.array([r.sum(), np.multiply(r, z, out=mu).sum()])
            h = np.array([[v.sum(), cross], [cross, np.multiply(vz, z, out=mu).sum()]])
            try:
                step = np.linalg.solve(h, g)
            except np.linalg.LinAlgError:
                return float("nan")
            a, b = a + float(step[0]), b + float(step[1])
            if np.abs(step).max() < 1e-9:
                break
        return b

    def ppv(self, w: np.ndarray, share: float = TOP) -> float:
        """Share with the outcome among the top `share` of the resample by probability.

        Only the top of the ranking is read: a prefix of it, doubled until its persons were
        drawn `k` times. Past it nobody is taken, and the sum is of whole counts, so it is
        the sum over the whole ranking exactly (and a whole population's arrays are not made
        for the top 5% of it)."""
        k = math.ceil(share * float(w.sum()))
        if k == 0:
            return float("nan")
        n = len(w)
        m = min(n, max(1024, 2 * math.ceil(share * n)))
        while True:
            top = self.desc[:m]
            ws = w[top].astype(np.float64)  # counts as floats: k - before may be negative
            before = np.cumsum(ws) - ws
            if m == n or before[-1] + ws[-1] >= k:
                break
            m = min(n, 2 * m)
        taken = np.clip(k - before, 0, ws)
        return float((taken * self.y[top]).sum() / k)

    def figures(self, w: np.ndarray, buffers: Buffers | None = None) -> dict[str, float]:
        """Every figure on the resample `w` (counts a person), in `buffers` if given."""
        buffers = buffers or Buffers(len(w))
        return {"auroc": self.auroc(w, buffers), "calibration_slope": self.slope(w, buffers),
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
        if not n:
            yield np.ones(n)
            continue
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        # held as bytes when they fit (a count is about 1; numpy widens each to a float
        # exactly where a figure uses it): a resample held by each worker is n bytes, not 8n
        yield counts.astype(np.uint8) if counts.max() <= np.iinfo(np.uint8).max \
            else counts.astype(float)


def default_threads(persons: int) -> int:
    """Workers on a model's resamples: two when this process may use two cores or more and
    a second worker's arrays fit in `PARALLEL_BYTES`, else one."""
    return 2 if len(os.sched_getaffinity(0)) >= 2 and persons * WORKER_BYTES <= PARALLEL_BYTES \
        else 1


def _drawn(ranked: _Ranked, n: int, resamples: int, seed: int, threads: int
           ) -> dict[str, np.ndarray]:
    """Each figure of `ranked` on each of the `resamples` resamples (`_resamples(n, ...)`).
    This thread and `threads - 1` workers each take the next resample as they come free,
    drawing it in turn (under a lock, so the draws are those of one generator in order), and
    write its figures into arrays of their own; this thread's are those the model's sorting
    freed. A worker's error is raised as soon as this thread sees it; on it, or on an
    interrupt, nothing more is begun and the workers stop after the resample they are on."""
    drawn = {figure: np.empty(resamples) for figure in FIGURES}
    draws = enumerate(_resamples(n, resamples, seed))
    taking = threading.Lock()
    stop = threading.Event()

    def take_and_work(buffers: Buffers, workers: list[Future]) -> None:
        while not stop.is_set():
            failed = [f.exception() for f in workers if f.done() and f.exception()]
            if failed:
                raise failed[0]
            with taking:
                item = next(draws, None)
            if item is None:
                return
            i, w = item
            for figure, value in ranked.figures(w, buffers).items():
                drawn[figure][i] = value

    if threads <= 1:  # in this thread alone: an interrupt stops it at once
        take_and_work(Buffers(n), [])
        return drawn
    pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="haven-bootstrap")
    try:
        workers = [pool.submit(lambda: take_and_work(Buffers(n), []))
                   for _ in range(threads - 1)]
        take_and_work(Buffers(n), workers)
        for worker in workers:
            worker.result()  # a worker's error, raised here
    finally:  # on an error or an interrupt, the workers stop after their resample
        stop.set()
        pool.shutdown(wait=True)
    return drawn


def bootstrap_intervals(y: np.ndarray, models: dict[str, np.ndarray],
                        resamples: int = RESAMPLES, seed: int = 0,
                        chosen: str = "chosen", threads: int | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(intervals, differences) over `resamples` paired bootstrap resamples; see the module
    docstring. `models` maps a name to probabilities in the order of `y`; differences are
    taken against `chosen` (left out when it is not among `models`), for every model whose
    probabilities differ from its. `threads`: workers on a model's resamples (default:
    `default_threads`; the figures are the same whatever it is)."""
    y = np.asarray(y, dtype=float)
    if resamples < 2:
        raise ValueError("resamples: at least 2 bootstrap resamples are needed")
    for name, p in models.items():
        if len(p) != len(y):
            raise ValueError(f"models[{name!r}]: {len(p)} probabilities for {len(y)} outcomes")
    workers = max(1, default_threads(len(y)) if threads is None else threads)
    # Each model drawing the same resamples from a generator of its own with the same seed:
    # the draws and figures are those of every model at once, but memory holds one model's
    # per-person arrays, not all. A model equal to one before it shares that one's figures.
    point: dict[str, dict[str, float]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    same = equal_to_earlier(models)
    for name, p in models.items():
        if name in same:
            point[name], draws[name] = point[same[name]], draws[same[name]]
            continue
        ranked = _Ranked(y, np.asarray(p, dtype=float))
        draws[name] = _drawn(ranked, len(y), resamples, seed, workers)
        point[name] = ranked.figures(np.ones(len(y)))
        del ranked
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
