"""Declared incidents for emergency planning, and re-identification during one.

An IG lead or an admin (DECLARERS) declares an incident with a reason, the affected postcode
sectors and an expiry (at most MAX_DAYS ahead); either may end it early. While it is in force
(declared, not ended, not expired) a responder acting for `emergency_planning` may re-identify
the vulnerable adults of its sectors, with a reason: `reidentify` checks, in order, the
purpose (`purpose`), the reason (`reason`), the incident (`incident`: unknown, ended and
expired read alike), that someone is named (`empty`), that every person lives in one of its
sectors (`sector`), opt-outs covering emergency planning (`opt_out`) and the vault
(`not_found`). Every declaration, end and re-identification, allowed or refused, is audited
with counts, the rule that decided and the reason's category, never an NHS number nor the
reason's text (which could name someone; the incident's own reason is kept in its row).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from governance import audit, vault
from governance.audit import Actor
from governance.keys import KeyProvider
from governance.optouts import opted_out
from governance.reidentify import MIN_REASON, Refused, reason_category
from governance.schema import incidents

PURPOSE = "emergency_planning"
DECLARERS = frozenset({"ig_lead", "admin"})
MAX_DAYS = 14
MAX_SECTORS = 200
SECTOR = re.compile(r"^[A-Z]{1,2}[0-9][0-9A-Z]? [0-9]$")


@dataclass(frozen=True)
class Incident:
    """A declared incident as stored."""

    incident_id: str
    reason: str
    sectors: tuple[str, ...]
    declared_by: str
    declared_role: str
    declared_at: dt.datetime
    expires_at: dt.datetime
    ended_by: str | None
    ended_at: dt.datetime | None

    def in_force(self, now: dt.datetime) -> bool:
        """Declared, not ended and not expired at `now`."""
        return self.ended_at is None and _aware(self.expires_at) > now

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        return {"incident_id": self.incident_id, "reason": self.reason,
                "sectors": list(self.sectors), "declared_by": self.declared_by,
                "declared_role": self.declared_role,
                "declared_at": _aware(self.declared_at).isoformat(),
                "expires_at": _aware(self.expires_at).isoformat(),
                "ended_by": self.ended_by,
                "ended_at": _aware(self.ended_at).isoformat() if self.ended_at else None,
                "in_force": self.in_force(now)}


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _now(now: dt.datetime | None) -> dt.datetime:
    return _aware(now) if now is not None else dt.datetime.now(dt.UTC)


def _audit(engine: Engine, actor: Actor, action: str, resource: str, outcome: str,
           rule: str, reason: str, n: int = 0, **more: Any) -> None:
    audit.log(engine, actor, action, resource, n_records=n, outcome=outcome,
              purpose=actor.purpose,
              detail={"rule": rule, "reason_category": reason_category(reason),
                      "reason_chars": len(reason), **more})


def clean_sectors(sectors: Sequence[str]) -> list[str]:
    """Postcode sectors as landed (`LS1 4`: upper case, one space), sorted and distinct;
    ValueError naming the position of the first that is not one."""
    out = set()
    for number, sector in enumerate(sectors, start=1):
        text = " ".join(str(sector).upper().split())
        if not SECTOR.match(text):
            raise ValueError(f"sectors[{number}]: not a postcode sector such as LS1 4")
        out.add(text)
    if not out:
        raise ValueError("sectors: name at least one postcode sector")
    if len(out) > MAX_SECTORS:
        raise ValueError(f"sectors: at most {MAX_SECTORS}")
    return sorted(out)


def declare(engine: Engine, actor: Actor, reason: str, sectors: Sequence[str],
            expires_at: dt.datetime, now: dt.datetime | None = None) -> Incident:
    """Declare an incident; Refused (`role`, `reason`, `sectors`, `expiry`) otherwise. Every
    attempt is audited (`incident.declare`)."""
    now = _now(now)
    reason = (reason or "").strip()

    def refuse(rule: str, message: str) -> Refused:
        _audit(engine, actor, "incident.declare", "incidents", "refused", rule, reason)
        return Refused(rule, message)

    if actor.role not in DECLARERS:
        raise refuse("role", "only an IG lead or an admin may declare an incident")
    if len(reason) < MIN_REASON:
        raise refuse("reason", f"a reason of at least {MIN_REASON} characters is required")
    try:
        cleaned = clean_sectors(sectors)
    except ValueError as exc:
        raise refuse("sectors", str(exc)) from None
    expires_at = _aware(expires_at)
    if not now < expires_at <= now + dt.timedelta(days=MAX_DAYS):
        raise refuse("expiry", f"the expiry must be in the next {MAX_DAYS} days")
    incident = Incident(f"INC-{now:%Y%m%d}-{secrets.token_hex(4)}", reason, tuple(cleaned),
                        actor.user, actor.role, now, expires_at, None, None)
    with engine.begin() as connection:
        connection.execute(insert(incidents).values(
            incident_id=incident.incident_id, reason=reason, sectors=cleaned,
            declared_by=actor.user, declared_role=actor.role, declared_at=now,
            expires_at=expires_at))
        audit.record(connection, actor, "incident.declare", f"incidents/{incident.incident_id}",
                     n_records=len(cleaned), outcome="allowed", purpose=actor.purpose,
                     detail={"rule": "ok", "sectors": cleaned,
                             "expires_at": expires_at.isoformat(),
                             "reason_category": reason_category(reason),
                             "reason_chars": len(reason)})
    return incident


def get(engine: Engine, incident_id: str) -> Incident | None:
    """The incident of that id, or None."""
    with engine.connect() as connection:
        row = connection.execute(select(incidents).where(
            incidents.c.incident_id == incident_id)).mappings().first()
    return None if row is None else _incident(row)


def _incident(row: Any) -> Incident:
    return Incident(row["incident_id"], row["reason"], tuple(row["sectors"]),
                    row["declared_by"], row["declared_role"], row["declared_at"],
                    row["expires_at"], row["ended_by"], row["ended_at"])


def listed(engine: Engine) -> list[Incident]:
    """Every incident, newest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(incidents).order_by(
            incidents.c.declared_at.desc(), incidents.c.incident_id)).mappings().all()
    return [_incident(row) for row in rows]


def end(engine: Engine, actor: Actor, incident_id: str,
        now: dt.datetime | None = None) -> Incident:
    """End an incident in force; Refused (`role`, `incident`) otherwise; audited."""
    now = _now(now)
    found = get(engine, incident_id)

    def refuse(rule: str, message: str) -> Refused:
        _audit(engine, actor, "incident.end", f"incidents/{incident_id}", "refused", rule, "")
        return Refused(rule, message)

    if actor.role not in DECLARERS:
        raise refuse("role", "only an IG lead or an admin may end an incident")
    if found is None or not found.in_force(now):
        raise refuse("incident", "no incident of that id is in force")
    with engine.begin() as connection:
        connection.execute(update(incidents).where(
            incidents.c.incident_id == incident_id).values(ended_by=actor.user, ended_at=now))
        audit.record(connection, actor, "incident.end", f"incidents/{incident_id}",
                     n_records=len(found.sectors), outcome="allowed", purpose=actor.purpose,
                     detail={"rule": "ok"})
    return get(engine, incident_id)  # type: ignore[return-value]


def reidentify(engine: Engine, keys: KeyProvider, requester: Actor, incident_id: str,
               person_ids: Sequence[str], reason: str, sector_of: Callable[[str], str | None],
               now: dt.datetime | None = None) -> dict[str, str]:
    """NHS numbers of `person_ids` (pseudonyms) for a responder during incident
    `incident_id`, or Refused naming the rule (module docstring for the order). The whole
    request is refused if one person fails a rule. Audited as `reidentify` (`via: incident`)."""
    now = _now(now)
    reason = (reason or "").strip()
    n = len(person_ids)
    resource = f"incidents/{incident_id}" if re.fullmatch(r"[A-Za-z0-9-]{1,40}", incident_id) \
        else "incidents/-"

    def refuse(rule: str, message: str) -> Refused:
        _audit(engine, requester, "reidentify", resource, "refused", rule, reason, n,
               via="incident")
        return Refused(rule, message)

    if requester.purpose != PURPOSE:
        raise refuse("purpose", f"re-identification in an incident is only for the {PURPOSE} "
                                "purpose")
    if len(reason) < MIN_REASON:
        raise refuse("reason", f"a reason of at least {MIN_REASON} characters is required")
    incident = get(engine, incident_id)
    if incident is None or not incident.in_force(now):
        raise refuse("incident", "no incident of that id is in force")
    if n == 0:
        raise refuse("empty", "no persons were named")
    outside = sum(sector_of(p) not in incident.sectors for p in person_ids)
    if outside:
        raise refuse("sector", f"{outside} of {n} persons do not live in the incident's "
                               "sectors")
    opted = int(opted_out(engine, list(person_ids), PURPOSE, now.date()).sum())
    if opted:
        raise refuse("opt_out", f"{opted} of {n} persons have an opt-out covering {PURPOSE}")
    with engine.connect() as connection:
        found = vault.reveal(connection, keys, list(person_ids))
    if len(found) < n:
        raise refuse("not_found", f"{n - len(found)} of {n} persons are not in the vault")
    _audit(engine, requester, "reidentify", resource, "allowed", "ok", reason, n,
           via="incident")
    return found
