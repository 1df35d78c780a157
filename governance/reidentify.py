"""Re-identification for direct care, and the reverse lookup MDTs use most.

`reidentify` reveals NHS numbers from the vault only for the `case_finding` purpose, only for
persons registered with the requester's own practice, never for a person whose opt-out covers
case finding, and only with a stated reason. Every attempt, allowed or refused, is audited
with counts and the rule that decided it, never an NHS number.

`lookup_by_nhs_numbers` turns NHS numbers a clinician already holds into pseudonyms, so the
API can answer with those patients' risk without revealing anyone else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import nhs_number
from sqlalchemy import Engine

from governance import audit, vault
from governance.audit import Actor
from governance.keys import KeyProvider
from governance.optouts import active_optouts, coverage
from governance.pseudonyms import nhs_pseudonym

PURPOSE = "case_finding"
MIN_REASON = 10


class Refused(PermissionError):
    """Re-identification refused; `rule` names the rule that refused it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def _record(engine: Engine, requester: Actor, n: int, outcome: str, rule: str,
            reason: str) -> None:
    detail = {"rule": rule, "reason": reason[:200]}
    try:
        audit.log(engine, requester, "reidentify", f"persons/{n}", n_records=n,
                  outcome=outcome, purpose=requester.purpose, detail=detail)
    except ValueError:  # the reason itself held an NHS number: keep the attempt, not the text
        detail["reason"] = "[withheld: contained an identifier]"
        audit.log(engine, requester, "reidentify", f"persons/{n}", n_records=n,
                  outcome=outcome, purpose=requester.purpose, detail=detail)


def reidentify(engine: Engine, keys: KeyProvider, requester: Actor, person_ids: Sequence[str],
               reason: str, practice_of: Callable[[str], str | None],
               at: dt.date | None = None) -> dict[str, str]:
    """NHS numbers of `person_ids` for an authorised MDT clinician, or `Refused`."""
    reason = (reason or "").strip()
    n = len(person_ids)

    def refuse(rule: str, message: str) -> Refused:
        _record(engine, requester, n, "refused", rule, reason)
        return Refused(rule, message)

    if requester.purpose != PURPOSE:
        raise refuse("purpose", f"re-identification is only for the {PURPOSE} purpose")
    if len(reason) < MIN_REASON:
        raise refuse("reason", f"a reason of at least {MIN_REASON} characters is required")
    if n == 0:
        raise refuse("empty", "no persons were named")
    elsewhere = sum(practice_of(p) != requester.org for p in person_ids)
    if elsewhere:
        raise refuse("practice", f"{elsewhere} of {n} persons are not registered with the "
                                 "requester's practice")
    live = active_optouts(engine, at or dt.date.today())
    covering = {r.optout_type for r in coverage(engine) if r.purpose == PURPOSE}
    objecting = set(live.loc[live["optout_type"].isin(covering), "person_id"])
    opted = sum(p in objecting for p in person_ids)
    if opted:
        raise refuse("opt_out", f"{opted} of {n} persons have an opt-out covering {PURPOSE}")
    with engine.connect() as connection:
        found = vault.reveal(connection, keys, list(person_ids))
    if len(found) < n:
        raise refuse("not_found", f"{n - len(found)} of {n} persons are not in the vault")
    _record(engine, requester, n, "allowed", "ok", reason)
    return found


def normalise(number: str) -> str | None:
    """10 digits (spaces and hyphens allowed) that pass the modulus-11 check, else None."""
    digits = "".join(ch for ch in str(number) if ch not in " -")
    if len(digits) == 10 and digits.isdigit() and nhs_number.is_valid(digits):
        return digits
    return None


def lookup_by_nhs_numbers(keys: KeyProvider, numbers: Sequence[str]) -> dict[int, str | None]:
    """Input position -> pseudonym under the current key (None where the number is invalid).

    Key rotation re-keys every stored pseudonym, so the current key is the only one in use.
    """
    key = keys.current("pseudonym")
    return {i: (None if (digits := normalise(number)) is None else nhs_pseudonym(key, digits))
            for i, number in enumerate(numbers)}
