"""Users and their bearer tokens: shared by `haven users ...` and the admin endpoints.

A token is shown once, when it is issued; only its SHA-256 is stored (`tokens` table), so a copy
of the database does not hold a usable token. Every change is audited in the same transaction.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update

from governance import audit
from governance.audit import Actor
from governance.schema import tokens, users
from pipeline.land import SENDER_RE

USER_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
TOKEN_PREFIX = "hvn_"


class UserError(ValueError):
    """A user could not be added or changed; the message names the field."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: user, organisation (ODS code), roles, and how they proved it."""

    user: str
    org: str
    roles: tuple[str, ...]
    method: str  # token | oidc | none

    @property
    def authenticated(self) -> bool:
        return self.method != "none"


ANONYMOUS = Principal(user="anonymous", org="-", roles=("anonymous",), method="none")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_user(user_id: str, org: str, roles: Sequence[str], known_roles: Iterable[str]) -> None:
    if not USER_RE.match(user_id):
        raise UserError("user: 2-64 characters, lower-case letters, digits and . _ @ -")
    if not SENDER_RE.match(org):
        raise UserError("org: not an ODS code")
    if not roles:
        raise UserError("roles: at least one role is required")
    known = set(known_roles)
    unknown = [r for r in roles if r not in known]
    if unknown:
        raise UserError(f"roles: unknown role {unknown[0]!r} (known: {', '.join(sorted(known))})")


def checked_user(user_id: str, org: str, roles: Sequence[str], known_roles: Iterable[str]
                 ) -> tuple[str, list[str]]:
    """The organisation and roles as they would be stored; raises UserError naming the field."""
    org = org.strip().upper()
    roles = list(dict.fromkeys(roles))
    check_user(user_id, org, roles, known_roles)
    return org, roles


def user_roles(engine: Engine, user_id: str) -> list[str] | None:
    """The roles of an active user, or None when there is no such active user."""
    with engine.connect() as connection:
        row = connection.execute(select(users.c.roles).where(
            users.c.user_id == user_id, users.c.active.is_(True))).first()
    return None if row is None else list(row.roles)


def user_exists(engine: Engine, user_id: str) -> bool:
    with engine.connect() as connection:
        return bool(connection.scalar(select(func.count()).select_from(users)
                                      .where(users.c.user_id == user_id)))


def add_user(engine: Engine, actor: Actor, user_id: str, org: str, roles: Sequence[str],
             known_roles: Iterable[str], *, replace: bool = False,
             approved: dict[str, str] | None = None) -> str:
    """Add a user (or, with `replace`, reset one) and return their first token. `approved`
    (change id and proposer) goes into the audit entry when a second person approved it."""
    org, roles = checked_user(user_id, org, roles, known_roles)
    token = new_token()
    now = datetime.now(UTC)
    with engine.begin() as connection:
        exists = connection.scalar(select(func.count()).select_from(users)
                                   .where(users.c.user_id == user_id))
        if exists and not replace:
            raise UserError(f"user: {user_id} already exists")
        if exists:
            connection.execute(update(users).where(users.c.user_id == user_id).values(
                org=org, roles=roles, active=True))
            connection.execute(update(tokens).where(
                and_(tokens.c.user_id == user_id, tokens.c.revoked_at.is_(None)))
                .values(revoked_at=now))
        else:
            connection.execute(insert(users).values(user_id=user_id, org=org, roles=roles,
                                                    created_at=now, active=True))
        connection.execute(insert(tokens).values(token_hash=token_hash(token), user_id=user_id,
                                                 created_at=now))
        audit.record(connection, actor, "user.replace" if exists else "user.add",
                     f"user/{user_id}", detail={"org": org, "roles": roles, **(approved or {})})
    return token


def issue_token(engine: Engine, actor: Actor, user_id: str, *,
                approved: dict[str, str] | None = None) -> str:
    """A further token for an active user (the old ones stay valid until revoked)."""
    token = new_token()
    with engine.begin() as connection:
        active = connection.scalar(select(users.c.active).where(users.c.user_id == user_id))
        if not active:
            raise LookupError("no such active user")
        connection.execute(insert(tokens).values(token_hash=token_hash(token), user_id=user_id,
                                                 created_at=datetime.now(UTC)))
        audit.record(connection, actor, "token.issue", f"user/{user_id}", detail=approved)
    return token


def revoke_user(engine: Engine, actor: Actor, user_id: str) -> int:
    """Deactivate a user and revoke every token they hold; returns how many were revoked."""
    with engine.begin() as connection:
        found = connection.execute(update(users).where(users.c.user_id == user_id)
                                   .values(active=False)).rowcount
        if not found:
            raise LookupError("no such user")
        revoked = connection.execute(update(tokens).where(
            and_(tokens.c.user_id == user_id, tokens.c.revoked_at.is_(None)))
            .values(revoked_at=datetime.now(UTC))).rowcount
        audit.record(connection, actor, "user.revoke", f"user/{user_id}", n_records=revoked)
    return int(revoked or 0)


def list_users(engine: Engine) -> list[dict[str, Any]]:
    live = (select(tokens.c.user_id, func.count().label("n")).where(tokens.c.revoked_at.is_(None))
            .group_by(tokens.c.user_id).subquery())
    with engine.connect() as connection:
        rows = connection.execute(
            select(users, func.coalesce(live.c.n, 0).label("tokens"))
            .outerjoin(live, live.c.user_id == users.c.user_id)
            .order_by(users.c.user_id)).mappings().all()
    return [{"user_id": r["user_id"], "org": r["org"], "roles": list(r["roles"]),
             "active": bool(r["active"]), "created_at": r["created_at"].isoformat(),
             "active_tokens": int(r["tokens"])} for r in rows]


def principal_for_token(engine: Engine, token: str) -> Principal | None:
    """The active user holding this unrevoked token, or None."""
    with engine.connect() as connection:
        row = connection.execute(
            select(users.c.user_id, users.c.org, users.c.roles)
            .join(tokens, tokens.c.user_id == users.c.user_id)
            .where(tokens.c.token_hash == token_hash(token), tokens.c.revoked_at.is_(None),
                   users.c.active.is_(True))).first()
    if row is None:
        return None
    return Principal(user=row.user_id, org=row.org, roles=tuple(row.roles), method="token")
