"""Declared incidents for emergency planning, and re-identification during one.

An IG lead or an admin (DECLARERS) declares an incident with a reason (no NHS number in it:
`reason`), the affected postcode sectors, the responding organisations (ODS codes) and an
expiry, within the limits of `policies/incidents.json` (`limits`: sectors, organisations, days
ahead, incidents in force or pending at once: `concurrent`, and the distinct sectors of all of
those together: `total_sectors`). The shipped values are hard ceilings (`CEILINGS`): an IG lead
may lower a limit, never raise it, so no one person opens the whole population. Two people open
a list: an admin's declaration is pending until an IG lead other than the declarer approves it
(`approve`); an IG lead's is in force at once, the IG lead being the governance authority who
approves everyone else's (as for access-rule changes, api/policy_changes.py). Either role may
end one early. While it is in force (approved, not ended, not expired) a responder of one of
its organisations acting for `emergency_planning` may re-identify the vulnerable adults of its
sectors, with a reason: `reidentify` checks, in order, the purpose (`purpose`), the reason
(`reason`), the incident (`incident`: unknown, pending, ended and expired read alike), the
responder's organisation (`organisation`), that someone is named (`empty`), that every person
lives in one of its sectors (`sector`) and the vault (`not_found`). A whole-person opt-out
covering emergency planning (`held_back`: a policy row for every source, `all` scope) holds
back that person only, counted, never refusing the others; an opt-out limited to some sources
or to a sender's data (a council's withdrawn consent) instead removes those rows from what
computes the list (pipeline/incidents.py reads through the purpose's row filter). Every
declaration, approval, end and re-identification, allowed or refused, is audited with counts,
the rule that decided and the reason's category, never an NHS number nor the reason's text (the
incident's own reason is kept in its row, without identifiers, until its retention period after
the incident ended or expired: `destroy_reasons`, which `haven retention run` calls and whose
destruction certificate measures what is left: `reasons_due`).
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
from governance.identifiers import holds_nhs_number_loosely
from governance.keys import KeyProvider
from governance.optouts import ODS_CODE, active_optouts, coverage
from governance.policy_tables import add_months, json_object, policy_text, read_table
from governance.reidentify import MIN_REASON, Refused, reason_category
from governance.schema import extracts, incidents, optouts

PURPOSE = "emergency_planning"
DECLARERS = frozenset({"ig_lead", "admin"})
APPROVERS = frozenset({"ig_lead"})  # an IG lead's declaration needs no second person
POLICY = "incidents.json"
LIMITS = ("max_sectors", "max_concurrent", "max_organisations", "max_days",
          "max_total_sectors")
# The hard ceilings (red-team R1): the shipped values are the most an IG lead may set. An IG
# lead may lower a limit, never raise it, so no one person can open the whole vulnerable
# population to a responder. `max_total_sectors` caps the distinct sectors of every live (in
# force or pending) incident together: three incidents of 20 sectors are 60, not 20.
CEILINGS = {"max_sectors": 20, "max_concurrent": 3, "max_organisations": 5, "max_days": 14,
            "max_total_sectors": 20}
MAX_DAYS = CEILINGS["max_days"]
MAX_SECTORS = 200  # what a request may carry at all (the limit is `max_sectors`)
SECTOR = re.compile(r"^[A-Z]{1,2}[0-9][0-9A-Z]? [0-9]$")
RETENTION = "incidents"  # its row in policies/retention.csv
DESTROYED = ""  # a destroyed reason (the column is not nullable)
NO_IDENTIFIERS = ("reason: holds something shaped like an NHS number; describe the incident "
                  "without identifiers (who is affected is what the list is for)")


def validate_limits(content: str, engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` is a usable incidents table: each of LIMITS a whole
    number from 1 to its ceiling in CEILINGS (`max_total_sectors` may be absent in a table
    from before it: its ceiling applies)."""
    data = json_object(content, POLICY)
    for name in LIMITS:
        value = data.get(name, CEILINGS[name] if name == "max_total_sectors" else None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{POLICY}: {name} must be a whole number of at least 1")
        if value > CEILINGS[name]:
            raise ValueError(f"{POLICY}: {name} must be at most {CEILINGS[name]} (an IG lead "
                             "may lower a limit, never raise it)")


def limits(engine: Engine | None = None) -> dict[str, int]:
    """The limits in force (an IG lead's override of policies/incidents.json, else it)."""
    content = policy_text(POLICY, engine)
    validate_limits(content, engine)
    data = json_object(content, POLICY)
    return {name: int(data.get(name, CEILINGS[name])) for name in LIMITS}


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
    organisations: tuple[str, ...] = ()
    approved_by: str | None = None
    approved_at: dt.datetime | None = None

    def live(self, now: dt.datetime) -> bool:
        """Not ended and not expired at `now` (in force, or pending approval)."""
        return self.ended_at is None and _aware(self.expires_at) > now

    def in_force(self, now: dt.datetime) -> bool:
        """Approved, not ended and not expired at `now`."""
        return self.approved_at is not None and self.live(now)

    def status(self, now: dt.datetime) -> str:
        """`ended`, `expired`, `pending` (awaiting an IG lead) or `in_force`."""
        if self.ended_at is not None:
            return "ended"
        if not self.live(now):
            return "expired"
        return "in_force" if self.approved_at is not None else "pending"

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        """As the API answers it."""
        return {"incident_id": self.incident_id, "reason": self.reason,
                "sectors": list(self.sectors), "organisations": list(self.organisations),
                "declared_by": self.declared_by, "declared_role": self.declared_role,
                "declared_at": _aware(self.declared_at).isoformat(),
                "expires_at": _aware(self.expires_at).isoformat(),
                "approved_by": self.approved_by,
                "approved_at": _iso(self.approved_at),
                "ended_by": self.ended_by, "ended_at": _iso(self.ended_at),
                "status": self.status(now), "in_force": self.in_force(now)}


def _iso(moment: dt.datetime | None) -> str | None:
    return _aware(moment).isoformat() if moment is not None else None


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


def clean_sectors(sectors: Sequence[str], most: int = MAX_SECTORS) -> list[str]:
    """Postcode sectors as landed (`LS1 4`: upper case, one space), sorted and distinct;
    ValueError naming the position of the first that is not one, or the cap `most`."""
    out = set()
    for number, sector in enumerate(sectors, start=1):
        text = " ".join(str(sector).upper().split())
        if not SECTOR.match(text):
            raise ValueError(f"sectors[{number}]: not a postcode sector such as LS1 4")
        out.add(text)
    if not out:
        raise ValueError("sectors: name at least one postcode sector")
    if len(out) > most:
        raise ValueError(f"sectors: at most {most} ({POLICY})")
    return sorted(out)


def clean_organisations(organisations: Sequence[str], most: int) -> list[str]:
    """Responding organisations as ODS codes (upper case), sorted and distinct; ValueError
    naming the position of the first that is not one, or the cap `most`."""
    out = set()
    for number, code in enumerate(organisations, start=1):
        text = str(code).strip().upper()
        if not ODS_CODE.match(text):
            raise ValueError(f"organisations[{number}]: not an ODS code such as X26")
        out.add(text)
    if not out:
        raise ValueError("organisations: name at least one responding organisation")
    if len(out) > most:
        raise ValueError(f"organisations: at most {most} ({POLICY})")
    return sorted(out)


def _live(engine: Engine, now: dt.datetime) -> list[tuple[str, ...]]:
    """The sectors of each live incident (in force or pending) at `now`."""
    with engine.connect() as connection:
        rows = connection.execute(select(incidents.c.expires_at, incidents.c.sectors).where(
            incidents.c.ended_at.is_(None))).all()
    return [tuple(r.sectors) for r in rows if _aware(r.expires_at) > now]


def declare(engine: Engine, actor: Actor, reason: str, sectors: Sequence[str],
            organisations: Sequence[str], expires_at: dt.datetime,
            now: dt.datetime | None = None) -> Incident:
    """Declare an incident: in force at once when an IG lead declares it, pending an IG
    lead's approval when an admin does; Refused (`role`, `reason`, `sectors`,
    `organisations`, `expiry`, `concurrent`, `total_sectors`) otherwise. Every attempt is
    audited
    (`incident.declare`)."""
    now = _now(now)
    reason = (reason or "").strip()

    def refuse(rule: str, message: str) -> Refused:
        _audit(engine, actor, "incident.declare", "incidents", "refused", rule,
               "" if rule == "reason" else reason)
        return Refused(rule, message)

    if actor.role not in DECLARERS:
        raise refuse("role", "only an IG lead or an admin may declare an incident")
    if len(reason) < MIN_REASON:
        raise refuse("reason", f"a reason of at least {MIN_REASON} characters is required")
    if audit.holds_identifier(reason) or holds_nhs_number_loosely(reason):
        raise refuse("reason", NO_IDENTIFIERS)
    cap = limits(engine)
    try:
        cleaned = clean_sectors(sectors, cap["max_sectors"])
    except ValueError as exc:
        raise refuse("sectors", str(exc)) from None
    try:
        orgs = clean_organisations(organisations, cap["max_organisations"])
    except ValueError as exc:
        raise refuse("organisations", str(exc)) from None
    expires_at = _aware(expires_at)
    if not now < expires_at <= now + dt.timedelta(days=cap["max_days"]):
        raise refuse("expiry", f"the expiry must be in the next {cap['max_days']} days")
    live = _live(engine, now)
    if len(live) >= cap["max_concurrent"]:
        raise refuse("concurrent", f"at most {cap['max_concurrent']} incidents may be in "
                                   f"force or pending at once ({POLICY}): end one first")
    together = set(cleaned).union(*live)
    if len(together) > cap["max_total_sectors"]:
        raise refuse("total_sectors", f"live incidents may cover at most "
                                      f"{cap['max_total_sectors']} postcode sectors together "
                                      f"({POLICY}); this would make {len(together)}: end one "
                                      "first")
    approved = actor.role in APPROVERS
    incident = Incident(f"INC-{now:%Y%m%d}-{secrets.token_hex(4)}", reason, tuple(cleaned),
                        actor.user, actor.role, now, expires_at, None, None, tuple(orgs),
                        actor.user if approved else None, now if approved else None)
    with engine.begin() as connection:
        connection.execute(insert(incidents).values(
            incident_id=incident.incident_id, reason=reason, sectors=cleaned,
            organisations=orgs, declared_by=actor.user, declared_role=actor.role,
            declared_at=now, expires_at=expires_at, approved_by=incident.approved_by,
            approved_at=incident.approved_at))
        audit.record(connection, actor, "incident.declare", f"incidents/{incident.incident_id}",
                     n_records=len(cleaned), outcome="allowed", purpose=actor.purpose,
                     detail={"rule": "ok", "sectors": cleaned, "organisations": orgs,
                             "status": incident.status(now),
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
                    row["expires_at"], row["ended_by"], row["ended_at"],
                    tuple(row["organisations"] or ()), row["approved_by"], row["approved_at"])


def listed(engine: Engine) -> list[Incident]:
    """Every incident, newest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(incidents).order_by(
            incidents.c.declared_at.desc(), incidents.c.incident_id)).mappings().all()
    return [_incident(row) for row in rows]


def approve(engine: Engine, actor: Actor, incident_id: str,
            now: dt.datetime | None = None) -> Incident:
    """An IG lead approves an admin's pending declaration, which is then in force; Refused
    (`role`, `incident`: unknown, in force already, ended or expired; `two_person`: the
    declarer) otherwise; audited (`incident.approve`)."""
    now = _now(now)
    found = get(engine, incident_id)

    def refuse(rule: str, message: str) -> Refused:
        _audit(engine, actor, "incident.approve", f"incidents/{incident_id}", "refused", rule,
               "")
        return Refused(rule, message)

    if actor.role not in APPROVERS:
        raise refuse("role", "only an IG lead may approve an incident")
    if found is None or found.status(now) != "pending":
        raise refuse("incident", "no incident of that id is pending approval")
    if found.declared_by == actor.user:
        raise refuse("two_person", "a declaration needs a second person: the declarer may "
                                   "not approve it")
    with engine.begin() as connection:
        connection.execute(update(incidents).where(
            incidents.c.incident_id == incident_id).values(approved_by=actor.user,
                                                           approved_at=now))
        audit.record(connection, actor, "incident.approve", f"incidents/{incident_id}",
                     n_records=len(found.sectors), outcome="allowed", purpose=actor.purpose,
                     detail={"rule": "ok", "declared_role": found.declared_role})
    return get(engine, incident_id)  # type: ignore[return-value]


def end(engine: Engine, actor: Actor, incident_id: str,
        now: dt.datetime | None = None) -> Incident:
    """End an incident in force or pending; Refused (`role`, `incident`) otherwise;
    audited."""
    now = _now(now)
    found = get(engine, incident_id)

    def refuse(rule: str, message: str) -> Refused:
        _audit(engine, actor, "incident.end", f"incidents/{incident_id}", "refused", rule, "")
        return Refused(rule, message)

    if actor.role not in DECLARERS:
        raise refuse("role", "only an IG lead or an admin may end an incident")
    if found is None or not found.live(now):
        raise refuse("incident", "no incident of that id is in force")
    with engine.begin() as connection:
        connection.execute(update(incidents).where(
            incidents.c.incident_id == incident_id).values(ended_by=actor.user, ended_at=now))
        audit.record(connection, actor, "incident.end", f"incidents/{incident_id}",
                     n_records=len(found.sectors), outcome="allowed", purpose=actor.purpose,
                     detail={"rule": "ok"})
    return get(engine, incident_id)  # type: ignore[return-value]


def held_back(engine: Engine, person_ids: Sequence[str], at: dt.date) -> set[str]:
    """The pseudonyms with a whole-person opt-out covering emergency planning in force on
    `at`: a policy row for the purpose naming every source (`*`) with `all` scope. Opt-outs
    limited to some sources or to a sender's data are not here: they remove those rows from
    what computes the list (pipeline/incidents.py), and never the person as a whole."""
    rules = coverage(engine)
    whole = {r.optout_type for r in rules
             if r.purpose == PURPOSE and r.sources is None and not r.sender_scope}
    if not whole:
        return set()
    live = active_optouts(engine, at, rules)
    objecting = set(live.loc[live["optout_type"].isin(whole), "person_id"])
    return {p for p in person_ids if p in objecting}


def received_since(engine: Engine, person_ids: Sequence[str], since: dt.datetime,
                   now: dt.datetime) -> set[str]:
    """The pseudonyms with an opt-out (any type, an objection, not a withdrawal) the list made
    at `since` could not have honoured (red-team R4): received after `since` (its extract's
    `received_at`), or in force since (`effective_date` after `since`'s day, on or before
    `now`'s). Whatever the type and scope: failing closed, such a person is held back until
    the counts are recomputed, never located by a list that ignored their opt-out."""
    wanted = set(person_ids)
    if not wanted:
        return set()
    since, today = _aware(since), now.date()
    with engine.connect() as connection:
        rows = connection.execute(select(
            optouts.c.person_id, optouts.c.effective_date, extracts.c.received_at).join(
            extracts, extracts.c.extract_id == optouts.c.extract_id).where(
            optouts.c.withdrawn.is_(False), optouts.c.person_id.in_(sorted(wanted)))).all()
    return {r.person_id for r in rows
            if _aware(r.received_at) > since or since.date() < r.effective_date <= today}


RECOMPUTE = ("held back by an opt-out received since the list was made: recompute with "
             "`haven emergency vulnerable`")


@dataclass(frozen=True)
class Revealed:
    """What a re-identification gives: NHS numbers by pseudonym, how many persons an opt-out
    held back (a count only: never who, nor in which sector), and how many of those were held
    back by an opt-out received since the list was made (`received_since`)."""

    numbers: dict[str, str]
    held_back: int
    held_back_since: int = 0


def reidentify(engine: Engine, keys: KeyProvider, requester: Actor, incident_id: str,
               person_ids: Sequence[str], reason: str, sector_of: Callable[[str], str | None],
               now: dt.datetime | None = None,
               person_of: Callable[[str], str] | None = None,
               since: dt.datetime | None = None) -> Revealed:
    """NHS numbers of `person_ids` (pseudonyms) for a responder during incident
    `incident_id`, or Refused naming the rule (module docstring for the order). The whole
    request is refused if one person fails a rule; a person with a whole-person opt-out is
    held back (every pseudonym `person_of` gives the same person, default each its own) and
    counted, the others answered; so is a person with any opt-out received since `since`
    (when the list asked from was made: `received_since`). Audited as `reidentify` (`via:
    incident`)."""
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
    if requester.org not in incident.organisations:
        raise refuse("organisation", "this incident names other responding organisations")
    if n == 0:
        raise refuse("empty", "no persons were named")
    outside = sum(sector_of(p) not in incident.sectors for p in person_ids)
    if outside:
        raise refuse("sector", f"{outside} of {n} persons do not live in the incident's "
                               "sectors")
    owner = person_of or (lambda p: p)
    objecting = {owner(p) for p in held_back(engine, list(person_ids), now.date())}
    recent = set() if since is None else {
        owner(p) for p in received_since(engine, person_ids, since, now)}
    objecting |= recent
    wanted = [p for p in person_ids if owner(p) not in objecting]
    with engine.connect() as connection:
        found = vault.reveal(connection, keys, wanted)
    if len(found) < len(wanted):
        raise refuse("not_found", f"{len(wanted) - len(found)} of {n} persons are not in "
                                  "the vault")
    _audit(engine, requester, "reidentify", resource, "allowed", "ok", reason, len(found),
           via="incident", held_back=len(objecting), held_back_since=len(recent))
    return Revealed(found, len(objecting), len(recent))


def retain_months(engine: Engine | None = None) -> int:
    """Months an ended or expired incident's reason is kept (`incidents` in
    policies/retention.csv; the shipped row when an IG lead's table predates it)."""
    rows = {r["source"]: r for r in read_table("retention.csv", engine)}
    row = rows.get(RETENTION) or {r["source"]: r for r in read_table("retention.csv")}[RETENTION]
    return int(row["retain_months"])


def reasons_due(engine: Engine, as_of: dt.date) -> list[str]:
    """Incidents whose reason is past its retention on `as_of` and not yet destroyed: ended
    (or expired) more than `retain_months` before. One in force or pending is never due."""
    months = retain_months(engine)
    with engine.connect() as connection:
        rows = connection.execute(select(
            incidents.c.incident_id, incidents.c.ended_at, incidents.c.expires_at).where(
            incidents.c.reason != DESTROYED).order_by(incidents.c.incident_id)).all()
    return [r.incident_id for r in rows
            if add_months(_aware(r.ended_at or r.expires_at).date(), months) < as_of]


def destroy_reasons(engine: Engine, actor: Actor, as_of: dt.date) -> int:
    """Destroy the reasons `reasons_due` names (the record of who declared what, where and
    when stays, as the audit does); audited (`incident.destroy_reasons`) with the count.
    Returns how many."""
    due = reasons_due(engine, as_of)
    if not due:
        return 0
    with engine.begin() as connection:
        connection.execute(update(incidents).where(incidents.c.incident_id.in_(due)).values(
            reason=DESTROYED))
        audit.record(connection, actor, "incident.destroy_reasons", "incidents",
                     n_records=len(due), detail={"as_of": as_of.isoformat()})
    return len(due)
