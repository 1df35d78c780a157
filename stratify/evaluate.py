"""Evaluation of a run on the year after its reference date, overall and by subgroup.

Discrimination (AUROC with a DeLong 95% CI, AUPRC), accuracy (Brier), calibration (curve by
risk decile; slope and intercept from logistic recalibration), and what a team acting on the list
gets: PPV and sensitivity in the top 0.5%, 5% and 20%, events among the top 1,000, and false-
positive / false-negative rates at the tier thresholds, for every candidate model and by sex, age
band and source coverage (known to social care or not, community data or not); and the spread of
AUROC, calibration slope and PPV over paired bootstrap resamples (stratify.bootstrap), per
candidate and for each candidate's difference from the chosen model.

An evaluation is `prospective` (the run judged on the year after its own date) or a `backtest`
(stratify.backtest: the run's procedure one year earlier, judged on the year up to the run's
date, when that year after has not happened yet); `follow_up` says which the data allow.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from stratify.bootstrap import RESAMPLES, bootstrap_intervals
from stratify.features import Sources, connect
from stratify.models import equal_to_earlier, expit, logit
from stratify.outcomes import OUTCOME_MONTHS, build_outcome_flags, follow_up_complete
from stratify.progress import Progress, quiet
from stratify.scoring import ScoreRun
from stratify.sources import add_months
from stratify.tiers import TIERS

TOP_SHARES = (0.005, 0.05, 0.20)
TOP_COUNT = 1000


@dataclass
class Evaluation:
    """The figures of one evaluation; `write_report` turns it into Markdown and plots."""

    run_id: str
    at: dt.date
    outcome: str
    chosen: str
    overall: pd.DataFrame            # one row per model
    subgroups: pd.DataFrame          # one row per model x subgroup
    error_rates: pd.DataFrame        # FPR/FNR per subgroup x tier threshold (chosen model)
    calibration: dict[str, pd.DataFrame]  # per model: decile, mean predicted, observed, n
    frame: pd.DataFrame              # person-level: outcome and each model's probability
    #                                  (views of the run's arrays, not copies: read, not write)
    notes: list[str] = field(default_factory=list)
    kind: str = "prospective"        # or "backtest" (stratify.backtest)
    judged_at: dt.date | None = None  # the reference date the outcomes follow (default: at)
    months: int = OUTCOME_MONTHS
    bootstrap: pd.DataFrame = field(default_factory=pd.DataFrame)    # model x figure interval
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)  # candidate - chosen


@dataclass(frozen=True)
class FollowUp:
    """Whether the outcome year after a reference date is in the data: the window, how far
    hospital records reach, and the verdict (`outcomes.follow_up_complete`'s rule)."""

    at: dt.date
    months: int
    window_end: dt.date
    records_reach: dt.date | None
    complete: bool

    @property
    def months_observed(self) -> int:
        """Whole months of the outcome window the records cover (0 to `months`)."""
        if self.records_reach is None or self.records_reach < self.at:
            return 0
        seen = 0
        while seen < self.months and add_months(self.at, seen + 1) <= self.records_reach:
            seen += 1
        return seen


def follow_up(sources: Sources, at: dt.date,
              months: int = OUTCOME_MONTHS) -> FollowUp:
    """Is the outcome year after `at` complete in `sources`? (see `FollowUp`)."""
    con = connect(sources)
    try:
        complete = follow_up_complete(con, at, months)
        last = con.execute("SELECT max(admission_date) FROM v_apc").fetchone()[0]
    finally:
        con.close()
    reach = None if last is None or pd.isna(last) else pd.Timestamp(last).date()
    return FollowUp(at=at, months=months, window_end=add_months(at, months),
                    records_reach=reach, complete=bool(complete))


def delong(y: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """AUROC and its 95% CI by DeLong's method (fast midrank form, Sun and Xu 2014)."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    pos, neg = score[y], score[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    tx, ty = rankdata(pos), rankdata(neg)
    tz = rankdata(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:m] - tx) / n
    v10 = 1 - (tz[m:] - ty) / m
    var = (v01.var(ddof=1) / m if m > 1 else 0.0) + (v10.var(ddof=1) / n if n > 1 else 0.0)
    se = math.sqrt(max(var, 0.0))
    return float(auc), float(max(auc - 1.96 * se, 0.0)), float(min(auc + 1.96 * se, 1.0))


def calibration_fit(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Calibration slope (y ~ a + b logit p) and intercept (y ~ a + offset(logit p))."""
    y = np.asarray(y, dtype=float)
    z = logit(p)
    if len(y) == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    slope = float(LogisticRegression(C=1e8, max_iter=1000).fit(z.reshape(-1, 1), y).coef_[0, 0])
    a = 0.0
    for _ in range(50):  # Newton steps for the intercept with the log-odds as offset
        q = expit(a + z)
        step = (y - q).sum() / max((q * (1 - q)).sum(), 1e-12)
        a += step
        if abs(step) < 1e-10:
            break
    return slope, float(a)


def top_share(p: np.ndarray, share: float | None = None, count: int | None = None,
              order: np.ndarray | None = None) -> np.ndarray:
    """Mask of the highest-risk persons: a share of the population or a count (stable order).
    `order`: `ranking(p)` when the caller has it (one sort for several shares)."""
    n = len(p)
    k = count if count is not None else int(math.ceil((share or 0) * n))
    mask = np.zeros(n, dtype=bool)
    if k > 0 and n:
        mask[(ranking(p) if order is None else order)[:min(k, n)]] = True
    return mask


def ranking(p: np.ndarray) -> np.ndarray:
    """Persons from the highest probability down, ties in their order (`top_share`'s)."""
    return np.argsort(-np.asarray(p, dtype=float), kind="stable")


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """All headline figures of one model on one group of persons."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    out: dict[str, float] = {"persons": float(len(y)), "events": float(y.sum()),
                             "event_rate": float(y.mean()) if len(y) else float("nan")}
    auc, lo, hi = delong(y, p)
    out.update(auroc=auc, auroc_lo=lo, auroc_hi=hi)
    both = 0 < y.sum() < len(y)
    out["auprc"] = float(average_precision_score(y, p)) if both else float("nan")
    out["brier"] = float(np.mean((p - y) ** 2)) if len(y) else float("nan")
    out["mean_predicted"] = float(p.mean()) if len(y) else float("nan")
    out["calibration_slope"], out["calibration_intercept"] = calibration_fit(y, p)
    order = ranking(p)  # one sort for every share below
    for share in TOP_SHARES:
        top = top_share(p, share, order=order)
        label = f"{share * 100:g}".replace(".", "_")
        hits = float(y[top].sum())
        out[f"ppv_top{label}"] = hits / top.sum() if top.sum() else float("nan")
        out[f"sensitivity_top{label}"] = hits / y.sum() if y.sum() else float("nan")
        out[f"events_top{label}"] = hits
    out["events_top1000"] = float(y[top_share(p, count=TOP_COUNT, order=order)].sum())
    return out


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted and observed rate by risk decile (equal-sized groups)."""
    frame = pd.DataFrame({"y": np.asarray(y, dtype=float), "p": np.asarray(p, dtype=float)})
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), bins, labels=False)
    return frame.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"),
                                    persons=("y", "size")).reset_index()


def subgroup_columns(scores: pd.DataFrame) -> pd.DataFrame:
    """Subgroup labels per person: sex, age band, social care known, community data."""
    sex = scores["sex"].map({"1": "male", "2": "female"}).fillna("unknown")
    # Whether each person's sources name community data, worked out once per distinct list
    # of sources (a few dozen), not by a string search over every person.
    codes, lists = pd.factorize(scores["sources"])  # a missing list is -1: the last, False
    community = np.array([*("community" in str(v) for v in lists), False], dtype=bool)[codes]
    return pd.DataFrame({
        "sex": sex,
        "age_band": scores["age_band"].fillna("unknown").astype(str),
        "social_care": _labels(scores["social_care_known"].astype(bool).to_numpy(),
                               "with social care", "without social care"),
        "community": _labels(community, "with community data", "without community data"),
    }, index=scores.index)


def _labels(mask: np.ndarray, yes: str, no: str) -> np.ndarray:
    """`yes` where `mask`, else `no`, as one shared text object each (numpy.where's text
    array became a new Python string per person in the frame)."""
    return np.array([no, yes], dtype=object)[mask.astype(np.intp)]


def error_rates(y: np.ndarray, p: np.ndarray, groups: pd.DataFrame,
                cut: dict[str, float]) -> pd.DataFrame:
    """False-positive and false-negative rates when flagging p >= each tier threshold."""
    rows = []
    y = np.asarray(y).astype(bool)
    labelled = [("all", "all", np.ones(len(y), dtype=bool))]
    for column in groups.columns:
        for value in sorted(groups[column].unique()):
            labelled.append((column, value, (groups[column] == value).to_numpy()))
    for tier, _ in TIERS:
        flagged = np.asarray(p) >= cut[tier]
        for column, value, mask in labelled:
            yy, ff = y[mask], flagged[mask]
            negatives, positives = (~yy).sum(), yy.sum()
            rows.append({"threshold": tier, "probability": cut[tier], "subgroup": column,
                         "value": value, "persons": int(mask.sum()),
                         "flagged": int(ff.sum()),
                         "fpr": (ff & ~yy).sum() / negatives if negatives else float("nan"),
                         "fnr": (~ff & yy).sum() / positives if positives else float("nan")})
    return pd.DataFrame(rows)


def evaluate(run: ScoreRun, sources: Sources | None = None,
             outcomes: pd.Series | None = None, outcome: str = "emergency",
             extra_scores: dict[str, pd.Series] | None = None,
             months: int = OUTCOME_MONTHS, resamples: int = RESAMPLES,
             seed: int | None = None, progress: Progress = quiet) -> Evaluation:
    """Judge `run` on what happened in the `months` after its date.

    Outcomes come from `outcomes` (0/1 by person_key) or are read from `sources`, which must
    then reach past `run.at + months` (`follow_up` tells). `extra_scores` (by person_key) are
    compared alongside the candidate models, e.g. a reference risk known only in synthetic
    data. `resamples` bootstrap resamples (0: none), drawn with `seed` (default the run's) over
    persons in person-key order, give the spread of the headline figures. `progress` is told
    each step (outcomes, figures, subgroups, the bootstrap), with counts.
    """
    # The run's own columns, not a copy of them indexed by person key: a frame of the whole
    # population's scores was copied here, and its outcomes reindexed by key through a hash
    # table of every person (issue #12: the report's memory grew with the population).
    scores = run.scores
    if not scores["person_key"].is_monotonic_increasing:  # a saved run is in key order
        scores = scores.sort_values("person_key", kind="stable")
    persons = pd.Index(scores["person_key"].to_numpy(), name="person_key", copy=False)
    if outcomes is not None:
        y = outcomes.reindex(persons).fillna(0).astype(int).to_numpy()
    elif sources is None:
        raise ValueError("give outcomes or sources to read them from")
    else:
        y = build_outcome_flags(sources, persons, run.at, months)[outcome].astype(int)
    progress(f"  outcomes of {len(y):,} persons read: {int(np.sum(y)):,} with an {outcome} "
             f"admission in the {months} months after {run.at.isoformat()}")
    models = _candidate_probabilities(run.candidates, persons)
    models["chosen"] = scores["probability"].to_numpy()
    for name, values in (extra_scores or {}).items():
        models[name] = values.reindex(persons).astype(float).to_numpy()
    groups = subgroup_columns(scores)
    # The chosen model is one of the candidates: its figures are that one's, worked out once.
    same = equal_to_earlier(models)
    found: dict[str, dict[str, float]] = {}
    for name, p in models.items():
        found[name] = found[same[name]] if name in same else metrics(y, p)
    overall = pd.DataFrame([{"model": name, **found[name]} for name in models])
    progress(f"  figures of {len(models)} models worked out; now by subgroup")
    rows = []
    for column in groups.columns:
        for value in sorted(groups[column].unique()):
            mask = (groups[column] == value).to_numpy()
            found = {}
            for name, p in models.items():
                found[name] = found[same[name]] if name in same else metrics(y[mask], p[mask])
                rows.append({"model": name, "subgroup": column, "value": value, **found[name]})
    subgroups = pd.DataFrame(rows)
    curves: dict[str, pd.DataFrame] = {}
    for name, p in models.items():
        curves[name] = curves[same[name]].copy() if name in same else calibration_curve(y, p)
    frame = pd.DataFrame({"outcome": y, **{f"p_{k}": v for k, v in models.items()}},
                         index=persons, copy=False)  # the arrays above, not copies
    notes = [f"Outcome: {outcome} in the {months} months from {run.at.isoformat()}; "
             f"{int(y.sum()):,} events among {len(y):,} persons."]
    if resamples:
        progress(f"  subgroups and calibration done; bootstrap of {resamples:,} resamples")
    spread, differences = (bootstrap_intervals(y, models, resamples,
                                               run.seed if seed is None else seed)
                           if resamples else (pd.DataFrame(), pd.DataFrame()))
    return Evaluation(run_id=run.run_id, at=run.at, outcome=outcome, chosen=run.model,
                      overall=overall, subgroups=subgroups,
                      error_rates=error_rates(y, models["chosen"], groups, run.thresholds),
                      calibration=curves,
                      frame=frame, notes=notes, judged_at=run.at, months=months,
                      bootstrap=spread, differences=differences)


def _candidate_probabilities(candidates: pd.DataFrame, persons: pd.Index
                             ) -> dict[str, np.ndarray]:
    """Each candidate model's probabilities in the order of `persons`: the candidates' own
    columns when they list exactly those persons in that order (as a saved run does, unless
    some are withheld now), else reindexed (a copy of a whole population's frame)."""
    keys = candidates["person_key"].to_numpy()
    if len(keys) == len(persons) and bool((keys == persons.to_numpy()).all()):
        return {name: candidates[name].to_numpy() for name in candidates.columns
                if name != "person_key"}
    probabilities = candidates.set_index("person_key").reindex(persons)
    return {name: probabilities[name].to_numpy() for name in probabilities.columns}


def summary(evaluation: Evaluation) -> dict[str, Any]:
    """The headline figures as plain numbers (for run.json, logs and tests)."""
    table = evaluation.overall.set_index("model")
    keep = ["auroc", "auroc_lo", "auroc_hi", "auprc", "brier", "calibration_slope",
            "calibration_intercept", "ppv_top5", "events_top5", "events_top1000"]
    return {model: {k: float(table.loc[model, k]) for k in keep} for model in table.index}
