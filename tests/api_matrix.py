"""The API's role × endpoint table, and the small world it is tested in.

`MATRIX` is the one place that says which role may call which endpoint: every row is an
endpoint (method, path, body) and the set of roles allowed. `test_api_access.py` runs every
role against every row on both storage backends. `build_world` lands a small GP register,
links it, writes a score run over the linked persons (what `haven score` would write) and adds
one user per role.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient
from sqlalchemy import insert

from api.app import create_app
from api.config import ApiConfig
from api.users import add_user
from factories import person, rows_for, write_extract
from governance.audit import SYSTEM
from governance.schema import runs
from linkage import person_index
from linkage.landing.land import LandingContext, land_file
from pipeline.context import Context as Haven

ROLES = ("analyst", "super_user", "mdt_clinician", "ig_lead", "admin", "council_uploader")
ORGS = {"analyst": "X26", "super_user": "X26", "mdt_clinician": "B86001", "ig_lead": "X26",
        "admin": "X26", "council_uploader": "E08000035"}
OWN_PRACTICE = "B86001"
OTHER_PRACTICE = "B86002"
PERSONS = 40
TIERS = ("very_high", "high", "moderate", "low")
AGE_BANDS = ("0-17", "18-44", "45-64", "65-74", "75-84", "85+")
# Reasons, each with the reason group it was phrased from (stratify.catalogue groups).
REASONS = (("3 emergency admissions in 12 months", "emergency_admissions"),
           ("7 different medicines in 6 months", "polypharmacy"),
           ("receives home care", "social_care"),
           ("2 A&E attendances in 6 months", "ae_attendances"),
           ("aged 84", "age"))
CONDITIONS = ("COPD", "diabetes", "heart failure")


@dataclass
class World:
    haven: Haven
    client: TestClient
    tokens: dict[str, str]
    nhs: dict[str, str]  # person key -> NHS number (synthetic, 999 range)
    practice: dict[str, str]  # person key -> practice
    run_id: str
    inbox: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self, role: str, purpose: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        if purpose:
            headers["X-Purpose-Of-Use"] = purpose
        return headers

    def call(self, role: str | None, method: str, path: str, *, purpose: str | None = None,
             **kwargs: Any) -> Any:
        headers = self.headers(role, purpose) if role else {}
        return self.client.request(method, path, headers={**headers,
                                                          **kwargs.pop("headers", {})},
                                   **kwargs)

    def keys_in(self, practice: str) -> list[str]:
        return sorted(k for k, p in self.practice.items() if p == practice)


def score_rows(keys: list[str], practices: list[str]) -> pd.DataFrame:
    """A score run's rows (docs/landed-schema.md) for these persons: rank i gets tier by i."""
    rows = []
    n = len(keys)
    for i, (key, practice) in enumerate(zip(keys, practices, strict=True)):
        probability = round(0.9 - 0.8 * i / max(n - 1, 1), 4)
        tier = TIERS[min(3, i * 4 // n)]
        picks = [REASONS[(i + j) % len(REASONS)] for j in range(3)]
        previous = probability - 0.05 if i % 3 else None
        rows.append({
            "person_key": key, "probability": probability, "tier": tier,
            "reasons": "; ".join(r for r, _ in picks),
            "reason_group_1": picks[0][1], "reason_group_2": picks[1][1],
            "reason_group_3": picks[2][1],
            "previous_probability": previous,
            "previous_tier": TIERS[min(3, (i + 1) * 4 // n)] if previous else None,
            "change": 0.05 if previous else None,
            "gp_practice_code": practice, "age_band": AGE_BANDS[i % len(AGE_BANDS)],
            "sex": "1" if i % 2 else "2",
            "conditions": ";".join(CONDITIONS[: i % 4]),
            "sources": ";".join(["apc", "gp_events", "gp_patients"]
                                + (["social_care"] if i % 2 == 0 else [])),
        })
    return pd.DataFrame(rows)


def write_score_run(haven: Haven, scores: pd.DataFrame, run_id: str = "score-2025-04-01-test",
                    at: str = "2025-04-01", when: dt.datetime | None = None,
                    purpose: str = "commissioning", extract_ids: list[str] | None = None
                    ) -> str:
    """A score run as `haven score` leaves it: scores.parquet, run.json and a `runs` row."""
    folder = haven.settings.layout.runs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(folder / "scores.parquet", index=False)
    (folder / "run.json").write_text(json.dumps({
        "run_id": run_id, "at": at, "model_version": "test", "model": "rule",
        "thresholds": {}, "extract_ids": {}, "metrics": {}}))
    with haven.engine.begin() as connection:
        connection.execute(insert(runs).values(
            run_id=run_id, kind="score", at=when or dt.datetime.now(dt.UTC), status="complete",
            extract_ids=extract_ids or [],
            summary={"at": at, "model": "rule", "model_version": "test", "purpose": purpose,
                     "persons": len(scores)}))
    return run_id


def build_world(haven: Haven, tmp_path: Path, config: ApiConfig | None = None) -> World:
    inbox = tmp_path / "inbox"
    rows = rows_for("gp_patients", PERSONS, seed=7)
    path = write_extract(inbox, "gp_patients", rows, sender="B86001")
    landing = LandingContext(haven.settings, haven.engine, haven.keys, haven.actor)
    receipt = land_file(landing, path)
    assert receipt.status == "landed", receipt.reason
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"))
    link = person_index.read_link_map(haven.settings)
    by_row = dict(zip(link["row"], link["person_key"], strict=True))
    keys = [by_row[i + 1] for i in range(PERSONS)]
    practices = [person(i, rows[i]["nhs_number"])["gp_practice_code"] for i in range(PERSONS)]
    run_id = write_score_run(haven, score_rows(keys, practices),
                             extract_ids=[receipt.extract_id])
    tokens = {role: add_user(haven.engine, SYSTEM, role.replace("_", "-"), ORGS[role], [role],
                             ROLES) for role in ROLES}
    app = create_app(haven.settings, engine=haven.engine, keys=haven.keys,
                     config=config or ApiConfig(refresh_seconds=0, token_cache_seconds=0))
    client = TestClient(app, raise_server_exceptions=False)
    return World(haven=haven, client=client, tokens=tokens,
                 nhs={k: rows[i]["nhs_number"] for i, k in enumerate(keys)},
                 practice=dict(zip(keys, practices, strict=True)), run_id=run_id, inbox=inbox)


def land_optout(world: World, person_key: str, kind: str = "ndoo") -> None:
    """An opt-out for one of the world's persons lands (after the run was scored)."""
    optout = rows_for("optouts", 1, seed=3)[0]
    optout.update(nhs_number=world.nhs[person_key], optout_type=kind)
    path = write_extract(world.inbox / f"optout-{person_key}", "optouts", [optout],
                         sender="X26")
    haven = world.haven
    receipt = land_file(LandingContext(haven.settings, haven.engine, haven.keys, haven.actor),
                        path)
    assert receipt.status == "landed", receipt.reason


# --------------------------------------------------------------------------------------------
# The matrix: (method, path, body) -> roles allowed. `{own}` is the MDT's own practice and
# `{person}` one of its persons; `{other}` another practice. A body is JSON unless noted.
# --------------------------------------------------------------------------------------------
ANALYSTS = {"analyst", "super_user"}
EVERYONE = set(ROLES)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    allowed: frozenset[str]
    body: dict[str, Any] | None = None
    multipart: bool = False


def _e(method: str, path: str, allowed: set[str], body: dict[str, Any] | None = None,
       multipart: bool = False) -> Endpoint:
    return Endpoint(method, path, frozenset(allowed), body, multipart)


MATRIX: tuple[Endpoint, ...] = (
    _e("GET", "/health", EVERYONE),
    _e("GET", "/openapi.json", EVERYONE),
    _e("GET", "/docs", EVERYONE),
    _e("GET", "/whoami", EVERYONE),
    _e("GET", "/practices/{own}/case-finding", {"mdt_clinician"}),
    _e("GET", "/practices/{other}/case-finding", set()),
    _e("GET", "/risk/persons", ANALYSTS),
    _e("GET", "/persons/{person}", ANALYSTS | {"mdt_clinician"}),
    _e("GET", "/persons/{other_person}", ANALYSTS),
    _e("GET", "/persons/{person}/fhir", {"mdt_clinician"}),
    _e("GET", "/aggregates?by=tier", ANALYSTS),
    _e("GET", "/runs/current", ANALYSTS | {"mdt_clinician"}),
    _e("POST", "/reidentify", {"mdt_clinician"},
       {"person_keys": ["{person}"], "reason": "mdt_review"}),
    _e("POST", "/reverse-lookup", {"mdt_clinician"},
       {"nhs_numbers": ["{person_nhs}"], "reason": "mdt_review"}),
    _e("POST", "/extracts", {"council_uploader"}, multipart=True),
    _e("GET", "/extracts", {"council_uploader", "ig_lead"}),
    _e("POST", "/jobs/link", {"super_user"}),
    _e("POST", "/jobs/score", {"super_user"}, {"at": "2025-04-01", "model": "rule"}),
    _e("POST", "/exports", {"super_user"}, {"recipient": "RR8", "format": "csv"}),
    _e("GET", "/audit?limit=5", {"ig_lead"}),
    _e("GET", "/audit/export?format=jsonl", {"ig_lead"}),
    _e("GET", "/audit/verify", {"ig_lead"}),
    _e("GET", "/destruction-certificates", {"ig_lead"}),
    _e("POST", "/retention/run", {"ig_lead"}, {"dry_run": True}),
    _e("GET", "/optouts/report", {"ig_lead"}),
    _e("GET", "/policy-tables", {"ig_lead"}),
    _e("GET", "/policy-tables/retention.csv", {"ig_lead"}),
    _e("GET", "/access-policy", {"admin", "ig_lead"}),
    _e("POST", "/access-policy/rules", {"admin"},
       {"ptype": "g", "rule": ["analyst", "authenticated", "*"]}),
    _e("GET", "/access-policy/changes", {"admin", "ig_lead"}),
    _e("POST", "/access-policy/changes", {"admin"},
       {"ptype": "g", "rule": ["analyst", "authenticated", "*"], "op": "add"}),
    _e("POST", "/access-policy/changes/apc-abcdefghijkm/approve", {"ig_lead"}),
    _e("POST", "/access-policy/changes/apc-abcdefghijkm/reject", {"ig_lead"}),
    # Issue 14 parts 1-3: journeys, costs and segments (no run yet: 409 to those allowed).
    _e("GET", "/analyses/journeys", ANALYSTS),
    _e("GET", "/analyses/segments/tables/segment_shares", ANALYSTS),
    _e("GET", "/analyses/costs/records", ANALYSTS),
    _e("GET", "/analyses/unit-costs/table", ANALYSTS),
    _e("PUT", "/analyses/unit-costs/table", {"super_user"}, {"not": "a table"}),
    _e("GET", "/users", {"admin"}),
    _e("POST", "/users/analyst/tokens", {"admin"}),
    _e("POST", "/keys/vault/rotate", {"admin"}),
    # Issue 14 parts 4-6 (planners and responders are tried in tests/security/
    # test_emergency_planning.py; an incident is declared there, with a live expiry).
    _e("GET", "/impact/evaluations", ANALYSTS),
    _e("GET", "/impact/forecast", ANALYSTS),
    _e("GET", "/emergency/vulnerable", set()),
    _e("GET", "/incidents", {"ig_lead", "admin"}),
    _e("POST", "/incidents/INC-20250101-abcdef12/end", {"ig_lead", "admin"}),
    _e("POST", "/incidents/INC-20250101-abcdef12/reidentify", set(),
       {"reason": "flood rescue visits"}),
)
