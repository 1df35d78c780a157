"""Did it work, and what is coming: run an evaluation of a cohort (`haven evaluate`) or the
weekly demand forecast (`haven forecast`) as governed purposes, write Parquet and audit.

Both read the linked, pseudonymised data through the opt-out filter of their purpose
(`commissioning`: `pipeline.score.use_filter`, the opt-outs in force now), write under
`impact/<kind>/<id>/` (governance/layout.py: `result.json` and Parquet tables) and are audited
with counts. The methods are stratify/impact.py and stratify/forecast.py (docs/impact.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import Any

import pandas as pd
from sqlalchemy import insert

from governance import audit
from governance.geography import Geography
from governance.layout import ImpactFiles
from governance.policy_tables import policy_text
from governance.schema import runs
from governance.suppression import Rule
from linkage.linked_view import load_sources
from pipeline.context import Context, Progress, quiet
from pipeline.score import use_filter
from stratify import forecast as forecasting
from stratify import impact
from stratify.costs import parse_unit_costs, spend_in_windows
from stratify.features import build_features
from stratify.impact import OUTCOMES, CohortError
from stratify.journeys import discharge_journeys
from stratify.segments import assign_segments
from stratify.sources import extract_ids

__all__ = ["EVALUATIONS", "FORECASTS", "OUTCOMES", "CohortError", "TooSmall", "evaluate",
           "forecast", "latest", "read_result"]

PURPOSE = "commissioning"
EVALUATIONS = "evaluation"  # the kind of run (runs table) and the prefix of its id
FORECASTS = "forecast"
COVARIATES = ("age", "sex_female", "emergency_admissions_12m", "emergency_bed_days_12m",
              "ae_attendances_12m", "ltc_count")


class TooSmall(ValueError):
    """A cohort at or under the small-number rule's limit: its outcomes would be a few
    persons' own."""


FORECAST_SOURCES = ["apc", "gp_patients", "social_care", "community", "deaths"]


def purpose_sources(ctx: Context, purpose: str = PURPOSE,
                    sources: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """The linked rows `purpose` may use now (opt-outs in force today), of `sources` only
    when named (a stage that reads few sources need not hold every one in memory)."""
    today = dt.datetime.now(dt.UTC).date()
    return load_sources(ctx.settings, ctx.engine, row_filter=use_filter(ctx, purpose, today),
                        sources=sources)


def output_id(kind: str, *parts: str) -> str:
    """A new output's id: `<kind>-<UTC time>-<8 hex of what it was asked>` (at most 40).

    The time's last six digits and a digest opening with four digits can read as an NHS
    number (`071034-5821...`), which the audit refuses: such a digest is drawn again, salted."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    salt = 0
    while True:
        asked = [stamp, *parts, *([str(salt)] if salt else [])]
        candidate = f"{kind}-{stamp}-{hashlib.sha256('|'.join(asked).encode()).hexdigest()[:8]}"
        if not audit.holds_identifier(candidate):
            return candidate
        salt += 1


def save_output(ctx: Context, kind: str, identifier: str, result: dict[str, Any],
                tables: dict[str, pd.DataFrame], sources: dict[str, pd.DataFrame],
                n_records: int, detail: dict[str, Any]) -> ImpactFiles:
    """Write an output's tables and result.json under `runs/<id>/`, then record it as a run
    of `kind` naming the extracts it read (so destroying one voids it and removes its files,
    governance.retention.void_runs) and audit it (`<purpose>`, `impact.<kind>`), in one
    transaction."""
    files = ctx.settings.layout.impact(identifier)
    files.folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(files.table(name), index=False)
    tmp = files.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    tmp.replace(files.result)
    used = sorted({e for ids in extract_ids(sources).values() for e in ids})
    with ctx.engine.begin() as connection:
        connection.execute(insert(runs).values(
            run_id=identifier, kind=kind, at=dt.datetime.now(dt.UTC), status="complete",
            extract_ids=used, summary={"purpose": result["purpose"], "kind": kind}))
        audit.record(connection, ctx.actor, f"impact.{kind}", f"run/{identifier}",
                     n_records=n_records, purpose=result["purpose"],
                     detail={"extracts": len(used), **detail})
    return files


def _risk_model(ctx: Context) -> Any:
    """The fitted model of the run serving commissioning, to score covariates at each start
    (None when there is no run, or it cannot be read)."""
    try:
        from pipeline.serving import serving_run
        from stratify.scoring import load_run

        run = serving_run(ctx.engine, PURPOSE)
        return None if run is None else load_run(ctx.settings.layout.run(run.run_id)).bundle
    except Exception:  # noqa: BLE001 - matching then goes without the risk score, and says so
        return None


def _segments(sources: dict[str, pd.DataFrame], at: dt.date,
              features: pd.DataFrame) -> pd.Series:
    """Each person's Bridges to Health segment at `at` (stratify.segments, docs/analyses.md),
    from the features already built for `at`."""
    found = assign_segments(sources, at, features=features)
    return found.set_index("person_key")["segment"].reindex(features.index)


def covariates_at(sources: dict[str, pd.DataFrame], starts: list[dt.date],
                  model: Any = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Matching covariates of everyone alive and registered at each start date: risk score
    (the serving model's, scored at the start), age, sex, segment and prior use (12 months);
    and how the risk score was made."""
    frames, used = [], {"risk": "none (no approved score run serves commissioning)"}
    for start in sorted(set(starts)):
        features = build_features(sources, start,
                                  getattr(model, "lookback_months", None))
        frame = features[list(COVARIATES)].astype(float)
        if model is not None:
            frame["risk"] = model.probabilities(features)[model.chosen]
            used["risk"] = f"score run model {model.version}/{model.chosen}"
        frame["segment"] = _segments(sources, start, features)
        frame["start"] = pd.Timestamp(start)
        frames.append(frame)
    return pd.concat(frames), used


def _pricer(ctx: Context, sources: dict[str, pd.DataFrame]) -> impact.SpendPricer:
    """Spend priced by the costs analysis (stratify.costs) at the unit costs in force."""
    units = parse_unit_costs(policy_text("unit_costs.csv", ctx.engine))

    def price(windows: pd.DataFrame) -> pd.DataFrame:
        return spend_in_windows(sources, windows, units)

    return price


def evaluate(ctx: Context, cohort_text: str, *, outcomes: tuple[str, ...] = OUTCOMES,
             months: int = 12, ratio: int = 1, seed: int = 0,
             progress: Progress = quiet) -> tuple[str, dict[str, Any]]:
    """Evaluate a cohort (CSV text: person_key,start_date) against a matched comparison group;
    returns (evaluation id, result). CohortError for a bad file (the row named); TooSmall for
    a cohort the small-number rule would hide, or one whose matched cohort or comparison
    group would be (the means shown are over those groups), with nothing written."""
    clock = time.perf_counter()
    sources = purpose_sources(ctx)
    known = set().union(*(set(f["person_key"].dropna()) for f in sources.values() if len(f)))
    cohort = impact.read_cohort(cohort_text, known)
    rule = Rule.load(engine=ctx.engine)
    if rule.hides(len(cohort)) or len(cohort) < rule.suppress_from:
        raise TooSmall(f"cohort: {len(cohort)} persons; at least {rule.suppress_to + 1} are "
                       "needed (the small-number rule)")
    progress(f"cohort of {len(cohort):,} persons, {cohort['start'].nunique()} start date(s); "
             f"covariates at each start")
    covariates, used = covariates_at(sources, list(cohort["start"]), _risk_model(ctx))
    pricer = _pricer(ctx, sources)
    progress(f"matching among {covariates.index.nunique():,} persons and estimating "
             f"{', '.join(outcomes)} over {months} months either side")
    try:  # the matched groups, not only the cohort submitted, meet the small-number rule
        result = impact.evaluate(sources, cohort, covariates, months=months,
                                 outcomes=outcomes, ratio=ratio, pricer=pricer, seed=seed,
                                 at_least=rule.suppress_to + 1)
    except impact.GroupsTooSmall as exc:
        raise TooSmall(str(exc)) from None
    evaluation_id = output_id(EVALUATIONS, cohort_text, ",".join(outcomes), str(months))
    summary = {"id": evaluation_id, "created": dt.datetime.now(dt.UTC).isoformat(),
               "purpose": PURPOSE, "cohort": result.cohort, "matched": result.matched,
               "comparison": result.comparison, "months": months, "ratio": ratio,
               "outcomes": list(outcomes), "balanced": result.balanced,
               "statement": result.statement, "method": {
                   "matching": "nearest neighbour on the standardised covariates and the "
                               "propensity score's logit (logistic regression), within a "
                               f"caliper of {impact.CALIPER_SD} SD of the logit, with "
                               "replacement, exact on start date",
                   "estimate": "difference in differences, WLS, SEs clustered by person, 95% CI",
                   "risk_score": used["risk"],
                   "segment": "stratify.segments (Bridges to Health)",
                   "spend": "stratify.costs with the unit costs in force (unit_costs.csv)"},
               "seconds": round(time.perf_counter() - clock, 1)}
    summary["estimates"] = _records(result.estimates)
    summary["largest_smd_after"] = (round(float(result.balance["smd_after"].abs().max()), 3)
                                    if len(result.balance) else None)
    files = save_output(ctx, EVALUATIONS, evaluation_id, summary,
                        {"estimates": result.estimates, "balance": result.balance}, sources,
                        result.cohort, {"matched": result.matched,
                                        "comparison": result.comparison,
                                        "balanced": result.balanced,
                                        "outcomes": list(outcomes)})
    progress(f"evaluation {evaluation_id}: {result.matched:,} of {result.cohort:,} matched "
             f"with {result.comparison:,} comparison persons; written to {files.folder}")
    return evaluation_id, summary


def forecast(ctx: Context, *, weeks: int = 12, until: dt.date | None = None, seed: int = 0,
             progress: Progress = quiet) -> tuple[str, dict[str, Any]]:
    """Weekly demand by locality, forecast `weeks` ahead with intervals and back-tested on the
    last year; returns (forecast id, result with the back-test's error by series)."""
    if not 1 <= weeks <= 52:
        raise ValueError("--weeks must be between 1 and 52")
    clock = time.perf_counter()
    sources = purpose_sources(ctx, sources=FORECAST_SOURCES)
    until = until or _data_end(sources)
    geography = Geography.load(engine=ctx.engine)
    practices = set()
    if "gp_patients" in sources and "gp_practice_code" in sources["gp_patients"]:
        practices = set(sources["gp_patients"]["gp_practice_code"].dropna())
    locality_of = {p: geography.unit("locality", p) for p in practices}
    series = forecasting.weekly_series(sources, locality_of, until, _pathways(sources, until))
    progress(f"{series.groupby(['series', 'locality']).ngroups} weekly series to "
             f"{until.isoformat()}; back-testing on the last 52 weeks")
    tested = forecasting.backtest(series, weeks, seed=seed)
    errors = forecasting.errors(tested)
    ahead = forecasting.forecast(series, weeks, seed=seed)
    forecast_id = output_id(FORECASTS, until.isoformat(), str(weeks))
    summary = {"id": forecast_id, "created": dt.datetime.now(dt.UTC).isoformat(),
               "purpose": PURPOSE, "until": until.isoformat(), "weeks": weeks,
               "discharges_by": "pathway (stratify.journeys)",
               "series": int(series.groupby(["series", "locality"]).ngroups),
               "backtest": _records(errors),
               "method": "Poisson GLM (trend, annual Fourier terms with a year of history), "
                         "negative binomial prediction intervals by simulation; back-test: "
                         f"{weeks}-week forecasts from origins every 4 weeks over the last 52",
               "seconds": round(time.perf_counter() - clock, 1)}
    files = save_output(ctx, FORECASTS, forecast_id, summary,
                        {"history": series, "forecast": ahead, "backtest": tested,
                         "errors": errors}, sources, int(series["count"].sum()),
                        {"series": summary["series"], "weeks": weeks})
    progress(f"forecast {forecast_id}: {len(ahead):,} weekly forecasts; written to "
             f"{files.folder}")
    return forecast_id, summary


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", double_precision=4))


def _data_end(sources: dict[str, pd.DataFrame]) -> dt.date:
    """The day after the latest admission or care start (the data's end), else today."""
    latest = []
    for source, column in (("apc", "admission_date"), ("social_care", "start_date")):
        if source in sources and column in sources[source] and len(sources[source]):
            latest.append(pd.to_datetime(sources[source][column]).max())
    found = [d for d in latest if pd.notna(d)]
    return (max(found).date() + dt.timedelta(days=1)) if found else dt.date.today()


def _pathways(sources: dict[str, pd.DataFrame], until: dt.date) -> pd.DataFrame:
    """Discharges of persons 65+ by pathway (stratify.journeys, docs/analyses.md) over the
    five years before `until`."""
    start = dt.date(until.year - 5, until.month, 1)
    journeys = discharge_journeys(sources, start, until)
    return journeys[["person_key", "discharge_date", "pathway"]]


def demo_cohort(ctx: Context, at: dt.date, months: int = 6) -> str:
    """A cohort for the demo, as a commissioner would send it: everyone a reablement service
    took on in the `months` before `at` (their first start), from the first of the month
    after it (so the admission that led to it is before the start); CSV text
    (`person_key,start_date`)."""
    care = purpose_sources(ctx, sources=["social_care"]).get("social_care")
    lines = ["person_key,start_date"]
    if care is not None and len(care):
        starts = pd.to_datetime(care["start_date"])
        since = pd.Timestamp(at) - pd.DateOffset(months=months)
        taken = care[(care["service_type"] == "reablement") & (starts >= since)
                     & (starts < pd.Timestamp(at))].assign(start=starts)
        first = taken.sort_values("start").drop_duplicates("person_key")
        month = first["start"] + pd.offsets.MonthBegin(1)
        lines += [f"{k},{d:%Y-%m-%d}" for k, d in zip(first["person_key"], month, strict=True)]
    return "\n".join(lines) + "\n"


def latest(ctx: Context, kind: str) -> ImpactFiles | None:
    """The newest output of `kind` (evaluation, forecast or vulnerable), or None."""
    found = ctx.settings.layout.impact_outputs(kind)
    return found[-1] if found else None


def read_result(files: ImpactFiles) -> dict[str, Any]:
    """An output's result.json."""
    return json.loads(files.result.read_text(encoding="utf-8"))
