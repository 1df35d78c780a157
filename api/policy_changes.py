"""Changes to the access rules, with a second person for those that widen access.

An admin proposes a change (`propose`). One that only narrows access, or widens it to nothing
person-level, applies at once; one that widens access to person-level data
(`AccessPolicy.widens`) waits, pending, for an IG lead to `approve` or `reject` it. Nobody
decides their own change: not the admin who proposed it, nor an account that admin created,
reset or issued a token to (the audit log says who did). Every step is kept in
`access_policy_changes` and written to the audit log in the same transaction.

Giving someone an account or a token is the other way to reach person-level data, so it goes
the same way (`propose_user`, `propose_token`; `ptype` "u", the rule `[user, org, *roles]` or
`[user]`, `op` "add" or "token"): for a user holding any role that `AccessPolicy.
person_level_roles` names, the admin's request waits and nothing is created; on approval the
account is made or the token issued by the approver, and the token is answered once, to the
approver, who hands it to its holder (the admin who asked never sees it, so cannot use it).
Nobody approves an account or token for themselves, and an account an admin asked for cannot
decide that admin's changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, update

from api.authz import AccessPolicy
from api.users import UserError, add_user, checked_user, issue_token, user_exists, user_roles
from governance import audit
from governance.audit import Actor
from governance.schema import access_policy_changes as changes
from governance.schema import audit_log

ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz"  # letters only: an id never holds a digit run
CHANGE_ID = r"^apc-[a-z]{12}$"
# Audit actions by which one user gives (or asks to give) another an account or a token.
ACCOUNT_ACTIONS = ("user.add", "user.replace", "token.issue", "user.propose")
DECISIONS = {"approved": "access_policy.approve", "rejected": "access_policy.reject"}
USER = "u"  # a change that gives a user an account ("add") or a token ("token")


class ChangeError(Exception):
    """A change cannot be decided; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Change:
    change_id: str
    ptype: str
    rule: list[str]
    op: str
    status: str
    proposed_by: str
    proposed_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    changed: bool | None = None
    token: str | None = None  # an approved account's or token change's token, answered once

    def to_json(self) -> dict[str, Any]:
        found = {"change_id": self.change_id, "ptype": self.ptype, "rule": list(self.rule),
                 "op": self.op, "status": self.status, "proposed_by": self.proposed_by,
                 "proposed_at": _iso(self.proposed_at), "decided_by": self.decided_by,
                 "decided_at": _iso(self.decided_at), "changed": self.changed}
        if self.token is not None:
            found["token"] = self.token
        return found


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def _new_id() -> str:
    return "apc-" + "".join(secrets.choice(ID_ALPHABET) for _ in range(12))


def _change(row: Any) -> Change:
    return Change(row.change_id, row.ptype, list(row.rule), row.op, row.status, row.proposed_by,
                  row.proposed_at, row.decided_by, row.decided_at, row.changed)


def propose(policy: AccessPolicy, actor: Actor, ptype: str, rule: Sequence[str],
            add: bool) -> Change:
    """Apply a change that widens nothing person-level at once; keep any other pending.

    Raises PolicyError (naming the field) for a rule that is not well formed."""
    rule = policy.checked(ptype, rule)
    op = "add" if add else "remove"
    now = datetime.now(UTC)
    change_id = _new_id()
    values = {"change_id": change_id, "ptype": ptype, "rule": rule, "op": op,
              "proposed_by": actor.user, "proposed_org": actor.org, "proposed_at": now}
    if policy.widens(ptype, rule, add):
        with policy.engine.begin() as connection:
            connection.execute(changes.insert().values(status="pending", **values))
            audit.record(connection, actor, "access_policy.propose",
                         f"access_policy/{change_id}", n_records=1,
                         detail={"change_id": change_id, "ptype": ptype, "rule": rule,
                                 "op": op})
        return Change(change_id, ptype, rule, op, "pending", actor.user, now)
    changed = policy.change(actor, ptype, rule, add)
    with policy.engine.begin() as connection:
        connection.execute(changes.insert().values(status="applied", decided_by=actor.user,
                                                   decided_at=now, changed=changed, **values))
    return Change(change_id, ptype, rule, op, "applied", actor.user, now, actor.user, now,
                  changed)


def _propose_user(policy: AccessPolicy, actor: Actor, rule: list[str], op: str) -> Change:
    now = datetime.now(UTC)
    change_id = _new_id()
    with policy.engine.begin() as connection:
        connection.execute(changes.insert().values(
            change_id=change_id, ptype=USER, rule=rule, op=op, status="pending",
            proposed_by=actor.user, proposed_org=actor.org, proposed_at=now))
        audit.record(connection, actor, "user.propose", f"user/{rule[0]}", n_records=1,
                     detail={"change_id": change_id, "op": op, "rule": rule})
    return Change(change_id, USER, rule, op, "pending", actor.user, now)


def propose_user(policy: AccessPolicy, actor: Actor, user_id: str, org: str,
                 roles: Sequence[str]) -> Change | None:
    """A pending change for a new user holding a person-level role; None when the user may be
    added at once (no such role). Raises UserError for a user that cannot be added."""
    org, roles = checked_user(user_id, org, roles, policy.roles())
    if user_exists(policy.engine, user_id):
        raise UserError(f"user: {user_id} already exists")
    if not policy.person_level_roles(roles):
        return None
    return _propose_user(policy, actor, [user_id, org, *roles], "add")


def propose_token(policy: AccessPolicy, actor: Actor, user_id: str) -> Change | None:
    """A pending change for a further token for a user holding a person-level role; None when
    it may be issued at once. Raises LookupError for no such active user."""
    roles = user_roles(policy.engine, user_id)
    if roles is None:
        raise LookupError("no such active user")
    if not policy.person_level_roles(roles):
        return None
    return _propose_user(policy, actor, [user_id], "token")


def listed(engine: Engine, status: str | None = None, limit: int = 100) -> list[Change]:
    """Changes, newest first (only those of `status` when given)."""
    query = select(changes).order_by(changes.c.proposed_at.desc()).limit(limit)
    if status:
        query = query.where(changes.c.status == status)
    with engine.connect() as connection:
        return [_change(row) for row in connection.execute(query)]


def _pending(engine: Engine, change_id: str, decider: Actor) -> Change:
    with engine.connect() as connection:
        row = connection.execute(select(changes).where(changes.c.change_id == change_id)).first()
        if row is None:
            raise ChangeError(404, "no such access policy change")
        change = _change(row)
        if change.status != "pending":
            raise ChangeError(409, f"this change is {change.status}, not pending")
        if change.proposed_by == decider.user:
            raise ChangeError(403, "nobody decides their own change: another IG lead must")
        if change.ptype == USER and change.rule[0] == decider.user:
            raise ChangeError(403, "nobody decides their own account or token: another IG "
                                   "lead must")
        vouched = connection.scalar(select(func.count()).select_from(audit_log).where(
            audit_log.c.actor == change.proposed_by,
            audit_log.c.action.in_(ACCOUNT_ACTIONS),
            audit_log.c.resource == f"user/{decider.user}"))
    if vouched:
        raise ChangeError(403, "an account the proposer created, reset or issued a token to "
                               "cannot decide their change")
    return change


def _decide(engine: Engine, change: Change, decider: Actor, status: str,
            changed: bool | None = None) -> Change:
    """Record the decision (only if still pending) with its audit entry."""
    now = datetime.now(UTC)
    with engine.begin() as connection:
        claimed = connection.execute(update(changes).where(
            changes.c.change_id == change.change_id, changes.c.status == "pending").values(
            status=status, decided_by=decider.user, decided_at=now, changed=changed)).rowcount
        if not claimed:
            raise ChangeError(409, "this change was decided meanwhile")
        audit.record(connection, decider, DECISIONS[status],
                     f"access_policy/{change.change_id}", n_records=1,
                     detail={"change_id": change.change_id, "proposed_by": change.proposed_by,
                             "ptype": change.ptype, "rule": change.rule, "op": change.op})
    return Change(change.change_id, change.ptype, change.rule, change.op, status,
                  change.proposed_by, change.proposed_at, decider.user, now, changed)


def approve(policy: AccessPolicy, decider: Actor, change_id: str) -> Change:
    """Approve a pending change and apply it (both audited); raises ChangeError."""
    change = _pending(policy.engine, change_id, decider)
    decided = _decide(policy.engine, change, decider, "approved")
    token = None
    try:
        if change.ptype == USER:
            token = _carry_out(policy, decider, change)
            changed = True
        else:
            changed = policy.change(decider, change.ptype, change.rule, change.op == "add",
                                    approved=change.change_id)
    except Exception as exc:
        with policy.engine.begin() as connection:  # not applied: pending again
            connection.execute(update(changes).where(changes.c.change_id == change_id).values(
                status="pending", decided_by=None, decided_at=None))
        if isinstance(exc, (UserError, LookupError)):
            raise ChangeError(409, f"cannot be carried out now: {exc}") from None
        raise
    with policy.engine.begin() as connection:
        connection.execute(update(changes).where(changes.c.change_id == change_id)
                           .values(changed=changed))
    return Change(**{**decided.__dict__, "changed": changed, "token": token})


def _carry_out(policy: AccessPolicy, decider: Actor, change: Change) -> str:
    """Make the account or issue the token an approved user change asks for (audited, by the
    approver, naming the change and its proposer); returns the token."""
    approved = {"change_id": change.change_id, "proposed_by": change.proposed_by}
    if change.op == "add":
        user_id, org, *roles = change.rule
        return add_user(policy.engine, decider, user_id, org, roles, policy.roles(),
                        approved=approved)
    return issue_token(policy.engine, decider, change.rule[0], approved=approved)


def reject(policy: AccessPolicy, decider: Actor, change_id: str) -> Change:
    """Reject a pending change (audited); raises ChangeError."""
    change = _pending(policy.engine, change_id, decider)
    return _decide(policy.engine, change, decider, "rejected")
