"""Model approval (governance/model_approvals.py), the drift policy table
(governance/drift_policy.py) and migration 0005: who may decide, what is kept and audited."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text, update

from governance import drift_policy, model_approvals, policy_tables
from governance.audit import Actor
from governance.schema import audit_log, models, users
from governance.settings import Settings
from policies import POLICIES_DIR

CSO = Actor("cara.cso", "clinical_safety_officer", "X26", "clinical_safety")
IG = Actor("ivy.iglead", "ig_lead", "X26", "governance")
DESCRIPTION = {"version": "1", "algorithm": "boosting", "train_window": ["a", "b"]}


def _candidate(haven, description=DESCRIPTION, run_id="score-x") -> str:
    model = model_approvals.model_id(description)
    with haven.engine.begin() as connection:
        assert model_approvals.record_candidate(connection, model, run_id, "commissioning",
                                                description["algorithm"],
                                                description) in ("candidate", "approved")
    return model


def _entries(haven, action: str) -> list:
    with haven.engine.connect() as connection:
        return connection.execute(select(audit_log).where(audit_log.c.action == action)).all()


def test_model_id_is_a_stable_digest_of_the_description():
    first = model_approvals.model_id(DESCRIPTION)
    assert first == model_approvals.model_id(dict(reversed(list(DESCRIPTION.items()))))
    assert re.fullmatch(r"model-[a-p]{12}", first)  # no digit: never read as an NHS number
    assert first != model_approvals.model_id({**DESCRIPTION, "algorithm": "logistic"})


def test_a_candidate_is_approved_by_a_clinical_safety_officer_with_a_reason(haven):
    model = _candidate(haven)
    assert model_approvals.approved_models(haven.engine) == []
    assert model_approvals.in_force(haven.engine) is None
    assert model_approvals.list_models(haven.engine)[0]["status"] == "candidate"
    done = model_approvals.decide(haven.engine, CSO, model, "approve", "  validated  ")
    assert (done["status"], done["decided_by"], done["decided_role"], done["reason"]) == (
        "approved", "cara.cso", "clinical_safety_officer", "validated")
    assert dt.datetime.fromisoformat(done["decided_at"]).tzinfo is not None
    assert model_approvals.approved_models(haven.engine) == [model]
    assert model_approvals.in_force(haven.engine)["model_id"] == model
    (entry,) = _entries(haven, "model.approve")
    assert (entry.actor, entry.role, entry.outcome) == ("cara.cso", "clinical_safety_officer",
                                                        "ok")
    assert entry.detail["reason"] == "validated" and entry.resource == f"model/{model}"
    # The same model trained again keeps its decision.
    assert _candidate(haven) == model
    assert model_approvals.get_model(haven.engine, model)["status"] == "approved"


def test_any_other_role_is_refused_and_the_refusal_audited(haven):
    model = _candidate(haven)
    for actor in (IG, Actor("sam", "super_user", "X26", "commissioning"),
                  Actor("haven", "system", "HAVEN")):
        with pytest.raises(model_approvals.NotAllowed, match="only a clinical_safety_officer"):
            model_approvals.decide(haven.engine, actor, model, "approve", "looks fine")
    refused = _entries(haven, "model.approve")
    assert [e.outcome for e in refused] == ["refused"] * 3
    assert [e.role for e in refused] == ["ig_lead", "super_user", "system"]
    assert model_approvals.get_model(haven.engine, model)["status"] == "candidate"
    assert model_approvals.approved_models(haven.engine) == []


def test_a_rejection_is_final_and_bad_decisions_say_why(haven):
    model = _candidate(haven)
    with pytest.raises(model_approvals.ModelError, match="approve or reject"):
        model_approvals.decide(haven.engine, CSO, model, "bless", "why not")
    with pytest.raises(model_approvals.ModelError, match="3-500 characters"):
        model_approvals.decide(haven.engine, CSO, model, "reject", " x ")
    for hidden in ("see 999 000 0018", "see 99 90 00 00 18", "see 9 9 9 0 0 0 0 0 1 8",
                   "ref 9990000018abcdef", "see 9990 000 018"):
        with pytest.raises(model_approvals.ModelError, match="NHS number"):
            model_approvals.decide(haven.engine, CSO, model, "reject", hidden)
    with pytest.raises(model_approvals.ModelError, match="no model"):
        model_approvals.decide(haven.engine, CSO, "model-aaaaaaaaaaaa", "reject", "unknown")
    assert model_approvals.check_reason(" reviewed 2026-12-04 12:30, ticket 123456789012 ") \
        == "reviewed 2026-12-04 12:30, ticket 123456789012"  # a date-time, a long reference
    done = model_approvals.decide(haven.engine, CSO, model, "reject", "calibration poor")
    assert done["status"] == "rejected"
    with pytest.raises(model_approvals.ModelError, match="already rejected"):
        model_approvals.decide(haven.engine, CSO, model, "approve", "changed my mind")
    assert [e.outcome for e in _entries(haven, "model.reject")] == ["ok"]
    assert model_approvals.get_model(haven.engine, "model-aaaaaaaaaaaa") is None


def test_the_newest_approval_is_in_force(haven):
    first = _candidate(haven)
    second = _candidate(haven, {**DESCRIPTION, "train_window": ["c", "d"]}, "score-y")
    model_approvals.decide(haven.engine, CSO, first, "approve", "first")
    model_approvals.decide(haven.engine, CSO, second, "approve", "second")
    assert model_approvals.approved_models(haven.engine) == [second, first]
    with haven.engine.begin() as connection:  # a naive timestamp (SQLite) reads as UTC
        connection.execute(update(models).where(models.c.model_id == first).values(
            decided_at=dt.datetime(2030, 1, 1)))
    assert model_approvals.in_force(haven.engine)["model_id"] == first


def test_a_model_is_flagged_for_retraining_with_what_was_measured(haven):
    model = _candidate(haven)
    model_approvals.flag_retrain(haven.engine, CSO, model, {"auroc": 0.61})
    flag = model_approvals.get_model(haven.engine, model)["retrain_flag"]
    assert flag["auroc"] == 0.61 and "at" in flag
    assert _entries(haven, "model.flag_retrain")[0].detail["auroc"] == 0.61
    with pytest.raises(model_approvals.ModelError, match="no model"):
        model_approvals.flag_retrain(haven.engine, CSO, "model-aaaaaaaaaaaa", {})


def test_the_command_lines_actor_is_a_registered_user_in_their_role(haven):
    now = dt.datetime.now(dt.UTC)
    with haven.engine.begin() as connection:
        connection.execute(insert(users), [
            {"user_id": "cara.cso", "org": "X26", "roles": ["analyst", "clinical_safety_officer"],
             "created_at": now, "active": True},
            {"user_id": "ivy.iglead", "org": "X26", "roles": ["ig_lead"], "created_at": now,
             "active": True},
            {"user_id": "gone", "org": "X26", "roles": ["clinical_safety_officer"],
             "created_at": now, "active": False},
            {"user_id": "nobody", "org": "X26", "roles": [], "created_at": now, "active": True}])
    assert model_approvals.acting_user(haven.engine, "cara.cso") == CSO
    assert model_approvals.acting_user(haven.engine, "ivy.iglead").role == "ig_lead"
    assert model_approvals.acting_user(haven.engine, "nobody").role == "none"
    for name in ("gone", "unknown"):
        with pytest.raises(model_approvals.ModelError, match="no active user"):
            model_approvals.acting_user(haven.engine, name)


def test_the_drift_policy_is_checked_and_an_ig_leads_version_is_in_force(haven):
    shipped = drift_policy.load_drift()
    assert shipped["min_auroc"] == 0.7 and shipped["calibration_slope"] == [0.8, 1.2]
    assert drift_policy.load_drift(haven.engine) == shipped
    good = json.loads((POLICIES_DIR / "drift.json").read_text())
    for change, message in (({"feature_psi": -1}, "feature_psi must be a number"),
                            ({"score_psi": True}, "score_psi must be a number"),
                            ({"min_auroc": 1.5}, "at most 1"),
                            ({"calibration_slope": [1.2, 0.8]}, "calibration_slope"),
                            ({"calibration_slope": 1}, "calibration_slope")):
        with pytest.raises(ValueError, match=message):
            policy_tables.validate_policy("drift.json", json.dumps({**good, **change}))
    policy_tables.set_policy(haven.engine, "drift.json",
                             json.dumps({**good, "min_auroc": 0.8}), IG)
    assert drift_policy.load_drift(haven.engine)["min_auroc"] == 0.8


def test_migration_0005_makes_the_table_and_the_roles_rules_once(tmp_path: Path):
    from alembic import command

    from governance.db import alembic_config, engine_for

    rules = text("SELECT ptype, v0, v1, v2, v3, v4, v5, v6 FROM casbin_rule")
    approve = ("p", "clinical_safety_officer", "*", "model", "approve", "clinical_safety", "*",
               "any")
    role = ("g", "clinical_safety_officer", "authenticated", "*", None, None, None, None)
    for seeded in (False, True):
        engine = engine_for(Settings(home=tmp_path / f"seeded-{seeded}"))
        config = alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0004")
            if seeded:  # a policy seeded before 0005, one of its rules added by hand already
                connection.execute(text(
                    "INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4, v5, v6) VALUES "
                    "('p', 'clinical_safety_officer', '*', 'model', 'approve', "
                    "'clinical_safety', '*', 'any')"))
            command.upgrade(config, "0005")
            found = [tuple(r) for r in connection.execute(rules)]
            assert found.count(approve) == (1 if seeded else 0)
            assert (role in found) is seeded
            connection.execute(text("SELECT count(*) FROM models"))
            command.downgrade(config, "0004")
            assert approve not in [tuple(r) for r in connection.execute(rules)]
            assert "models" not in {r[0] for r in connection.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'table'"))}
        engine.dispose()


def test_of_two_racing_decisions_only_one_is_recorded(haven):
    """Promise: a decision is final even when two arrive together (two API workers, or the API
    and the command line): the one whose update lands second is refused and leaves no trace.
    The race is made deterministic: a rejection lands after the approval read the candidate
    status and before it wrote."""
    from sqlalchemy import event

    model = _candidate(haven)
    raced = []

    def reject_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE MODELS") and not raced:
            raced.append(True)
            cursor.execute(
                "UPDATE models SET status = 'rejected', decided_by = 'other.cso', "
                "decided_role = 'clinical_safety_officer', reason = 'not validated' "
                "WHERE model_id = " + ("%s" if haven.engine.dialect.name == "postgresql"
                                       else "?"), (model,))

    event.listen(haven.engine, "before_cursor_execute", reject_first)
    try:
        with pytest.raises(model_approvals.ModelError, match="decided meanwhile"):
            model_approvals.decide(haven.engine, CSO, model, "approve", "validated")
    finally:
        event.remove(haven.engine, "before_cursor_execute", reject_first)
    assert raced
    # (the competing rejection ran inside the refused transaction here, so it is rolled back
    # with it; what matters is that the approval neither overwrote it nor was recorded)
    assert model_approvals.get_model(haven.engine, model)["status"] != "approved"
    assert model_approvals.approved_models(haven.engine) == []
    assert _entries(haven, "model.approve") == []
