"""Did it work? A cohort against a matched comparison group, before and after its start.

A commissioner names a cohort: person keys with a start date (everyone an MDT reviewed, or a
new service took on). `read_cohort` checks that file; `outcome_windows` counts each person's
emergency admissions, emergency bed days, A&E attendances and spend in the `months` before
and after their start; `match` draws a comparison group of similar people not in the cohort
(propensity score from scikit-learn's LogisticRegression on the covariates, nearest neighbour
on its logit with a caliper, with replacement, exactly within each start date) and measures
balance as standardised mean differences; `did` estimates the effect by difference in
differences (statsmodels WLS, standard errors clustered by person) with its confidence
interval. `evaluate` runs them in order. Nothing here reads files or knows who is asking:
pipeline/impact.py does that. Methods and their limits: docs/impact.md.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stratify.sources import EMERGENCY_METHODS, add_months, prepare

PERSON_KEY = re.compile(r"^P[0-9a-f]{20}$")
OUTCOMES = ("emergency_admissions", "emergency_bed_days", "ae_attendances", "spend")
SMD_LIMIT = 0.1  # |SMD| above this on any covariate: the groups are not balanced
CALIPER_SD = 0.2  # of the logit of the propensity score (Austin 2011)
LOGIT_WEIGHT = 3.0  # the logit's weight beside each standardised covariate in the distance
CANDIDATES = 200  # nearest persons searched for ones inside the caliper
MAX_START_DATES = 24
HEADER = ("person_key", "start_date")


class CohortError(ValueError):
    """The cohort file cannot be used; the message names the row (1-based data row) and the
    field, never the value."""


@dataclass(frozen=True)
class UnitCosts:
    """Prices the spend outcome uses when no cost table is handed in (documented defaults;
    docs/impact.md names their sources). Pounds, one price year."""

    emergency_admission: float = 1_800.0  # per emergency spell (excess bed days apart)
    elective_admission: float = 1_400.0
    bed_day: float = 350.0  # per bed day of any admission
    ae_attendance: float = 200.0
    outpatient_attendance: float = 150.0
    social_care_week: float = 300.0  # where a package has no weekly_cost of its own


def read_cohort(text: str, known: set[str] | frozenset[str] | None = None) -> pd.DataFrame:
    """The cohort CSV (`person_key,start_date`) as a frame of person_key and start (date).

    Refused whole (CohortError naming the row and field) when the header is wrong, a key is
    not a person key (`P` + 20 hex), a date is not YYYY-MM-DD, a person is listed twice, or
    (with `known`, the persons the purpose may use) a key is not known: the message never
    repeats the value, and an unknown key reads the same whether the person is absent or
    withheld by an opt-out."""
    lines = [line for line in io.StringIO(text) if line.strip()]
    reader = csv.reader(lines)
    header = tuple(c.strip().lower() for c in next(reader, []))
    if header != HEADER:
        raise CohortError("cohort: the header must be person_key,start_date")
    seen: dict[str, int] = {}
    keys, starts = [], []
    for number, row in enumerate(reader, start=1):
        if len(row) != 2:
            raise CohortError(f"cohort row {number}: must have 2 fields")
        key, start = (c.strip() for c in row)
        if not PERSON_KEY.match(key):
            raise CohortError(f"cohort row {number}: person_key is not a person key "
                              "(P and 20 hex digits)")
        try:
            day = dt.date.fromisoformat(start)
        except ValueError:
            raise CohortError(f"cohort row {number}: start_date is not a date YYYY-MM-DD") \
                from None
        if key in seen:
            raise CohortError(f"cohort row {number}: person_key repeats row {seen[key]}")
        if known is not None and key not in known:
            raise CohortError(f"cohort row {number}: person_key is not a person this purpose "
                              "may use")
        seen[key] = number
        keys.append(key)
        starts.append(day)
    if not keys:
        raise CohortError("cohort: no rows")
    if len(set(starts)) > MAX_START_DATES:
        raise CohortError(f"cohort: more than {MAX_START_DATES} distinct start dates; "
                          "group starts by month")
    return pd.DataFrame({"person_key": keys, "start": starts})


def _window_sum(events: pd.DataFrame, date: str, value: pd.Series, people: pd.DataFrame,
                months: int) -> pd.DataFrame:
    """Per (person_key, start): the sum of `value` dated in [start - months, start) (before)
    and [start, start + months) (after)."""
    frame = pd.DataFrame({"person_key": events["person_key"].to_numpy(),
                          "d": events[date].to_numpy(), "v": value.to_numpy()})
    joined = frame.merge(people[["person_key", "start", "lo", "hi"]], on="person_key")
    before = (joined["d"] >= joined["lo"]) & (joined["d"] < joined["start"])
    after = (joined["d"] >= joined["start"]) & (joined["d"] < joined["hi"])
    out = pd.DataFrame({"person_key": joined["person_key"], "start": joined["start"],
                        "before": joined["v"].where(before, 0.0),
                        "after": joined["v"].where(after, 0.0)})
    return out.groupby(["person_key", "start"], as_index=False)[["before", "after"]].sum()


# Given windows (window, person_key, start, end; end exclusive), spend in each: window, total.
SpendPricer = Callable[[pd.DataFrame], pd.DataFrame]


def outcome_windows(sources: dict[str, pd.DataFrame], people: pd.DataFrame, months: int = 12,
                    costs: UnitCosts | None = None, pricer: SpendPricer | None = None
                    ) -> pd.DataFrame:
    """Outcomes of each (person_key, start) in `people`, in the `months` before and after.

    Long form: person_key, start, period (`before`/`after`) and one column per OUTCOMES:
    emergency admissions (admission methods 21-2D) starting in the window, their bed days
    (discharge - admission, to the window's end for a stay still open), A&E attendances and
    spend (admissions, bed days, A&E and outpatient attendances at `costs`; social care
    packages at their own weekly cost, else the default, for the weeks they ran in the
    window). `pricer` (e.g. the costs analysis's `spend_in_windows` with the unit costs in
    force) prices spend instead of `costs` when given."""
    costs = costs or UnitCosts()
    frames = prepare(sources)
    base = people[["person_key", "start"]].drop_duplicates().copy()
    base["start"] = pd.to_datetime(base["start"]).astype("datetime64[us]")
    base["lo"] = [pd.Timestamp(add_months(d.date(), -months)) for d in base["start"]]
    base["hi"] = [pd.Timestamp(add_months(d.date(), months)) for d in base["start"]]
    parts: dict[str, pd.DataFrame] = {}
    spend: list[pd.DataFrame] = []
    apc = frames.get("apc")
    if apc is not None:
        emergency = apc["admission_method"].isin(EMERGENCY_METHODS)
        los = (apc["discharge_date"] - apc["admission_date"]).dt.days.clip(lower=0)
        los = los.fillna(0).astype(float)
        emerg = apc[emergency]
        parts["emergency_admissions"] = _window_sum(
            emerg, "admission_date", pd.Series(1.0, index=emerg.index), base, months)
        parts["emergency_bed_days"] = _window_sum(emerg, "admission_date", los[emergency],
                                                  base, months)
        price = np.where(emergency, costs.emergency_admission, costs.elective_admission)
        spend.append(_window_sum(apc, "admission_date",
                                 pd.Series(price, index=apc.index) + los * costs.bed_day,
                                 base, months))
    ae = frames.get("ae")
    if ae is not None:
        ones = pd.Series(1.0, index=ae.index)
        parts["ae_attendances"] = _window_sum(ae, "arrival_datetime", ones, base, months)
        spend.append(_window_sum(ae, "arrival_datetime", ones * costs.ae_attendance, base,
                                 months))
    op = frames.get("op")
    if op is not None:
        seen = op[op["attendance_status"].isin(("5", "6"))]
        spend.append(_window_sum(seen, "appointment_date",
                                 pd.Series(costs.outpatient_attendance, index=seen.index),
                                 base, months))
    care = frames.get("social_care")
    if care is not None and len(care):
        spend.append(_care_spend(care, base, costs))
    if pricer is not None:
        parts["spend"] = _priced(pricer, base)
    elif spend:
        parts["spend"] = pd.concat(spend).groupby(["person_key", "start"],
                                                  as_index=False)[["before", "after"]].sum()
    rows = []
    for period in ("before", "after"):
        frame = base[["person_key", "start"]].copy()
        frame["period"] = period
        for name in OUTCOMES:
            found = parts.get(name)
            if found is None:
                frame[name] = 0.0
                continue
            merged = frame[["person_key", "start"]].merge(found, how="left",
                                                          on=["person_key", "start"])
            frame[name] = merged[period].fillna(0.0).to_numpy()
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def _priced(pricer: SpendPricer, base: pd.DataFrame) -> pd.DataFrame:
    """Spend before and after each (person, start) from `pricer`, one window each."""
    n = len(base)
    windows = pd.concat([
        base.assign(window=np.arange(n) * 2, start=base["lo"], end=base["start"]),
        base.assign(window=np.arange(n) * 2 + 1, end=base["hi"])])
    priced = pricer(windows[["window", "person_key", "start", "end"]])
    total = priced.set_index("window")["total"].reindex(np.arange(2 * n)).fillna(0.0)
    out = base[["person_key", "start"]].copy()
    out["before"] = total.to_numpy()[0::2]
    out["after"] = total.to_numpy()[1::2]
    return out


def _care_spend(care: pd.DataFrame, base: pd.DataFrame, costs: UnitCosts) -> pd.DataFrame:
    """Social care spend per (person, start) before and after: weeks of each package inside
    each window times its weekly cost (the default where none was sent)."""
    weekly = care["weekly_cost"].fillna(costs.social_care_week)
    frame = pd.DataFrame({"person_key": care["person_key"].to_numpy(),
                          "s": care["start_date"].to_numpy(),
                          "e": care["end_date"].to_numpy(), "w": weekly.to_numpy()})
    joined = frame.merge(base, on="person_key")
    out = joined[["person_key", "start"]].copy()
    end = joined["e"].fillna(joined["hi"])
    for name, lo, hi in (("before", joined["lo"], joined["start"]),
                         ("after", joined["start"], joined["hi"])):
        first = joined["s"].where(joined["s"] > lo, lo)
        last = end.where(end < hi, hi)
        days = (last - first).dt.days.clip(lower=0).fillna(0)
        out[name] = days / 7.0 * joined["w"]
    return out.groupby(["person_key", "start"], as_index=False)[["before", "after"]].sum()


@dataclass
class Matched:
    """The matched sample: each cohort member's comparison persons, the balance table and
    whether balance was reached."""

    pairs: pd.DataFrame  # person_key (cohort), start, control (person key), weight
    balance: pd.DataFrame  # covariate, smd_before, smd_after, mean_cohort, mean_comparison
    balanced: bool
    unmatched: int  # cohort members with no comparison person inside the caliper
    absent: int  # cohort members with no covariates at their start (not alive, registered)
    statement: str


def _smd(treated: pd.Series, control: pd.Series, weights: np.ndarray | None = None) -> float:
    """Standardised mean difference: difference in means over the pooled standard deviation
    of the two groups before matching would use (here: of the groups given)."""
    t = treated.to_numpy(dtype=float)
    c = control.to_numpy(dtype=float)
    w = np.ones(len(c)) if weights is None else weights
    mc = np.average(c, weights=w) if len(c) else np.nan
    vc = np.average((c - mc) ** 2, weights=w) if len(c) else np.nan
    pooled = np.sqrt((t.var(ddof=1) if len(t) > 1 else 0.0) / 2 + vc / 2)
    diff = t.mean() - mc
    if not np.isfinite(pooled) or pooled == 0:
        return 0.0 if diff == 0 else float(np.sign(diff)) * np.inf
    return float(diff / pooled)


def _design(covariates: pd.DataFrame) -> pd.DataFrame:
    """Numeric covariates as they are (missing values filled with the median), categorical
    ones (object or category dtype, e.g. segment) as one indicator per level."""
    numeric = covariates.select_dtypes(include="number").astype(float)
    numeric = numeric.fillna(numeric.median()).fillna(0.0)
    categorical = covariates.columns.difference(numeric.columns)
    dummies = pd.get_dummies(covariates[categorical].astype(str), prefix_sep="=",
                             dtype=float) if len(categorical) else None
    return numeric if dummies is None else pd.concat([numeric, dummies], axis=1)


def match(covariates: pd.DataFrame, cohort: pd.DataFrame, *, ratio: int = 1,
          seed: int = 0) -> Matched:
    """Comparison persons for `cohort` (person_key, start) from everyone else in `covariates`.

    `covariates`: one row per (person_key, start) a person could be compared at (index:
    person_key; a `start` column says which start date the row describes); numeric or
    categorical columns (risk score, age, sex, segment, prior use). Within each start date a
    logistic regression gives each person's propensity of being in the cohort; each cohort
    member takes the `ratio` persons not in the cohort nearest to it on the standardised
    covariates and the logit of the propensity (weighted LOGIT_WEIGHT; Mahalanobis-metric
    matching with the propensity score, Rosenbaum & Rubin 1985, here with a diagonal metric),
    among its CANDIDATES nearest, whose logit is within a caliper of CALIPER_SD standard
    deviations of its own (Austin 2011), with replacement. Balance:
    the standardised mean difference of every covariate, before and after (controls weighted
    by how often they were taken); |SMD| > SMD_LIMIT anywhere after matching means the groups
    could not be balanced, and `statement` says so plainly."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    data = covariates.reset_index()
    data["start"] = pd.to_datetime(data["start"]).astype("datetime64[us]")
    wanted = cohort[["person_key", "start"]].copy()
    wanted["start"] = pd.to_datetime(wanted["start"]).astype("datetime64[us]")
    design = _design(data.drop(columns=["person_key", "start"]))
    treated_keys = set(wanted["person_key"])
    in_cohort = data.merge(wanted.assign(_t=True), on=["person_key", "start"],
                           how="left")["_t"].notna().to_numpy()
    candidate = ~data["person_key"].isin(treated_keys).to_numpy()
    pairs: list[pd.DataFrame] = []
    unmatched = 0
    for start in sorted(wanted["start"].unique()):
        here = (data["start"] == start).to_numpy()
        t_idx = np.flatnonzero(here & in_cohort)
        c_idx = np.flatnonzero(here & candidate)
        if len(c_idx) < ratio or len(t_idx) == 0:
            unmatched += len(t_idx)
            continue
        rows = np.concatenate([t_idx, c_idx])
        x = StandardScaler().fit_transform(design.to_numpy()[rows])
        y = np.r_[np.ones(len(t_idx)), np.zeros(len(c_idx))]
        model = LogisticRegression(max_iter=2000, C=100.0, random_state=seed).fit(x, y)
        p = np.clip(model.predict_proba(x)[:, 1], 1e-9, 1 - 1e-9)
        logit = np.log(p / (1 - p))
        spread = float(np.std(logit)) or 1.0
        caliper = CALIPER_SD * spread
        space = np.column_stack([x, LOGIT_WEIGHT * logit / spread])
        n = len(t_idx)
        nn = NearestNeighbors(n_neighbors=min(CANDIDATES, len(c_idx))).fit(space[n:])
        _, which = nn.kneighbors(space[:n])
        for i, t in enumerate(t_idx):
            inside = which[i][np.abs(logit[n + which[i]] - logit[i]) <= caliper][:ratio]
            if not len(inside):
                unmatched += 1
                continue
            pairs.append(pd.DataFrame({
                "person_key": data["person_key"].iat[t], "start": start,
                "control": data["person_key"].to_numpy()[c_idx[inside]],
                "weight": 1.0 / len(inside)}))
    pairs_frame = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(
        columns=["person_key", "start", "control", "weight"])
    balance = _balance(data, design, in_cohort, candidate, pairs_frame)
    worst = balance["smd_after"].abs().max() if len(balance) else np.inf
    balanced = bool(len(pairs_frame) and np.isfinite(worst) and worst <= SMD_LIMIT)
    absent = int((~wanted.merge(data[["person_key", "start"]].assign(_c=True),
                                on=["person_key", "start"], how="left")["_c"].notna()).sum())
    statement = _statement(balance, balanced, len(wanted), unmatched, absent)
    return Matched(pairs_frame, balance, balanced, unmatched, absent, statement)


def _balance(data: pd.DataFrame, design: pd.DataFrame, in_cohort: np.ndarray,
             candidate: np.ndarray, pairs: pd.DataFrame) -> pd.DataFrame:
    """SMD of every design column: cohort against all candidates (before), and matched cohort
    against its controls weighted by how often each was taken (after)."""
    keyed = design.assign(person_key=data["person_key"].to_numpy(),
                          start=data["start"].to_numpy())
    matched_t = keyed.merge(pairs[["person_key", "start"]].drop_duplicates(),
                            on=["person_key", "start"])
    controls = pairs.groupby(["control", "start"], as_index=False)["weight"].sum()
    matched_c = keyed.merge(controls.rename(columns={"control": "person_key"}),
                            on=["person_key", "start"])
    rows = []
    for column in design.columns:
        rows.append({
            "covariate": column,
            "smd_before": _smd(design.loc[in_cohort, column], design.loc[candidate, column]),
            "smd_after": (_smd(matched_t[column], matched_c[column],
                               matched_c["weight"].to_numpy()) if len(matched_c) else np.nan),
            "mean_cohort": float(matched_t[column].mean()) if len(matched_t) else np.nan,
            "mean_comparison": (float(np.average(matched_c[column],
                                                 weights=matched_c["weight"]))
                                if len(matched_c) else np.nan)})
    return pd.DataFrame(rows)


def _statement(balance: pd.DataFrame, balanced: bool, cohort: int, unmatched: int,
               absent: int = 0) -> str:
    """The plain sentence shown with every result."""
    if balanced:
        text = (f"The groups were balanced: every covariate's standardised mean difference is "
                f"within {SMD_LIMIT} after matching.")
    else:
        off = balance.loc[~(balance["smd_after"].abs() <= SMD_LIMIT), "covariate"].tolist()
        text = ("The groups could NOT be balanced: after matching, "
                + (", ".join(off) if off else "no cohort member found a comparison person")
                + f" differ by more than {SMD_LIMIT} standard deviations, so the estimates may "
                  "reflect who was chosen rather than what was done.")
    if absent:
        text += (f" {absent} of {cohort} cohort members were not alive and registered at "
                 "their start and are left out.")
    if unmatched:
        text += (f" {unmatched} of {cohort} cohort members had no comparison person close "
                 "enough and are left out.")
    return text


@dataclass
class Estimate:
    """One outcome's difference in differences."""

    outcome: str
    cohort_before: float
    cohort_after: float
    comparison_before: float
    comparison_after: float
    effect: float  # (cohort after - before) - (comparison after - before), per person
    ci_low: float
    ci_high: float
    p_value: float

    def to_row(self) -> dict[str, float | str]:
        return dict(self.__dict__)


def did(panel: pd.DataFrame, outcome: str, alpha: float = 0.05) -> Estimate:
    """Difference in differences of `outcome` on a matched panel.

    `panel`: one row per unit and period, columns unit, treated (0/1), after (0/1), weight and
    the outcome. WLS of outcome on treated, after and treated x after (statsmodels), standard
    errors clustered by unit; the interaction is the effect, with its (1 - alpha) interval."""
    import statsmodels.api as sm

    x = pd.DataFrame({"const": 1.0, "treated": panel["treated"].astype(float),
                      "after": panel["after"].astype(float)})
    x["treated_after"] = x["treated"] * x["after"]
    y = panel[outcome].astype(float)
    groups = pd.factorize(panel["unit"])[0]
    fit = sm.WLS(y, x, weights=panel["weight"].astype(float)).fit(
        cov_type="cluster", cov_kwds={"groups": groups})
    low, high = fit.conf_int(alpha).loc["treated_after"]

    def mean(t: int, a: int) -> float:
        part = panel[(panel["treated"] == t) & (panel["after"] == a)]
        return float(np.average(part[outcome], weights=part["weight"])) if len(part) else np.nan

    return Estimate(outcome, mean(1, 0), mean(1, 1), mean(0, 0), mean(0, 1),
                    float(fit.params["treated_after"]), float(low), float(high),
                    float(fit.pvalues["treated_after"]))


def matched_panel(pairs: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The panel `did` reads: each matched cohort member (weight 1) and each comparison
    person once per cohort member it stands for (weight 1/ratio), before and after that
    member's start; a unit is (person, start, role) so a person taken twice is clustered
    with itself."""
    cohort = pairs[["person_key", "start"]].drop_duplicates().assign(treated=1, weight=1.0)
    controls = pairs.groupby(["control", "start"], as_index=False)["weight"].sum().rename(
        columns={"control": "person_key"}).assign(treated=0)
    units = pd.concat([cohort, controls], ignore_index=True)
    units["start"] = pd.to_datetime(units["start"]).astype("datetime64[us]")
    data = outcomes.copy()
    data["start"] = pd.to_datetime(data["start"]).astype("datetime64[us]")
    panel = units.merge(data, on=["person_key", "start"])
    panel["after"] = (panel["period"] == "after").astype(int)
    panel["unit"] = (panel["person_key"] + "|" + panel["start"].astype(str) + "|"
                     + panel["treated"].astype(str))
    return panel


@dataclass
class Evaluation:
    """What `evaluate` found: the estimates, the balance table and the plain statement."""

    estimates: pd.DataFrame
    balance: pd.DataFrame
    balanced: bool
    statement: str
    cohort: int
    matched: int
    comparison: int
    months: int
    extra: dict[str, object] = field(default_factory=dict)


class GroupsTooSmall(ValueError):
    """The matched cohort or its comparison group is smaller than the small-number rule
    allows a figure to be published over."""


def evaluate(sources: dict[str, pd.DataFrame], cohort: pd.DataFrame,
             covariates: pd.DataFrame, *, months: int = 12,
             outcomes: tuple[str, ...] = OUTCOMES, ratio: int = 1,
             costs: UnitCosts | None = None, pricer: SpendPricer | None = None,
             seed: int = 0, at_least: int = 1) -> Evaluation:
    """Match `cohort` within `covariates` (see `match`), count outcomes before and after each
    start (`outcome_windows`) and estimate each outcome's effect (`did`).

    Every mean shown (outcomes before and after, covariates' balance) is over the matched
    cohort or the comparison group, not the cohort submitted: a cohort of 8 with 7 matched
    would publish means over 7 persons (1/7, 4/7). So both groups must hold `at_least`
    persons (the caller passes the small-number rule's threshold), else GroupsTooSmall,
    before any outcome is counted."""
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"outcome: {unknown[0]!r} is not one of {', '.join(OUTCOMES)}")
    matched = match(covariates, cohort, ratio=ratio, seed=seed)
    treated = int(matched.pairs["person_key"].nunique()) if len(matched.pairs) else 0
    controls = int(matched.pairs["control"].nunique()) if len(matched.pairs) else 0
    if min(treated, controls) < at_least:
        raise GroupsTooSmall(
            f"evaluation refused: {treated} of {len(cohort)} cohort members were matched, "
            f"with {controls} comparison persons; each group needs at least {at_least} "
            "persons (the small-number rule), or its means would describe too few people to "
            "publish. " + matched.statement)
    people = pd.concat([
        matched.pairs[["person_key", "start"]],
        matched.pairs[["control", "start"]].rename(columns={"control": "person_key"})])
    rows = []
    if len(matched.pairs):
        windows = outcome_windows(sources, people, months, costs, pricer)
        panel = matched_panel(matched.pairs, windows)
        rows = [did(panel, name).to_row() for name in outcomes]
    estimates = pd.DataFrame(rows, columns=list(Estimate.__dataclass_fields__))
    return Evaluation(estimates, matched.balance, matched.balanced, matched.statement,
                      cohort=len(cohort), matched=treated, comparison=controls, months=months)
