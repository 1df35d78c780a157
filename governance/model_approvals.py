"""Risk models and their clinical safety decisions: a model serves only once approved.

A risk model that decides whom an MDT sees is health IT under DCB0129/DCB0160: a named person
with a clinical safety role approves it, with a reason, before it serves. Every model
`haven score` trains is recorded here as a `candidate` (`record_candidate`, identified by
`model_id`: a digest of its version, training window, features and algorithm). Only a user in
the `clinical_safety_officer` role may `decide` on a candidate (approve or reject, with a
reason); anyone else is refused, and the refusal is audited as the decisions are.
`pipeline.serving` serves only runs scored by an approved model (`approved_models`).

A decision is final: a rejected model stays rejected, an approved one stays approved until a
newer approval supersedes it (the newest approval is the model in force, `in_force`).
`flag_retrain` marks an approved model whose performance fell past the drift policy's
threshold (`haven refresh`): it keeps serving, flagged, until a new model is approved.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from governance import audit
from governance.audit import Actor
from governance.identifiers import digest_letters, holds_nhs_number_loosely
from governance.schema import models, users

CLINICAL_SAFETY_ROLE = "clinical_safety_officer"
DECISIONS = {"approve": "approved", "reject": "rejected"}
REASON_LIMITS = (3, 500)


class ModelError(ValueError):
    """A decision that cannot be made: unknown model, not a candidate, or a bad reason."""


class NotAllowed(PermissionError):
    """The acting user's role may not decide on models (refused and audited)."""


def model_id(description: dict[str, Any]) -> str:
    """The id of a fitted model: `model-` and the first 12 half-bytes of the SHA-256 of its
    description (version, training window, features, algorithm) as letters a-p, so the same
    model trained again has the same id and keeps its decision, and no id ever holds a run
    of digits that the audit log would take for an NHS number."""
    return "model-" + digest_letters(json.dumps(description, sort_keys=True, default=str))


def record_candidate(connection: Connection, model: str, run_id: str, purpose: str,
                     algorithm: str, description: dict[str, Any]) -> str:
    """Record `model` (trained by score run `run_id`) as a candidate unless it is already
    known; returns its status (a model seen before keeps its decision)."""
    known = connection.execute(select(models.c.status).where(
        models.c.model_id == model)).scalar()
    if known is not None:
        return str(known)
    connection.execute(insert(models).values(
        model_id=model, run_id=run_id, purpose=purpose, algorithm=algorithm,
        description=description, status="candidate", proposed_at=datetime.now(UTC)))
    return "candidate"


def _row(row: Any) -> dict[str, Any]:
    found = dict(row._mapping)
    for name in ("proposed_at", "decided_at"):
        value = found.get(name)
        found[name] = None if value is None else (
            value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return found


def list_models(engine: Engine) -> list[dict[str, Any]]:
    """Every model, newest proposal first, with its status and decision."""
    with engine.connect() as connection:
        rows = connection.execute(select(models).order_by(
            models.c.proposed_at.desc(), models.c.model_id)).all()
    return [_row(r) for r in rows]


def get_model(engine: Engine, model: str) -> dict[str, Any] | None:
    """One model's record, or None."""
    with engine.connect() as connection:
        row = connection.execute(select(models).where(models.c.model_id == model)).first()
    return None if row is None else _row(row)


def approved_models(engine: Engine) -> list[str]:
    """Approved model ids, the newest approval first (the first is the model in force)."""
    with engine.connect() as connection:
        return list(connection.execute(select(models.c.model_id).where(
            models.c.status == "approved").order_by(
            models.c.decided_at.desc(), models.c.model_id)).scalars())


def in_force(engine: Engine) -> dict[str, Any] | None:
    """The approved model that scores refreshed data (the newest approval), or None."""
    approved = approved_models(engine)
    return get_model(engine, approved[0]) if approved else None


def check_reason(reason: str) -> str:
    """The reason, stripped; ModelError unless it is 3-500 characters without an NHS number
    however written (`holds_nhs_number_loosely`: a decision's reason is audited and shown, so
    it may not hold an identifier)."""
    text = (reason or "").strip()
    low, high = REASON_LIMITS
    if not low <= len(text) <= high:
        raise ModelError(f"reason: {low}-{high} characters saying why")
    if holds_nhs_number_loosely(text):
        raise ModelError("reason: may not hold an NHS number, however it is written")
    return text


def decide(engine: Engine, actor: Actor, model: str, decision: str, reason: str
           ) -> dict[str, Any]:
    """Approve or reject candidate `model` with a reason, as `actor`; audited with the
    decision in one transaction. NotAllowed (audited as refused) unless the actor acts in the
    clinical safety officer role; ModelError for an unknown decision or model, a model already
    decided, or a bad reason."""
    if decision not in DECISIONS:
        raise ModelError(f"decision: approve or reject, not {decision!r}")
    action, resource = f"model.{decision}", f"model/{model}"[:200]
    if actor.role != CLINICAL_SAFETY_ROLE:
        audit.log(engine, actor, action, resource, outcome="refused",
                  detail={"refused": f"role {actor.role} may not decide on models; "
                                     f"{CLINICAL_SAFETY_ROLE} may"})
        raise NotAllowed(f"only a {CLINICAL_SAFETY_ROLE} may {decision} a model "
                         f"(acting as {actor.role})")
    text = check_reason(reason)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        status = connection.execute(select(models.c.status).where(
            models.c.model_id == model)).scalar()
        if status is None:
            raise ModelError(f"no model {model!r} (see `haven model list`)")
        if status != "candidate":
            raise ModelError(f"model {model} is already {status}: a decision is final")
        # Conditional on the model still being a candidate: of two decisions racing (two API
        # workers, the API and the command line), exactly one changes the row; the other is
        # told the decision is final, and nothing of it is recorded.
        changed = connection.execute(update(models).where(
            models.c.model_id == model, models.c.status == "candidate").values(
            status=DECISIONS[decision], decided_by=actor.user, decided_role=actor.role,
            decided_at=now, reason=text)).rowcount
        if changed != 1:
            raise ModelError(f"model {model} was decided meanwhile: a decision is final")
        audit.record(connection, actor, action, resource, detail={"reason": text})
    found = get_model(engine, model)
    assert found is not None
    return found


def flag_retrain(engine: Engine, actor: Actor, model: str, detail: dict[str, Any]) -> None:
    """Mark approved `model` for retraining (its performance fell past the drift policy's
    threshold): what was measured is kept with the model and audited."""
    flag = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **detail}
    with engine.begin() as connection:
        changed = connection.execute(update(models).where(
            models.c.model_id == model).values(retrain_flag=flag)).rowcount
        if not changed:
            raise ModelError(f"no model {model!r}")
        audit.record(connection, actor, "model.flag_retrain", f"model/{model}"[:200],
                     detail=flag)


def acting_user(engine: Engine, user: str, org_purpose: str = "clinical_safety") -> Actor:
    """The command line's actor for a decision: the registered, active user `user` (the
    `users` table), in the clinical safety officer role when they hold it, else in their first
    role (which `decide` refuses). ModelError for an unknown or inactive user."""
    with engine.connect() as connection:
        row = connection.execute(select(users.c.org, users.c.roles, users.c.active).where(
            users.c.user_id == user)).first()
    if row is None or not row.active:
        raise ModelError(f"--as: no active user {user!r} (see `haven users list`)")
    roles = list(row.roles or [])
    role = CLINICAL_SAFETY_ROLE if CLINICAL_SAFETY_ROLE in roles else (roles or ["none"])[0]
    return Actor(user=user, role=role, org=row.org, purpose=org_purpose)
