"""The bootstrap works a model at a time on each thread (issue #12: one or two models'
per-person arrays held, not every model's), each model drawing the same resamples: its
intervals and differences must equal those of every model worked on each resample together,
bit for bit, with one thread or two, on data with tied probabilities and a candidate
identical to the chosen model. The calibration slope's Newton steps, written into buffers
made once, give the values of the same steps written out."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stratify import bootstrap
from stratify.bootstrap import FIGURES, _interval, _Ranked, bootstrap_intervals
from stratify.models import expit, logit


def _all_at_once(y: np.ndarray, models: dict[str, np.ndarray], resamples: int,
                 seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Every model's figures on each resample, the resample drawn once for all models."""
    ranked = {name: _Ranked(y, p) for name, p in models.items()}
    draws = {name: {f: np.empty(resamples) for f in FIGURES} for name in ranked}
    rng = np.random.default_rng(seed)
    for i in range(resamples):
        w = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(float)
        for name, r in ranked.items():
            for figure, value in r.figures(w).items():
                draws[name][figure][i] = value
    return draws


@pytest.mark.parametrize("threads", [1, 2])
def test_model_at_a_time_equals_every_model_at_once(threads: int) -> None:
    rng = np.random.default_rng(5)
    n = 3_000
    y = (rng.random(n) < 0.1).astype(float)
    chosen = np.round(rng.random(n) * 0.3 + 0.3 * y, 2)  # two decimals: many ties
    models = {"chosen": chosen, "other": np.clip(chosen + rng.normal(0, 0.05, n), 0.01, 0.99),
              "copy": chosen.copy(), "flat": np.full(n, 0.1)}
    intervals, differences = bootstrap_intervals(y, models, resamples=25, seed=11,
                                                 threads=threads)
    draws = _all_at_once(y, models, 25, 11)
    ones = np.ones(n)
    for row in intervals.itertuples():
        lo, hi, sd = _interval(draws[row.model][row.figure])
        point = _Ranked(y, models[row.model]).figures(ones)[row.figure]
        assert (row.lo, row.hi, row.sd) == (lo, hi, sd) or np.isnan([lo, row.lo]).all()
        assert row.estimate == point or (np.isnan(point) and np.isnan(row.estimate))
    assert set(differences["model"]) == {"other", "flat"}  # the copy differs in nothing
    for row in differences.itertuples():
        delta = draws[row.model][row.figure] - draws["chosen"][row.figure]
        lo, hi, sd = _interval(delta)
        assert (row.lo, row.hi, row.sd) == (lo, hi, sd) or np.isnan([lo, row.lo]).all()
    # a different seed gives other intervals (the comparison above can fail)
    other, _ = bootstrap_intervals(y, models, resamples=25, seed=12)
    assert not other["lo"].equals(intervals["lo"])


def test_each_model_draws_the_same_resamples() -> None:
    first = list(bootstrap._resamples(50, 3, seed=4))
    again = list(bootstrap._resamples(50, 3, seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(w.sum() == 50 for w in first) and not np.array_equal(first[0], first[1])
    assert list(bootstrap._resamples(0, 2, seed=4))[0].shape == (0,)


def _slope_written_out(ranked: _Ranked, w: np.ndarray) -> float:
    """The calibration slope's Newton steps as plain expressions (a new array a product)."""
    a, b = 0.0, 1.0
    for _ in range(50):
        mu = expit(a + b * ranked.z)
        r = w * (ranked.y - mu)
        v = w * mu * (1 - mu)
        vz = v * ranked.z
        g = np.array([r.sum(), (r * ranked.z).sum()])
        h = np.array([[v.sum(), vz.sum()], [vz.sum(), (vz * ranked.z).sum()]])
        step = np.linalg.solve(h, g)
        a, b = a + float(step[0]), b + float(step[1])
        if np.abs(step).max() < 1e-9:
            break
    return b


def test_the_slope_in_buffers_is_the_slope_written_out() -> None:
    rng = np.random.default_rng(8)
    n = 20_000
    y = (rng.random(n) < 0.12).astype(float)
    p = np.clip(rng.beta(1, 8, n) + 0.1 * y, 0.001, 0.999)
    ranked = _Ranked(y, p)
    slopes = [ranked.slope(w) for w in bootstrap._resamples(n, 5, seed=2)]
    assert slopes == [_slope_written_out(ranked, w) for w in bootstrap._resamples(n, 5, seed=2)]
    assert len(set(slopes)) == 5 and all(0.5 < s < 2 for s in slopes)


def test_a_resample_that_fails_is_raised_at_once_and_nothing_more_begun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With two workers, a resample whose figures fail is raised as soon as it is seen: no
    more of that model's resamples are begun than the workers had in hand, no later model is
    begun, and no bootstrap thread is left."""
    rng = np.random.default_rng(4)
    n, resamples = 4_000, 400
    y = (rng.random(n) < 0.1).astype(float)
    failing = np.full(n, 0.25)
    models = {"first": rng.random(n) * 0.5, "failing": failing, "third": rng.random(n) * 0.5}
    calls = {name: 0 for name in models}
    figures = _Ranked.figures

    def counted(self: _Ranked, w: np.ndarray, buffers: object = None) -> dict[str, float]:
        name = next(k for k, p in models.items() if self.z[0] == logit(p[:1])[0])
        calls[name] += 1
        if name == "failing" and calls[name] == 3:
            raise ArithmeticError("a figure failed")
        return figures(self, w, buffers)

    monkeypatch.setattr(_Ranked, "figures", counted)
    with pytest.raises(ArithmeticError, match="a figure failed"):
        bootstrap_intervals(y, models, resamples=resamples, seed=1, threads=2)
    assert calls["first"] == resamples + 1  # every resample and the point estimate
    assert 3 <= calls["failing"] <= 5 and calls["third"] == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("haven-bootstrap")]


def test_a_model_equal_to_an_earlier_one_is_worked_on_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The chosen model is one of the candidates: its figures are that candidate's, not
    worked out a second time (a fifth of a report's bootstrap)."""
    rng = np.random.default_rng(9)
    n = 2_000
    y = (rng.random(n) < 0.2).astype(float)
    blend = rng.random(n)
    models = {"rule": np.round(blend, 1).clip(0.05, 0.95), "blend": blend,
              "chosen": blend.copy()}
    made = []
    init = _Ranked.__init__

    def counted(self: _Ranked, y: np.ndarray, p: np.ndarray) -> None:
        made.append(len(p))
        init(self, y, p)

    monkeypatch.setattr(_Ranked, "__init__", counted)
    intervals, differences = bootstrap_intervals(y, models, resamples=20, seed=3, threads=1)
    assert len(made) == 2
    table = intervals.set_index(["model", "figure"])
    for figure in FIGURES:
        assert table.loc[("chosen", figure)].equals(table.loc[("blend", figure)])
    assert set(differences["model"]) == {"rule"}


def test_a_second_worker_only_while_its_arrays_fit_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers on two cores while a second one's arrays fit `PARALLEL_BYTES`, then one:
    what the second adds is bounded by the budget, not by the population."""
    fits = bootstrap.PARALLEL_BYTES // bootstrap.WORKER_BYTES
    monkeypatch.setattr(bootstrap.os, "sched_getaffinity", lambda pid: {0, 1})
    assert bootstrap.default_threads(fits) == 2
    assert bootstrap.default_threads(fits + 1) == 1
    assert 3_000_000 < fits < 3_500_000  # a three-million-person area's report: two
    monkeypatch.setattr(bootstrap.os, "sched_getaffinity", lambda pid: {0})
    assert bootstrap.default_threads(1_000) == 1
