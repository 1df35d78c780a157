"""Re-identification for case finding by a person's own practice, and the reverse lookup MDTs use.

`reidentify` reveals NHS numbers from the vault only for the `case_finding` purpose, only for
persons registered with the requester's own practice, never for a person whose opt-out covers
case finding, and only with a stated reason. Every attempt, allowed or refused, is audited
with counts, the rule that decided it and the category of the reason, never an NHS number
(nor the reason's text, which could name someone).

`lookup_by_nhs_numbers` turns NHS numbers a clinician already holds into pseudonyms, so the
API can answer with those patients' risk without revealing anyone else. That answer ties a
number to a person's pseudonymised record, so it is a re-identification too: `reverse_lookup`
applies the same rules (purpose, reason, opt-outs covering case finding) and audits it the
same way; a person opted out is left out of the answer exactly as a number nobody holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import nhs_number
from sqlalchemy import Engine

from governance import audit, vault
from governance.audit import Actor
from governance.keyed_hash import nhs_pseudonym
from governance.keys import KeyProvider
from governance.optouts import opted_out

PURPOSE = "case_finding"
MIN_REASON = 10
# The reason is free text and may name someone, so the audit log keeps only its category: the
# first whose words it contains (lower case), else `other`.
REASON_CATEGORIES = (
    ("mdt_review", ("mdt", "multidisciplinary", "multi-disciplinary", "huddle")),
    ("safeguarding", ("safeguard",)),
    ("medication_review", ("medication", "medicine", "polypharmacy", "prescri")),
    ("care_planning", ("care plan", "anticipatory", "planning")),
    ("contact", ("contact", "invite", "call", "appointment", "visit", "outreach")),
    ("case_review", ("review", "case find", "frail", "risk")),
)


class Refused(PermissionError):
    """Re-identification refused; `rule` names the rule that refused it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def reason_category(reason: str) -> str:
    """The category of a stated reason, for the audit log (never the text itself)."""
    text = reason.lower()
    for category, words in REASON_CATEGORIES:
        if any(word in text for word in words):
            return category
    return "other" if text.strip() else "none"


def _record(engine: Engine, requester: Actor, n: int, outcome: str, rule: str,
            reason: str, **more: str | int) -> None:
    audit.log(engine, requester, "reidentify", f"persons/{n}", n_records=n, outcome=outcome,
              purpose=requester.purpose,
              detail={"rule": rule, "reason_category": reason_category(reason),
                      "reason_chars": len(reason), **more})


def _check_request(engine: Engine, requester: Actor, n: int, reason: str,
                   **more: str | int) -> None:
    """The rules every re-identification meets before anyone is looked at: the purpose and
    a stated reason (refusals audited)."""
    if requester.purpose != PURPOSE:
        _record(engine, requester, n, "refused", "purpose", reason, **more)
        raise Refused("purpose", f"re-identification is only for the {PURPOSE} purpose")
    if len(reason) < MIN_REASON:
        _record(engine, requester, n, "refused", "reason", reason, **more)
        raise Refused("reason", f"a reason of at least {MIN_REASON} characters is required")


def reidentify(engine: Engine, keys: KeyProvider, requester: Actor, person_ids: Sequence[str],
               reason: str, practice_of: Callable[[str], str | None],
               at: dt.date | None = None) -> dict[str, str]:
    """NHS numbers of `person_ids` (pseudonyms) for an authorised MDT clinician, or `Refused`.

    Rules, checked in this order, each refusal naming its rule: the requester acts for
    `case_finding` (`purpose`); states a reason of at least MIN_REASON characters (`reason`);
    names someone (`empty`); every person is registered with the requester's own practice,
    as `practice_of` (from landed GP registrations) says (`practice`); no person has an
    opt-out in force covering case finding for any of their data (`opt_out`); every person is
    in the vault (`not_found`). The whole request is refused if one person fails a rule.
    """
    reason = (reason or "").strip()
    n = len(person_ids)

    def refuse(rule: str, message: str) -> Refused:
        _record(engine, requester, n, "refused", rule, reason)
        return Refused(rule, message)

    _check_request(engine, requester, n, reason)
    if n == 0:
        raise refuse("empty", "no persons were named")
    elsewhere = sum(practice_of(p) != requester.org for p in person_ids)
    if elsewhere:
        raise refuse("practice", f"{elsewhere} of {n} persons are not registered with the "
                                 "requester's practice")
    opted = int(opted_out(engine, list(person_ids), PURPOSE, at or dt.date.today()).sum())
    if opted:
        raise refuse("opt_out", f"{opted} of {n} persons have an opt-out covering {PURPOSE}")
    with engine.connect() as connection:
        found = vault.reveal(connection, keys, list(person_ids))
    if len(found) < n:
        raise refuse("not_found", f"{n - len(found)} of {n} persons are not in the vault")
    _record(engine, requester, n, "allowed", "ok", reason)
    return found


def reverse_lookup(engine: Engine, requester: Actor, person_ids: Sequence[str], reason: str,
                   at: dt.date | None = None) -> set[str]:
    """Which of `person_ids` (pseudonyms of NHS numbers an MDT clinician holds, already
    narrowed by the caller to persons listed for the requester's own practice) the answer may
    name, or `Refused`.

    The rules of `reidentify`: the requester acts for `case_finding` (`purpose`) with a
    reason of at least MIN_REASON characters (`reason`). A person with an opt-out in force
    covering case finding is left out, indistinguishable from a number nobody holds. Audited
    as a re-identification (`reidentify`, `via: reverse_lookup`), with counts only.
    """
    reason = (reason or "").strip()
    n = len(person_ids)
    _check_request(engine, requester, n, reason, via="reverse_lookup")
    opted = opted_out(engine, list(person_ids), PURPOSE, at or dt.date.today())
    allowed = {p for p, out in zip(person_ids, opted, strict=True) if not out}
    _record(engine, requester, len(allowed), "allowed", "ok", reason, via="reverse_lookup",
            opted_out=n - len(allowed))
    return allowed


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
