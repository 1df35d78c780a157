"""Execution: `link` and `dedupe` under `LinkageSettings` - blocking planned once on the whole
inputs, a model fitted on a sample of left records, partitions scored in threads, then decided."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from linkage.probabilistic.blocking import (
    BlockingPlan,
    BlockingStats,
    pairs_for_rows,
    plan_blocking,
)
from linkage.probabilistic.comparison import compare
from linkage.probabilistic.decision import LinkResult, best_right, clusters, one_to_one
from linkage.probabilistic.encoded import Encoded, compared_fields
from linkage.probabilistic.estimation import MatchModel, fit_model, nhs_labels, resolve_method
from linkage.probabilistic.settings import LinkageSettings
from linkage.probabilistic.term_frequencies import pair_weights


def score(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
          pairs: pd.DataFrame, model: MatchModel) -> pd.DataFrame:
    """Pairs with their match weight and probability under `model`."""
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = None if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    vectors = compare(L, R, pairs, fields=model.fields)
    w = pair_weights(model, L, R, pairs, vectors)
    return pd.DataFrame({"left": pairs["left"].to_numpy(), "right": pairs["right"].to_numpy(),
                         "weight": w, "probability": model.probability(w)})


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _partitions(plan: BlockingPlan, partition_pairs: int) -> list[np.ndarray]:
    """Left row ranges with about `partition_pairs` candidate pairs each."""
    k = max(1, min(plan.n_left, math.ceil(plan.estimated_pairs / max(1, partition_pairs))))
    bounds = np.linspace(0, plan.n_left, k + 1).astype(np.int64)
    parts = [np.arange(lo, hi, dtype=np.int64) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                 strict=True) if hi > lo]
    return parts or [np.zeros(0, dtype=np.int64)]


def _scored_frame(L: Encoded, R: Encoded | None, pairs: pd.DataFrame, model: MatchModel,
                  vectors: pd.DataFrame, lower: float | None) -> pd.DataFrame:
    w = pair_weights(model, L, R, pairs, vectors)
    p = model.probability(w)
    keep = np.ones(len(p), dtype=bool) if lower is None else p >= lower
    return pd.DataFrame({"left": pairs["left"].to_numpy()[keep],
                         "right": pairs["right"].to_numpy()[keep], "weight": w[keep],
                         "probability": p[keep]})


def _prepare(left: pd.DataFrame, right: pd.DataFrame | None, settings: LinkageSettings,
             model: MatchModel | None, *, lower: float | None = None,
             progress: Callable[[str], None] | None = None,
             ) -> tuple[pd.DataFrame, MatchModel, BlockingStats]:
    """Scored candidate pairs (only those with probability >= `lower` unless it is None).

    Blocking is planned once on the whole inputs; the left records are then taken one
    partition at a time (about `settings.partition_pairs` candidate pairs each),
    `settings.workers` partitions at once in threads (numpy releases the GIL in the heavy
    steps). A model not given is fitted on the candidates of one partition's worth of randomly
    chosen left records (all of them when one partition holds everything), then scores every
    partition, so decisions do not depend on the partitioning. `progress` is told what was
    done, step by step (counts only).
    """
    say = progress or (lambda _message: None)
    passes, max_pairs = settings.passes, settings.max_pairs
    L = Encoded(left)
    R = None if right is None else Encoded(right)
    stats = BlockingStats()
    plan = plan_blocking(L, R, passes, max_block_pairs=settings.max_block_pairs, stats=stats)
    parts = _partitions(plan, settings.partition_pairs)
    say(f"blocking planned: {len(plan.passes)} passes, at most {plan.estimated_pairs:,} "
        f"candidate pairs, {len(parts)} partition(s)")
    fields = compared_fields(L, L if R is None else R)
    done: pd.DataFrame | None = None
    if model is None:
        whole = len(parts) == 1
        rows = None if whole else np.sort(np.random.default_rng(settings.seed).choice(
            plan.n_left, size=len(parts[0]), replace=False))
        sample_stats = BlockingStats()
        sample_plan = plan if whole else dataclasses.replace(plan, stats=sample_stats)
        pairs = pairs_for_rows(sample_plan, rows, max_pairs=max_pairs)
        vectors = compare(L, R, pairs, fields=fields)
        if len(pairs) == 0:  # nothing to fit on, nothing to decide
            model = MatchModel(fields=tuple(fields), prior=1e-9, method="none",
                               level_weights={f: {} for f in fields})
        else:
            labels = (nhs_labels(left, right, pairs) if settings.method in ("auto", "logistic")
                      else None)
            method = resolve_method(settings.method, labels)  # before choosing the fit's options
            extra: dict[str, Any] = {"seed": settings.seed}
            if method == "ecm":
                extra.update(settings.ecm_options())
            if not whole and method != "logistic":
                n_rows = len(rows) if rows is not None else plan.n_left
                extra["comparisons"] = (n_rows * (plan.n_left - 1) / 2 if R is None
                                        else float(n_rows) * plan.n_right)
            model = fit_model(L, R, pairs, vectors, labels=labels, method=method,
                              passes=passes, **extra)
            say(f"model fitted ({model.method}) on {len(pairs):,} candidate pairs")
        if whole:
            done = _scored_frame(L, R, pairs, model, vectors, lower)
            del vectors
    if done is None:
        fitted = model
        finished = [0]
        lock = threading.Lock()

        def one(rows: np.ndarray) -> pd.DataFrame:
            pairs = pairs_for_rows(plan, rows, max_pairs=max_pairs)
            scored = _scored_frame(L, R, pairs, fitted,
                                   compare(L, R, pairs, fields=fitted.fields), lower)
            with lock:
                finished[0] += 1
                say(f"partition {finished[0]}/{len(parts)} scored ({len(pairs):,} pairs)")
            return scored

        workers = settings.workers or _default_workers()
        if workers == 1 or len(parts) == 1:
            frames = [one(rows) for rows in parts]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="haven-link") as pool:
                frames = list(pool.map(one, parts))
        done = pd.concat(frames, ignore_index=True)
    return done, model, stats


def link(left: pd.DataFrame, right: pd.DataFrame, settings: LinkageSettings | None = None, *,
         model: MatchModel | None = None, keep_scored: bool = False,
         progress: Callable[[str], None] | None = None) -> LinkResult:
    """Two-file linkage: matches (probability >= `settings.upper`) and a review band.

    `settings.assignment`: "one_to_one" (each record in at most one pair; two files of distinct
    people) or "best_right" (each left record's best right record; many left records may share
    one, as when records of episodes are linked to a register of persons). Inputs of any size:
    the left file is taken in partitions (see `_prepare`). `model`: a fitted model to score
    with instead of fitting one; `keep_scored`: also return every scored candidate pair.
    """
    settings = settings or LinkageSettings()
    upper, lower = settings.upper, settings.lower
    scored, model, stats = _prepare(left, right, settings, model,
                                    lower=None if keep_scored else lower, progress=progress)
    warnings = _model_warnings(model)
    if warnings:
        scored_out = scored if keep_scored else None
        return LinkResult(matches=scored.iloc[:0], review=scored.iloc[:0], model=model,
                          blocking=stats, scored=scored_out, warnings=warnings)
    eligible = scored[scored["probability"] >= lower]
    pick = {"one_to_one": one_to_one, "best_right": best_right}[settings.assignment]
    chosen = eligible[pick(eligible["left"].to_numpy(), eligible["right"].to_numpy(),
                           eligible["weight"].to_numpy())]
    matches = chosen[chosen["probability"] >= upper].reset_index(drop=True)
    review = chosen[chosen["probability"] < upper].reset_index(drop=True)
    return LinkResult(matches=matches, review=review, model=model, blocking=stats,
                      scored=scored if keep_scored else None, warnings=warnings)


def dedupe(frame: pd.DataFrame, settings: LinkageSettings | None = None, *,
           model: MatchModel | None = None, keep_scored: bool = False,
           progress: Callable[[str], None] | None = None) -> LinkResult:
    """Deduplication: clusters of records joined by pairs at or above `settings.upper`, and a
    review band of pairs between `lower` and `upper` whose records ended up in different
    clusters (`settings.assignment` does not apply). `model`, `keep_scored`: as for `link`."""
    settings = settings or LinkageSettings()
    upper, lower = settings.upper, settings.lower
    scored, model, stats = _prepare(frame, None, settings, model,
                                    lower=None if keep_scored else lower, progress=progress)
    warnings = _model_warnings(model)
    if warnings:  # no plausible match class: every record is its own cluster
        return LinkResult(matches=scored.iloc[:0], review=scored.iloc[:0], model=model,
                          blocking=stats, clusters=np.arange(len(frame), dtype=np.int64),
                          scored=scored if keep_scored else None, warnings=warnings)
    strong = scored[scored["probability"] >= upper]
    labels = clusters(len(frame), strong["left"].to_numpy(), strong["right"].to_numpy())
    band = scored[(scored["probability"] >= lower) & (scored["probability"] < upper)]
    apart = labels[band["left"].to_numpy()] != labels[band["right"].to_numpy()]
    return LinkResult(matches=strong.reset_index(drop=True),
                      review=band[apart].reset_index(drop=True), model=model, blocking=stats,
                      clusters=labels, scored=scored if keep_scored else None)


def _model_warnings(model: MatchModel) -> list[str]:
    if model.method == "none":
        return ["no candidate pairs: no two records agree on any blocking pass"]
    bad = model.implausible_fields()
    if not bad:
        return []
    return [f"no plausible match class (agreement on {', '.join(bad)} made a match less "
            "likely): no links made; do the inputs share any people?"]
