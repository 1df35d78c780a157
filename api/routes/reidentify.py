"""Re-identification for MDTs: persons listed for their own practice, with a reason, and
reverse lookup of their own patients' NHS numbers. The answers are the only place an NHS
number leaves Haven; the audit entry holds person keys and counts, never the numbers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import present, reid
from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import current_release, example_response, ok
from api.schemas import (
    Reidentified,
    ReidentifyRequest,
    ReverseLookup,
    ReverseLookupRequest,
)

router = APIRouter(tags=["re-identification"])


@router.post("/reidentify", summary="Re-identify listed persons",
             responses={200: example_response(Reidentified),
                        **responses(401, 403, 409, 422)})
@permission("reidentify", "create", owner="caller")
async def reidentify(body: ReidentifyRequest,
                     access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """NHS numbers of persons on the caller's own practice's list, for individual care
    (`case_finding` purpose), with a reason. Refused whole when any person is not the
    practice's, is unknown, or has an opt-out in force."""
    keys = list(dict.fromkeys(body.person_keys))
    access.note.detail.update(reason=body.reason, requested=len(keys))
    release = current_release(access.services)
    for key in keys:
        access.require("reidentify", "create", owner=release.owner_of(key),
                       detail="person_keys: not all are listed for your practice")
    services = access.services
    opted = await run_in_threadpool(reid.opted_out, services.engine, services.settings, keys)
    if opted:
        access.note.detail["refused"] = "opt-out in force"
        access.note.detail["opted_out"] = len(opted)
        raise Problem(403, "an opt-out is in force for at least one of these persons",
                      slug="opted-out")
    found = await run_in_threadpool(services.reidentifier, services.settings, services.engine,
                                    services.keys, keys)
    access.answered(len(found), person_keys=keys)
    return ok({"items": [{"person_key": k, "nhs_number": found[k]} for k in keys
                         if k in found]})


@router.post("/reverse-lookup", summary="Risk of own patients by NHS number",
             responses={200: example_response(ReverseLookup),
                        **responses(401, 403, 409, 422)})
@permission("reverse_lookup", "create", owner="caller")
async def reverse_lookup(body: ReverseLookupRequest,
                         access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """The current risk of the caller's own practice's patients, by NHS number. A number that
    is not valid, not known, or not a patient of the caller's practice is `found: false`:
    nobody learns anything about anyone else's patients."""
    release = current_release(access.services)
    services = access.services
    numbers = {text: reid.normalise(text) for text in body.nhs_numbers}
    valid = sorted({n for n in numbers.values() if n})
    keys = await run_in_threadpool(services.looker_up, services.settings, services.keys, valid)
    items, answered = [], []
    for text, number in numbers.items():
        person = None
        key = keys.get(number) if number else None
        row = release.position(key) if key else None
        if row is not None:
            owner = release.practice_of(row)
            if access.allows("reverse_lookup", "create", owner=owner):
                data = release.rows([row])[0]
                person = present.person(data, access.visible_sources(owner))
                answered.append(key)
        items.append({"nhs_number": number or text, "found": person is not None,
                      "person": person})
    access.answered(len(answered), asked=len(numbers), person_keys=answered)
    return ok({"run_id": release.run_id, "items": items})
