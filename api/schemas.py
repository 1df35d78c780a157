"""Request and response bodies, each with an example for the OpenAPI description.

Examples use synthetic values only: person keys are pseudonyms and NHS numbers are from the
`999` range, which is never issued to a person.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

PERSON_KEY = r"^P[0-9a-f]{20}$"
ODS = r"^[A-Z0-9]{3,10}$"
REASONS = ("mdt_review", "care_planning", "clinical_follow_up", "safeguarding")


def example(value: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


PERSON_EXAMPLE = {
    "rank": 1, "person_key": "P3f2a9c41d0b7e6a58c13", "probability": 0.4127, "tier": "very_high",
    "previous_tier": "high", "change": 0.0831, "tier_change": 1, "practice": "B86001",
    "age_band": "75-84", "sex": "2", "conditions": ["COPD", "heart failure"],
    "reasons": ["3 emergency admissions in 12 months", "2 long-term conditions",
                "receives home care"],
    "sources": ["ae", "apc", "gp_events", "social_care"],
}


class Health(BaseModel):
    model_config = example({"status": "ok"})
    status: str


class WhoAmI(BaseModel):
    model_config = example({"user": "dr.mdt", "org": "B86001", "roles": ["mdt_clinician"],
                            "authenticated_by": "token", "purpose": "case_finding",
                            "purposes": ["case_finding"]})
    user: str
    org: str
    roles: list[str]
    authenticated_by: str
    purpose: str
    purposes: list[str]


class Person(BaseModel):
    """A scored person, pseudonymised, with only the sources the caller may see."""

    model_config = example(PERSON_EXAMPLE)
    rank: int | None = None
    person_key: str
    probability: float | None
    tier: str | None
    previous_tier: str | None
    change: float | None
    tier_change: int | None
    practice: str | None
    age_band: str | None
    sex: str | None
    conditions: list[str]
    reasons: list[str]
    sources: list[str]


PROVENANCE_EXAMPLE = {"model_id": "model-jbjgblcnfple", "model": "boosting",
                      "approval": "approved", "approved_role": "clinical_safety_officer",
                      "approved_at": "2025-04-02T09:14:00+00:00"}


class ModelProvenance(BaseModel):
    """Which model scored the list and its clinical safety approval (who decided, and why:
    `GET /models`)."""

    model_config = example(PROVENANCE_EXAMPLE)
    model_id: str | None
    model: str
    approval: str
    approved_role: str | None
    approved_at: str | None


class PersonPage(BaseModel):
    model_config = example({"run_id": "score-2025-04-01-jkbmcoepflen", "total": 312,
                            "offset": 0, "limit": 50, "next_offset": 50,
                            "items": [PERSON_EXAMPLE], "provenance": PROVENANCE_EXAMPLE})
    run_id: str
    provenance: ModelProvenance
    total: int
    offset: int
    limit: int
    next_offset: int | None
    items: list[Person]


class PersonDetail(Person):
    model_config = example({**PERSON_EXAMPLE, "rank": None,
                            "run_id": "score-2025-04-01-jkbmcoepflen"})
    run_id: str


class Figure(BaseModel):
    count: int | None
    suppressed: bool


class Aggregate(BaseModel):
    """A published table: persons by one dimension on one geography; `count` is null where
    suppressed (1-7, or to protect another figure of any published table)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "run_id": "score-2025-04-01-jkbmcoepflen", "by": ["pcn", "tier"], "geography": "pcn",
        "cells": [{"pcn": "U90001", "tier": "high", "count": 45, "suppressed": False},
                  {"pcn": "U90001", "tier": "very_high", "count": None,
                   "suppressed": True}],
        "margins": {"pcn": [{"pcn": "U90001", "count": 3610, "suppressed": False}],
                    "tier": [{"tier": "high", "count": 815, "suppressed": False}]},
        "total": {"count": 18135, "suppressed": False},
        "rule": {"suppressed": "1-7", "rounded_to": 5,
                 "secondary": "every table, total and geography level as one publication; "
                              "no hidden figure can be solved from the figures shown"}}]})
    run_id: str
    by: list[str]
    geography: str
    cells: list[dict[str, Any]]
    margins: dict[str, list[dict[str, Any]]]
    total: Figure
    rule: dict[str, Any]


class RunInfo(BaseModel):
    model_config = example({"run_id": "score-2025-04-01-jkbmcoepflen", "at": "2025-04-01",
                            "model": "boosting", "model_version": "1.0", "persons": 19412,
                            "provenance": PROVENANCE_EXAMPLE})
    run_id: str
    provenance: ModelProvenance
    at: str
    model: str
    model_version: str
    persons: int = Field(description="Persons the run scored (opt-outs that arrived since are "
                                     "withheld from every answer, and not counted here).")


class ReidentifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "person_keys": ["P3f2a9c41d0b7e6a58c13"], "reason": "mdt_review"}]})
    person_keys: list[Annotated[str, Field(pattern=PERSON_KEY)]] = Field(
        min_length=1, max_length=100)
    reason: Literal["mdt_review", "care_planning", "clinical_follow_up", "safeguarding"] = Field(
        description="Why the persons are re-identified (a code: free text could hold "
                    "identifiers).")


class Reidentified(BaseModel):
    model_config = example({"items": [{"person_key": "P3f2a9c41d0b7e6a58c13",
                                       "nhs_number": "9990001234"}]})
    items: list[dict[str, str]]


class ReverseLookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "nhs_numbers": ["999 000 1234"], "reason": "mdt_review"}]})
    nhs_numbers: list[Annotated[str, Field(max_length=20)]] = Field(min_length=1,
                                                                     max_length=100)
    reason: Literal["mdt_review", "care_planning", "clinical_follow_up", "safeguarding"] = Field(
        description="Why these patients are looked up: a re-identification, with a reason "
                    "from the same list as `POST /reidentify`.")


class ReverseLookupItem(BaseModel):
    nhs_number: str
    found: bool
    person: Person | None = None


class ReverseLookup(BaseModel):
    model_config = example({"run_id": "score-2025-04-01-jkbmcoepflen", "items": [
        {"nhs_number": "9990001234", "found": True, "person": {**PERSON_EXAMPLE, "rank": None}},
        {"nhs_number": "9990004321", "found": False, "person": None}]})
    run_id: str
    items: list[ReverseLookupItem]


class Receipt(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "extract_id": "20250402-social_care-1a2b3c4d", "source": "social_care",
        "sender": "E08000035", "status": "landed", "reason": None,
        "received_at": "2025-04-02T09:14:03+00:00", "retention_date": "2027-03-31",
        "rows_landed": 1520, "counts": {"received": 1544, "landed": 1520, "rejected": 4,
                                        "dropped_no_consent": 20}}]})
    extract_id: str
    source: str | None
    sender: str | None
    status: str
    reason: str | None = None
    received_at: str | None = None
    retention_date: str | None = None
    rows_landed: int | None = None
    counts: dict[str, Any] = Field(default_factory=dict)


class ReceiptList(BaseModel):
    model_config = example({"items": [Receipt.model_config["json_schema_extra"]["examples"][0]],
                            "scope": "own"})
    items: list[Receipt]
    scope: str


class LinkJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "retrain": False}]})
    retrain: StrictBool = Field(
        False, description="Forget every kept linkage model (JSON true or false): each "
                           "source's is trained again when its rows are next linked, this "
                           "run's now. "
                           "By default a source's model kept from an earlier run is reused "
                           "while the register has changed and aged less than the drift "
                           "policy allows "
                           "(`linkage_retrain_*` in policies/drift.json).")


class ScoreJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "at": "2025-04-01", "seed": 0, "model": None, "purpose": "commissioning"}]})
    at: dt.date
    seed: int = Field(0, ge=0, le=2**31 - 1)
    model: Literal["rule", "logistic", "boosting", "blend"] | None = Field(
        None, description="Candidate model to score with; by default the best on validation.")
    purpose: Literal["commissioning", "case_finding"] = Field(
        "commissioning", description="Purpose the run is scored for: its opt-out rules decide "
                                     "what the model may read, and which callers it answers.")


class Job(BaseModel):
    model_config = example({"job_id": "job-20250402091403-a1b2c3", "kind": "score",
                            "status": "complete", "org": "X26",
                            "created_at": "2025-04-02T09:14:03+00:00",
                            "finished_at": "2025-04-02T09:16:40+00:00",
                            "result": {"run_id": "score-2025-04-01-jkbmcoepflen",
                                       "persons": 19412}, "error": None})
    job_id: str
    kind: str
    status: Literal["queued", "running", "complete", "failed"]
    org: str
    created_at: str
    finished_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "recipient": "RR8", "format": "csv", "tiers": ["very_high", "high"],
        "practice": None}]})
    recipient: str = Field(pattern=ODS, description="ODS code of the named recipient.")
    format: Literal["parquet", "csv"] = "parquet"
    tiers: list[Literal["very_high", "high", "moderate", "low"]] = Field(default_factory=list)
    practice: str | None = Field(None, pattern=ODS)


class Export(BaseModel):
    model_config = example({"export_id": "exp-20250402-5e6f7a8b", "recipient": "RR8",
                            "format": "csv", "rows": 1043, "run_id":
                            "score-2025-04-01-jkbmcoepflen", "sha256": "9f86d08...",
                            "created_at": "2025-04-02T09:20:00+00:00", "org": "X26",
                            "columns": ["recipient_key", "tier", "probability_band",
                                        "practice", "age_band", "sex", "conditions_count"],
                            "k": 10})
    export_id: str
    recipient: str
    format: str
    rows: int
    run_id: str
    sha256: str
    created_at: str
    org: str
    columns: list[str] | None = Field(None, description="The file's columns: only those the "
                                                        "purpose needs (policies/release.json).")
    k: int | None = Field(None, description="Every combination of the released columns is "
                                            "shared by at least k persons of the file.")


class AuditEntry(BaseModel):
    seq: int
    at: str
    actor: str
    role: str
    org: str
    purpose: str
    action: str
    resource: str
    n_records: int
    outcome: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    model_config = example({"items": [{
        "seq": 812, "at": "2025-04-02T09:14:03.120000+00:00", "actor": "dr.mdt",
        "role": "mdt_clinician", "org": "B86001", "purpose": "case_finding",
        "action": "reidentify.create", "resource": "/reidentify", "n_records": 2,
        "outcome": "ok", "detail": {"method": "POST", "status": 200, "reason": "mdt_review"}}],
        "next_after": 812})
    items: list[AuditEntry]
    next_after: int | None


class Verification(BaseModel):
    model_config = example({"ok": True, "entries": 812, "head": "4be1c0...", "finding": None,
                            "details": []})
    ok: bool
    entries: int
    head: str
    finding: dict[str, Any] | None
    details: list[str]


class Certificate(BaseModel):
    model_config = example({"certificate_id": "dc-20250402-1a2b", "at": "2025-04-02T02:00:00Z",
                            "actor": "haven", "schedule": "retention",
                            "extract_ids": ["20220401-apc-0a1b2c3d"],
                            "counts": {"rows": 120443}, "manifest_digest": "e3b0c4...",
                            "audit_seq": 790})
    certificate_id: str
    at: str
    actor: str
    schedule: str
    extract_ids: list[str]
    counts: dict[str, Any]
    manifest_digest: str
    audit_seq: int | None


class CertificateList(BaseModel):
    model_config = example({"items": [Certificate.model_config["json_schema_extra"]
                                      ["examples"][0]]})
    items: list[Certificate]


class RetentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"dry_run": True}]})
    dry_run: bool = True


class RetentionAnswer(BaseModel):
    model_config = example({"dry_run": True, "due": [
        {"extract_id": "20220401-apc-0a1b2c3d", "source": "apc"}], "result": {
        "certificate_id": "dc-20250402-1a2b", "counts": {"extracts": 1, "rows": 120443},
        "manifest_digest": "e3b0c4..."}})
    dry_run: bool
    due: list[dict[str, Any]]
    result: dict[str, Any] | None


class OptoutReport(BaseModel):
    model_config = example({"as_of": "2025-04-02",
                            "by_type": {"consent_withdrawn": "*", "ndoo": 300, "type1": 90},
                            "by_type_and_purpose": {"ndoo": {"commissioning": 300,
                                                             "case_finding": 0}},
                            "withheld_from_current_runs": {"commissioning": {
                                "run_id": "score-2025-04-01-jkbmcoepflen", "persons": 3}}})
    as_of: str
    by_type: dict[str, int | str]
    by_type_and_purpose: dict[str, dict[str, int | str]]
    withheld_from_current_runs: dict[str, dict[str, Any]]


class PolicyTable(BaseModel):
    model_config = example({"name": "retention.csv", "overridden": False,
                            "content": "source,retain_months,basis\napc,36,...\n"})
    name: str
    overridden: bool
    content: str


class PolicyTableList(BaseModel):
    model_config = example({"items": [{"name": "retention.csv", "overridden": False}]})
    items: list[dict[str, Any]]


class PolicyTableUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "content": "source,retain_months,basis\napc,36,24-month history + 12-month outcome\n"}]})
    content: str = Field(min_length=1, max_length=200_000)


class User(BaseModel):
    model_config = example({"user_id": "dr.mdt", "org": "B86001", "roles": ["mdt_clinician"],
                            "active": True, "created_at": "2025-04-01T08:00:00+00:00",
                            "active_tokens": 1})
    user_id: str
    org: str
    roles: list[str]
    active: bool
    created_at: str
    active_tokens: int


class UserList(BaseModel):
    model_config = example({"items": [User.model_config["json_schema_extra"]["examples"][0]]})
    items: list[User]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "user_id": "dr.mdt", "org": "B86001", "roles": ["mdt_clinician"]}]})
    user_id: str = Field(min_length=2, max_length=64)
    org: str = Field(min_length=3, max_length=10)
    roles: list[str] = Field(min_length=1, max_length=8)


class Token(BaseModel):
    """A token is shown once; only its SHA-256 is kept."""

    model_config = example({"user_id": "dr.mdt", "token": "hvn_q3J...", "revoked": 0})
    user_id: str
    token: str | None = None
    revoked: int = 0


class KeyRotated(BaseModel):
    model_config = example({"purpose": "vault", "key_id": "v2-a1b2c3", "reencrypted": 10412})
    purpose: str
    key_id: str
    reencrypted: int


class AccessRules(BaseModel):
    model_config = example({"p": [["analyst", "*", "aggregate", "read", "commissioning", "*",
                                   "any"]], "g": [["super_user", "analyst", "*"]]})
    p: list[list[str]]
    g: list[list[str]]


class AccessRuleChange(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "ptype": "p",
        "rule": ["analyst", "*", "aggregate", "read", "commissioning", "*", "any"]}]})
    ptype: Literal["p", "g"]
    rule: list[str] = Field(min_length=3, max_length=7)


class Changed(BaseModel):
    model_config = example({"changed": True})
    changed: bool


class AccessPolicyChangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "ptype": "g", "rule": ["analyst", "super_user", "*"], "op": "add"}]})
    ptype: Literal["p", "g"]
    rule: list[Annotated[str, Field(max_length=100)]] = Field(min_length=3, max_length=7)
    op: Literal["add", "remove"] = "add"


class AccessPolicyChange(BaseModel):
    """A change to the access rules: `applied` at once (it widened no access to person-level
    data), or `pending` until an IG lead `approved` (and it was applied) or `rejected` it.
    `ptype` u is an account (`op` add, rule: user, organisation, roles) or a token (`op`
    token, rule: user) for a user holding a person-level role; its approval alone answers
    `token`, once."""

    model_config = example({
        "change_id": "apc-kmpqrstvwxyz", "ptype": "g", "rule": ["analyst", "super_user", "*"],
        "op": "add", "status": "pending", "proposed_by": "admin", "proposed_at":
        "2025-04-02T09:30:00+00:00", "decided_by": None, "decided_at": None, "changed": None})
    change_id: str
    ptype: str
    rule: list[str]
    op: Literal["add", "remove", "token"]
    status: Literal["applied", "pending", "approved", "rejected"]
    proposed_by: str
    proposed_at: str
    decided_by: str | None = None
    decided_at: str | None = None
    changed: bool | None = None
    token: str | None = None


class AccessPolicyChangeList(BaseModel):
    model_config = example({"items": []})
    items: list[AccessPolicyChange]
