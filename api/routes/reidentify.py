"""Re-identification for MDTs: persons listed for their own practice, with a reason, and
reverse lookup of their own patients' NHS numbers (a re-identification too: same permission,
reasons, opt-out rule and audit). The answers are the only place an NHS number leaves Haven;
the audit entry holds person keys and counts, never the numbers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import present
from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import current_release, example_response, ok
from api.schemas import (
    Reidentified,
    ReidentifyRequest,
    ReverseLookup,
    ReverseLookupRequest,
)
from governance import reidentify as governance_reid
from governance.audit import Actor
from pipeline import person_keys

router = APIRouter(tags=["re-identification"])


@router.post("/reidentify", summary="Re-identify listed persons",
             responses={200: example_response(Reidentified),
                        **responses(401, 403, 404, 409, 422)})
@permission("reidentify", "create", owner="caller")
async def reidentify(body: ReidentifyRequest,
                     access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """NHS numbers of persons on the caller's own practice's list, for individual care
    (`case_finding` purpose), with a reason. Refused whole when any person is not the
    practice's or unknown (Casbin, here) or when governance's rules refuse it: purpose, reason,
    an opt-out covering case finding (`governance.reidentify`, which audits the attempt)."""
    keys = list(dict.fromkeys(body.person_keys))
    access.note.detail.update(reason=body.reason, requested=len(keys))
    release = current_release(access)
    owner = {key: release.owner_of(key) for key in keys}
    for key in keys:
        access.require("reidentify", "create", owner=owner[key],
                       detail="person_keys: not all are listed for your practice")
    services = access.services
    ids = await run_in_threadpool(person_keys.person_ids_of, services.settings, keys)
    key_of = {pid: key for key, found in ids.items() for pid in found}
    principal = access.principal
    requester = Actor(principal.user, access.role, principal.org, access.purpose)
    try:
        found = await run_in_threadpool(
            governance_reid.reidentify, services.engine, services.keys, requester,
            sorted(key_of), body.reason, lambda pid: owner.get(key_of.get(pid, ""), "-"))
    except governance_reid.Refused as exc:
        access.note.detail["refused"] = exc.rule
        status = {"not_found": 404, "empty": 404}.get(exc.rule, 403)
        raise Problem(status, str(exc), slug=f"reidentification-refused-{exc.rule}") \
            from None
    numbers = {key: found[pids[0]] for key, pids in ids.items() if pids and pids[0] in found}
    access.answered(len(numbers), person_keys=keys)
    return ok({"items": [{"person_key": k, "nhs_number": numbers[k]} for k in keys
                         if k in numbers]})


@router.post("/reverse-lookup", summary="Risk of own patients by NHS number",
             responses={200: example_response(ReverseLookup),
                        **responses(401, 403, 409, 422)})
@permission("reidentify", "create", owner="caller")
async def reverse_lookup(body: ReverseLookupRequest,
                         access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """The current risk of the caller's own practice's patients, by NHS number: a
    re-identification (a number is tied to a person's record), so it is allowed, refused and
    audited as `POST /reidentify` is (`reidentify.create`, the reason from the same list;
    never the numbers). A number that is not valid, not known, not a patient of the caller's
    practice, or of a person whose opt-out covers case finding is `found: false`, all alike:
    nobody learns anything about anyone else's patients, nor who has opted out."""
    access.note.detail.update(reason=body.reason, requested=len(body.nhs_numbers))
    release = current_release(access)
    services = access.services
    pseudonyms = governance_reid.lookup_by_nhs_numbers(services.keys, body.nhs_numbers)
    known = await run_in_threadpool(person_keys.person_keys_of_ids, services.settings,
                                    sorted({p for p in pseudonyms.values() if p}))
    rows: dict[int, int] = {}
    for i in range(len(body.nhs_numbers)):
        key = known.get(pseudonyms.get(i) or "")
        row = release.position(key) if key else None
        if row is not None and access.allows("reidentify", "create",
                                             owner=release.practice_of(row)):
            rows[i] = row
    principal = access.principal
    requester = Actor(principal.user, access.role, principal.org, access.purpose)
    try:
        allowed = await run_in_threadpool(
            governance_reid.reverse_lookup, services.engine, requester,
            sorted({pseudonyms[i] for i in rows}), body.reason)
    except governance_reid.Refused as exc:
        access.note.detail["refused"] = exc.rule
        raise Problem(403, str(exc), slug=f"reidentification-refused-{exc.rule}") from None
    items, answered = [], []
    for i, text in enumerate(body.nhs_numbers):
        number = governance_reid.normalise(text)
        person = None
        if i in rows and pseudonyms[i] in allowed:
            row = release.rows([rows[i]])[0]
            person = present.person(row, access.visible_sources(release.practice_of(rows[i])))
            answered.append(row["person_key"])
        items.append({"nhs_number": number or text, "found": person is not None,
                      "person": person})
    access.answered(len(answered), person_keys=answered)
    return ok({"run_id": release.run_id, "items": items})
