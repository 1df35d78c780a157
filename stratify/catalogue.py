"""The feature catalogue: every model input with its meaning, source, window and words.

One table (`FEATURES`) documents what `features.build_features` computes; `features_markdown`
renders it into `stratify/FEATURES.md`, so the documentation is made from the same list the code
uses. Each feature belongs to a reason `group` (e.g. all emergency-admission counts); reasons
are worked out per group and phrased from the group's most telling feature (`phrase`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from stratify import codelists

HISTORY = "all history before the reference date (as far back as the training date's)"
# The release age bands (lower bound, label): the finest age any role is shown, in a reason too.
AGE_BANDS = ((0, "0-17"), (18, "18-44"), (45, "45-64"), (65, "65-74"), (75, "75-84"),
             (85, "85+"))


def age_band_label(age: float) -> str:
    """The release age band of an age in years (`85+` from 85)."""
    label = AGE_BANDS[0][1]
    for lower, name in AGE_BANDS:
        if age >= lower:
            label = name
    return label
DAYS_CAP = 730  # "days since last ..." is capped at 2 years (also the value when never seen)
YEARS_CAP = 20.0  # "years since first record" is capped at 20
# Long-history features reach back over whole years of the history window: every month the
# training date's history reaches (the same at every date, so train and score see alike), at
# most this many.
HISTORY_CAP_MONTHS = 60
HISTORY_WINDOW = ("the history window: whole years back as far as the training date's history "
                  f"reaches (at most {HISTORY_CAP_MONTHS // 12})")


def history_years(lookback_months: int | None) -> int:
    """Whole years in the history window for a lookback (None: all history, capped)."""
    months = HISTORY_CAP_MONTHS if lookback_months is None else min(lookback_months,
                                                                    HISTORY_CAP_MONTHS)
    return max(1, months // 12)


@dataclass(frozen=True)
class Feature:
    """One model input. `kind`: count, flag, days (since last), years, number, age, change
    (a signed difference between two periods, 0 when unchanged).

    `reference`: True for what describes the person at the reference date (age, sex,
    conditions, current medicines and care); False for activity over time (the history a
    reference-date-only model is not given)."""

    name: str
    meaning: str
    source: str
    window: str
    group: str
    kind: str = "count"
    phrase: str = ""  # e.g. "{n} emergency admission{s} in 12 months"; flags: the condition
    reference: bool = False

    @property
    def default(self) -> float:
        """The value of a person with no record of this kind."""
        return float(DAYS_CAP) if self.kind == "days" else 0.0

    def words(self, value: float) -> str:
        """This feature's value in words for a clinician ("3 emergency admissions in 12 months")."""
        if self.name == "sex_female":
            return "female" if value > 0 else "male"
        if self.kind == "flag":
            return self.phrase if value > 0 else f"no {self.phrase}"
        if self.kind == "days":
            if value >= DAYS_CAP:
                return self.phrase.split(" {")[0].replace("last ", "no ") + " in 2 years"
            return self.phrase.format(n=int(round(value)))
        if self.kind == "age":  # never finer than the age band every role may see
            return self.phrase.format(n=age_band_label(value))
        if self.kind == "years":
            return self.phrase.format(n=int(round(value)), s="" if round(value) == 1 else "s")
        if self.kind == "change":  # phrase: "{way} by {n} ..." with way rising / falling
            n = abs(round(value, 1))
            text = f"{n:,.1f}".removesuffix(".0")
            return self.phrase.format(way="up" if value > 0 else "down", n=text,
                                      s="" if n == 1 else "s")
        n = round(value, 1) if self.kind == "number" else int(round(value))
        text = f"{n:,.0f}" if self.kind != "number" else f"{n:,.2f}".rstrip("0").rstrip(".")
        return self.phrase.format(n=text, s="" if n == 1 else "s")


def _window(months: int) -> str:
    return f"{months} months before the reference date"


def _features() -> list[Feature]:
    f: list[Feature] = [
        Feature("age", "age in whole years at the reference date (from birth_ym)",
                "gp_patients (else any source)", "at the reference date", "age", "age",
                "aged {n}"),
        Feature("sex_female", "1 when recorded sex is female (code 2)",
                "gp_patients (else any source)", "at the reference date", "sex", "flag",
                "female sex"),
    ]
    for m in (6, 12, 24):
        f.append(Feature(f"emergency_admissions_{m}m",
                         "emergency admissions (method 21-28, 2A-2D) admitted in the window",
                         "apc", _window(m), "emergency_admissions", "count",
                         f"{{n}} emergency admission{{s}} in {m} months"))
    for m in (12, 24):
        f.append(Feature(f"emergency_bed_days_{m}m",
                         "bed days of emergency spells admitted in the window (to discharge or "
                         "the reference date, whichever is earlier)", "apc", _window(m),
                         "emergency_admissions", "count",
                         f"{{n}} day{{s}} in hospital after emergencies in {m} months"))
    f += [
        Feature("days_since_emergency_admission", "days since the last emergency admission "
                f"(capped at {DAYS_CAP})", "apc", "24 months", "emergency_admissions", "days",
                "last emergency admission {n} days ago"),
    ]
    for m in (12, 24):
        f.append(Feature(f"elective_admissions_{m}m", "elective admissions (method 11-13) "
                         "admitted in the window", "apc", _window(m), "elective_admissions",
                         "count", f"{{n}} planned admission{{s}} in {m} months"))
    f += [
        Feature("bed_days_24m", "bed days of all spells admitted in the window", "apc",
                _window(24), "elective_admissions", "count",
                "{n} day{s} in hospital in 24 months"),
        Feature("days_since_admission", f"days since the last admission of any kind (capped at "
                f"{DAYS_CAP})", "apc", "24 months", "elective_admissions", "days",
                "last hospital admission {n} days ago"),
        Feature("in_hospital", "1 when a spell admitted before the reference date has no "
                "discharge before it", "apc", "at the reference date", "in_hospital", "flag",
                "in hospital at the reference date"),
    ]
    for m in (6, 12):
        f.append(Feature(f"ae_attendances_{m}m", "A&E attendances arriving in the window", "ae",
                         _window(m), "ae_attendances", "count",
                         f"{{n}} A&E attendance{{s}} in {m} months"))
    for m in (6, 12):
        f.append(Feature(f"ambulance_arrivals_{m}m", "A&E arrivals by ambulance in the window",
                         "ae", _window(m), "ambulance", "count",
                         f"{{n}} ambulance arrival{{s}} at A&E in {m} months"))
    f += [
        Feature("ae_admitted_12m", "A&E attendances ending in admission", "ae", _window(12),
                "ae_attendances", "count", "{n} A&E attendance{s} ending in admission in 12 "
                "months"),
        Feature("days_since_ae", f"days since the last A&E attendance (capped at {DAYS_CAP})",
                "ae", "24 months", "ae_attendances", "days", "last A&E attendance {n} days ago"),
        Feature("op_attendances_12m", "outpatient appointments attended (status 5, 6)", "op",
                _window(12), "outpatients", "count",
                "{n} outpatient appointment{s} attended in 12 months"),
        Feature("op_specialties_12m", "distinct treatment functions of attended outpatient "
                "appointments", "op", _window(12), "outpatients", "count",
                "seen by {n} hospital team{s} in 12 months"),
        Feature("op_dna_12m", "outpatient appointments not attended (status 3)", "op",
                _window(12), "op_dna", "count", "{n} missed outpatient appointment{s} in 12 "
                "months"),
        Feature("days_since_op", f"days since the last attended outpatient appointment (capped "
                f"at {DAYS_CAP})", "op", "24 months", "outpatients", "days",
                "last outpatient appointment {n} days ago"),
        Feature("gp_event_days_12m", "distinct days with a GP coded event", "gp_events",
                _window(12), "gp_contact", "count", "GP record entries on {n} day{s} in 12 "
                "months"),
        Feature("days_since_gp_event", f"days since the last GP coded event (capped at "
                f"{DAYS_CAP})", "gp_events", "24 months", "gp_contact", "days",
                "last GP record entry {n} days ago"),
        Feature("distinct_medicines_6m", "polypharmacy: distinct BNF chemical substances (first 9 "
                "characters of the BNF code) issued", "gp_medications", _window(6),
                "polypharmacy", "count", "{n} different medicine{s} in 6 months"),
        Feature("medicine_issues_6m", "prescription items issued", "gp_medications",
                _window(6), "polypharmacy", "count", "{n} prescription item{s} in 6 months"),
    ]
    for row in codelists.bnf_sections().itertuples():
        if row.feature:
            name = row.section_name.lower()
            f.append(Feature(f"bnf_{row.section}_6m", f"distinct chemical substances issued from "
                             f"BNF {row.section} {row.section_name}", "gp_medications",
                             _window(6), f"bnf_{row.section}", "count",
                             f"{{n}} medicine{{s}} from BNF {row.section} ({name}) in 6 months"))
    counted = codelists.conditions()
    for row in counted.itertuples():
        f.append(Feature(f"ltc_{row.condition}", f"{row.label}: recorded in GP events (SNOMED CT or"
                         " ICD-10) or in a spell's diagnoses (ICD-10)",
                         "gp_events, apc", HISTORY,
                         f"ltc_{row.condition}", "flag", row.label))
        f.append(Feature(f"ltc_{row.condition}_years", f"years since {row.label} was first "
                         f"recorded (capped at {YEARS_CAP:.0f}; 0 when never)", "gp_events, apc",
                         HISTORY, f"ltc_{row.condition}",
                         "years", f"{row.label} first recorded {{n}} year{{s}} ago"))
    f += [
        Feature("ltc_count", "number of the counted long-term conditions recorded",
                "gp_events, apc", HISTORY, "ltc_count", "count",
                "{n} long-term condition{s}"),
        Feature("charlson_index", "Charlson comorbidity index (Quan 2005 ICD-10 coding, original "
                "Charlson weights, hierarchy applied)", "apc, gp_events (ICD-10)", _window(60),
                "charlson", "count", "Charlson comorbidity index {n}"),
        Feature("hfrs", "Hospital Frailty Risk Score (Gilbert 2018): points of distinct "
                "3-character ICD-10 codes in spells", "apc", _window(24), "frailty", "number",
                "hospital frailty risk score {n}"),
        Feature("sc_known", "1 when any social care service started before the reference date",
                "social_care", HISTORY, "social_care", "flag",
                "known to adult social care"),
        Feature("sc_active", "1 when a social care service is active at the reference date",
                "social_care", "at the reference date", "social_care", "flag",
                "receives a social care package"),
        Feature("sc_home_care", "active home care package", "social_care",
                "at the reference date", "social_care", "flag", "receives home care"),
        Feature("sc_care_home", "active residential or nursing care placement", "social_care",
                "at the reference date", "social_care", "flag",
                "lives in a residential or nursing home"),
        Feature("sc_reablement", "active reablement service", "social_care",
                "at the reference date", "social_care", "flag", "receives reablement"),
        Feature("sc_other_service", "active direct payment, day care, equipment or other service",
                "social_care", "at the reference date", "social_care", "flag",
                "receives other social care support"),
        Feature("sc_weekly_cost", "weekly cost (pounds) of the active social care services",
                "social_care", "at the reference date", "social_care", "count",
                "social care costing £{n} a week"),
        Feature("sc_started_12m", "social care services started in the window", "social_care",
                _window(12), "social_care", "count", "{n} social care service{s} started in 12 "
                "months"),
    ]
    for service, words in (("district_nursing", "district nursing"), ("therapy", "therapy"),
                           ("rapid_response", "rapid response"), ("reablement", "reablement"),
                           ("other", "other community")):
        f.append(Feature(f"community_{service}_12m", f"community contacts with service "
                         f"'{service}'", "community", _window(12), "community", "count",
                         f"{{n}} {words} contact{{s}} in 12 months"))
    f.append(Feature("days_since_community", f"days since the last community contact (capped at "
                     f"{DAYS_CAP})", "community", "24 months", "community", "days",
                     "last community contact {n} days ago"))
    f += _history_features()
    return [replace(x, reference=_describes_reference_date(x)) for x in f]


def _describes_reference_date(feature: Feature) -> bool:
    """Age, sex, conditions (and the Charlson index), medicines issued in the last 6 months
    and the social care in place at the date: the person as they are at the reference date.
    Everything else counts activity over time."""
    if feature.name in ("in_hospital", "sc_started_12m", "hfrs"):
        return False
    if feature.group in ("polypharmacy", "charlson", "ltc_count") or \
            feature.group.startswith(("bnf_", "ltc_")):
        return not feature.name.endswith(("_change_12m",))
    return feature.window in ("at the reference date", HISTORY) or feature.name == "age"


def _history_features() -> list[Feature]:
    """Features over the whole history window: what persists in a person's history (years with
    an admission, counts per year, trends) and how medicines and care changed over a year."""
    w = HISTORY_WINDOW
    return [
        Feature("emergency_admissions_12_24m", "emergency admissions admitted 12 to 24 months "
                "before the reference date (0 when the history window is shorter)", "apc",
                "12 to 24 months before the reference date", "emergency_admissions", "count",
                "{n} emergency admission{s} in the year before last"),
        Feature("emergency_admissions_24_36m", "emergency admissions admitted 24 to 36 months "
                "before the reference date (0 when the history window is shorter)", "apc",
                "24 to 36 months before the reference date", "emergency_admissions", "count",
                "{n} emergency admission{s} two to three years ago"),
        Feature("emergency_admissions_history", "emergency admissions admitted in the history "
                "window", "apc", w, "emergency_admissions", "count",
                "{n} emergency admission{s} in the years on record"),
        Feature("emergency_admission_years", "number of years (12-month periods back from the "
                "reference date) in the history window with an emergency admission", "apc", w,
                "emergency_admissions", "count", "emergency admissions in {n} separate year{s}"),
        Feature("emergency_admissions_trend", "emergency admissions in the last 12 months minus "
                "the mean per year of the earlier years in the history window (0 with one year)",
                "apc", w, "emergency_admissions", "change",
                "emergency admissions {way} by {n} a year"),
        Feature("ae_attendances_24m", "A&E attendances arriving in the window", "ae",
                _window(24), "ae_attendances", "count", "{n} A&E attendance{s} in 24 months"),
        Feature("ae_attendances_history", "A&E attendances arriving in the history window", "ae",
                w, "ae_attendances", "count", "{n} A&E attendance{s} in the years on record"),
        Feature("ae_years", "number of years in the history window with an A&E attendance", "ae",
                w, "ae_attendances", "count", "A&E attendances in {n} separate year{s}"),
        Feature("ae_trend", "A&E attendances in the last 12 months minus the mean per year of "
                "the earlier years in the history window (0 with one year)", "ae", w,
                "ae_attendances", "change", "A&E attendances {way} by {n} a year"),
        Feature("ambulance_arrivals_history", "A&E arrivals by ambulance in the history window",
                "ae", w, "ambulance", "count",
                "{n} ambulance arrival{s} at A&E in the years on record"),
        Feature("op_attendances_history", "outpatient appointments attended (status 5, 6) in "
                "the history window", "op", w, "outpatients", "count",
                "{n} outpatient appointment{s} attended in the years on record"),
        Feature("gp_event_days_history", "distinct days with a GP coded event in the history "
                "window", "gp_events", w, "gp_contact", "count",
                "GP record entries on {n} day{s} in the years on record"),
        Feature("distinct_medicines_change_12m", "distinct BNF chemical substances issued in "
                "the last 6 months minus those issued in the same 6 months a year earlier (0 "
                "when the history window is shorter than 18 months)", "gp_medications",
                "6 months before the reference date and 12 to 18 months before",
                "polypharmacy", "change", "{way} by {n} different medicine{s} in a year"),
        Feature("medicine_issues_change_12m", "prescription items issued in the last 6 months "
                "minus those issued in the same 6 months a year earlier (0 when the history "
                "window is shorter than 18 months)", "gp_medications",
                "6 months before the reference date and 12 to 18 months before",
                "polypharmacy", "change", "prescription items {way} by {n} in a year"),
        Feature("sc_change_12m", "social care services active at the reference date minus those "
                "active 12 months before", "social_care",
                "at the reference date and 12 months before", "social_care", "change",
                "social care services {way} by {n} in a year"),
        Feature("sc_started_history", "social care services started in the history window",
                "social_care", w, "social_care", "count",
                "{n} social care service{s} started in the years on record"),
    ]


FEATURES: list[Feature] = _features()
# The long-history features (what a model without them lacks; benches compare the two).
LONG_HISTORY: list[str] = [feature.name for feature in _history_features()]
BY_NAME: dict[str, Feature] = {feature.name: feature for feature in FEATURES}
NAMES: list[str] = [feature.name for feature in FEATURES]


def groups() -> dict[str, list[str]]:
    """Reason groups and their features, in catalogue order (the first is the headline)."""
    out: dict[str, list[str]] = {}
    for feature in FEATURES:
        out.setdefault(feature.group, []).append(feature.name)
    return out


def features_markdown() -> str:
    """The feature catalogue as a Markdown document (what `FEATURES.md` holds)."""
    lines = [
        "# Stratification features",
        "",
        "Generated by `stratify.catalogue.write_features_md()` from `stratify/catalogue.py`; do "
        "not edit by hand.",
        "",
        "Every feature uses only records dated before the reference date `at`. A window of N "
        "months is `[at - N months, at)`: a record on `at` is excluded, one exactly N months "
        "before is included. Persons in the population are registered with a GP on or before "
        "`at` and have no death (registered, or discharge to death) before `at`.",
        "",
        "| name | meaning | source | window | reason group |",
        "|---|---|---|---|---|",
    ]
    for f in FEATURES:
        lines.append(f"| `{f.name}` | {f.meaning} | {f.source} | {f.window} | {f.group} |")
    lines += ["", "Code lists (`stratify/codelists/`):", ""]
    for name in codelists.FILES:
        lines.append(f"- `{name}.csv`: {codelists.source_of(name)}")
    return "\n".join(lines) + "\n"


def write_features_md(path: Path | None = None) -> Path:
    """Write the catalogue to `stratify/FEATURES.md` (or `path`)."""
    target = path or Path(__file__).with_name("FEATURES.md")
    target.write_text(features_markdown(), encoding="utf-8")
    return target
