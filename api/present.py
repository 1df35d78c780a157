"""How a scored person is shown: only the sources the caller may see, and only the reasons and
conditions that rest on at least one of them.

A reason's group names the features it was phrased from (`stratify.catalogue`), and so the
sources behind it; a reason drawn only from hidden sources is left out. Conditions come from GP
events and hospital diagnoses: they are shown when either source is visible. Where a run holds
no reason groups and some source is hidden, reasons are left out altogether (fail closed).

A reason never states an age finer than the age band shown beside it, to any role: runs scored
since the catalogue phrased age by its band say "aged 75-84" already, and a run scored before
("aged 84") is shown the same way (`coarse_reason`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from api.authz import SOURCES
from api.scored_run import AGE_BANDS, CONDITION_SOURCES, DEMOGRAPHIC_GROUPS, TIER_RANK
from pipeline.score import reason_group_sources

ALL_SOURCES = frozenset(SOURCES)
FHIR_PERSON_KEY_SYSTEM = "https://haven.nhs.uk/Id/person-key"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
FHIR_RISK = {"very_high": "high", "high": "high", "moderate": "moderate", "low": "low"}
OUTCOME = "emergency hospital admission within 12 months"
EXACT_AGE = re.compile(r"\baged (\d+)\b(?![-+])")
AGE_FROM = [(int(label.split("-")[0].rstrip("+")), label) for label in AGE_BANDS]


def _band(match: re.Match) -> str:
    age = int(match.group(1))
    return "aged " + [label for lower, label in AGE_FROM if age >= lower][-1]


def coarse_reason(reason: str) -> str:
    """A reason with any exact age ("aged 84") given as its age band ("aged 75-84")."""
    return EXACT_AGE.sub(_band, reason)


@lru_cache(maxsize=8192)
def _reasons(text: str | None) -> list[str]:
    """A stored `; `-joined list of reasons, ages coarsened. Shared: never change it."""
    return [coarse_reason(reason) for reason in text.split("; ")] if text else []


@lru_cache(maxsize=1)
def group_sources() -> dict[str, frozenset[str]]:
    """Reason group -> the sources it is drawn from (read once from stratify's catalogue)."""
    return reason_group_sources(SOURCES)


@lru_cache(maxsize=256)
def _hidden_groups(visible: frozenset[str]) -> frozenset[str] | None:
    """Reason groups drawn only from sources outside `visible` (None: unknown groups hide)."""
    groups = group_sources()
    if not groups:
        return None
    return frozenset(g for g, behind in groups.items()
                     if g not in DEMOGRAPHIC_GROUPS and not behind & visible)


def _split(text: str | None, separator: str = ";") -> list[str]:
    """A stored `;`-joined list (written by the score run without stray spaces)."""
    return text.split(separator) if text else []


def needs_reason_groups(visible: frozenset[str]) -> bool:
    """Whether some reason could rest only on sources outside `visible`."""
    return not visible >= ALL_SOURCES and _hidden_groups(visible) != frozenset()


def visible_reasons(row: dict[str, Any], visible: frozenset[str]) -> list[str]:
    reasons = list(_reasons(row.get("reasons")))
    if not reasons or not needs_reason_groups(visible):
        return reasons
    hidden = _hidden_groups(visible)
    groups = [row.get(f"reason_group_{i}") for i in range(1, len(reasons) + 1)]
    if hidden is None or any(g is None for g in groups):
        return []  # cannot tell what a reason rests on: fail closed
    known = group_sources()
    return [reason for reason, group in zip(reasons, groups, strict=True)
            if group in known and group not in hidden]


def _number(value: Any) -> float | None:
    return None if value is None or value != value else round(value, 4)  # NaN != NaN


def _tier_change(row: dict[str, Any]) -> int | None:
    value = row.get("tier_change")
    if value is not None and value == value:
        return int(value)
    before = row.get("previous_tier")
    if before in TIER_RANK and row.get("tier") in TIER_RANK:
        return TIER_RANK[row["tier"]] - TIER_RANK[before]
    return None


def person(row: dict[str, Any], visible: frozenset[str], rank: int | None = None
           ) -> dict[str, Any]:
    """One scored person (a row from `Release.rows`) as the caller may see them,
    pseudonymised: person_key only."""
    everything = visible >= ALL_SOURCES
    sources = _split(row.get("sources"))
    out: dict[str, Any] = {}
    if rank is not None:
        out["rank"] = rank
    out.update({
        "person_key": row["person_key"],
        "probability": _number(row.get("probability")),
        "tier": row.get("tier"),
        "previous_tier": row.get("previous_tier"),
        "change": _number(row.get("change")),
        "tier_change": _tier_change(row),
        "practice": row.get("gp_practice_code"),
        "age_band": row.get("age_band"),
        "sex": row.get("sex"),
        "conditions": _split(row.get("conditions")) if visible & CONDITION_SOURCES else [],
        "reasons": visible_reasons(row, visible),
        "sources": sources if everything else [s for s in sources if s in visible],
    })
    return out


def people(columns: dict[str, list[Any]], visible: frozenset[str], first_rank: int
           ) -> list[dict[str, Any]]:
    """A page of scored persons (columns from `Release.columns`, ranked from `first_rank`)
    as `person` shows each, with the work that depends only on `visible` done once: a list
    page is the API's most frequent answer."""
    everything = visible >= ALL_SOURCES
    show_conditions = bool(visible & CONDITION_SOURCES)
    filter_reasons = needs_reason_groups(visible)
    hidden = _hidden_groups(visible) if filter_reasons else frozenset()
    known = group_sources()
    n = len(columns["person_key"])
    nothing: list[Any] = [None] * n
    tier_change = columns.get("tier_change", nothing)
    groups = [columns.get(f"reason_group_{i}", nothing) for i in (1, 2, 3)]
    out = []
    for i, (key, probability, tier, before, change, practice, age_band, sex, conditions,
            reasons, sources) in enumerate(zip(
                columns["person_key"], columns["probability"], columns["tier"],
                columns["previous_tier"], columns["change"], columns["gp_practice_code"],
                columns["age_band"], columns["sex"], columns["conditions"],
                columns["reasons"], columns["sources"], strict=True)):
        moved = tier_change[i]
        if moved is not None and moved == moved:
            moved = int(moved)
        elif before in TIER_RANK and tier in TIER_RANK:
            moved = TIER_RANK[tier] - TIER_RANK[before]
        else:
            moved = None
        shown_reasons = _reasons(reasons)
        if shown_reasons and filter_reasons:
            own = [g[i] for g in groups[:len(shown_reasons)]]
            if hidden is None or len(own) < len(shown_reasons) or None in own:
                shown_reasons = []  # cannot tell what a reason rests on: fail closed
            else:
                shown_reasons = [r for r, g in zip(shown_reasons, own, strict=True)
                                 if g in known and g not in hidden]
        out.append({
            "rank": first_rank + i, "person_key": key,
            "probability": None if probability is None or probability != probability
            else round(probability, 4),
            "tier": tier, "previous_tier": before,
            "change": None if change is None or change != change else round(change, 4),
            "tier_change": moved, "practice": practice, "age_band": age_band, "sex": sex,
            "conditions": _listed(conditions, None) if show_conditions else [],
            "reasons": shown_reasons,
            "sources": _listed(sources, None if everything else visible),
        })
    return out


@lru_cache(maxsize=8192)
def _listed(text: str | None, visible: frozenset[str] | None, separator: str = ";"
            ) -> list[str]:
    """A stored list (`_split`), only its entries in `visible` (None: all of them). Pages
    repeat few distinct lists, so each is split once; the list is shared: never change it."""
    entries = text.split(separator) if text else []
    return entries if visible is None else [e for e in entries if e in visible]


def risk_assessment(row: dict[str, Any], visible: frozenset[str], run: Any) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment for one person, checked with the R4B model.

    The subject is the person's key (a pseudonym), not an NHS number: a clinician's system
    matches it to a patient through authorised re-identification.
    """
    from fhir.resources.R4B.riskassessment import RiskAssessment

    shown = person(row, visible)
    tier = shown["tier"] or "low"
    prediction: dict[str, Any] = {
        "outcome": {"text": OUTCOME},
        "qualitativeRisk": {"coding": [{"system": RISK_PROBABILITY, "code": FHIR_RISK[tier]}],
                            "text": tier.replace("_", " ")},
        "whenRange": {"high": {"value": 12, "unit": "months",
                               "system": "http://unitsofmeasure.org", "code": "mo"}},
    }
    if shown["probability"] is not None:
        prediction["probabilityDecimal"] = shown["probability"]
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": f"{run.run_id}-{shown['person_key']}"[:64].replace("_", "-"),
        "status": "final",
        "subject": {"identifier": {"system": FHIR_PERSON_KEY_SYSTEM,
                                   "value": shown["person_key"]}},
        "method": {"text": f"Haven risk model {run.model or 'unknown'} "
                           f"{run.model_version}".strip()},
        "prediction": [prediction],
    }
    if run.at:
        resource["occurrenceDateTime"] = run.at
    if shown["reasons"]:
        resource["note"] = [{"text": f"Reason: {reason}"} for reason in shown["reasons"]]
    return RiskAssessment.model_validate(resource).model_dump(mode="json", exclude_none=True)
