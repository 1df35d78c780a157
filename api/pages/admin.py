"""Administrators' pages: users and their tokens, and the access rules (IG leads may read the
rules too, and approve or reject a pending change that widens access to person-level data,
an account or token for a user holding a person-level role among them). Each calls the route
function of `api.routes.admin` it shows; a new token is shown once, on a page that is not kept
(to the IG lead who approved it, when it needed approval)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.guard import permission
from api.pages.common import PageAccess, answer, form, listed, page_router, see_other
from api.pages.render import render
from api.problems import Problem
from api.routes import admin as admin_routes
from api.schemas import AccessRuleChange, UserCreate

router = page_router()
P_FIELDS = ("role", "organisations", "resource", "action", "purpose", "source", "scope")
G_FIELDS = ("role", "inherits", "organisations")
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache", "Expires": "0"}


@router.get("/pages/users", summary="Users")
@permission("user", "read")
async def users(request: Request, access: PageAccess,
                proposed: Annotated[str | None, Query(pattern=r"^pending$")] = None
                ) -> Response:
    items = answer(await run_in_threadpool(admin_routes.users, access))["items"]
    roles = sorted(access.services.policy.roles())
    pending = [c for c in await run_in_threadpool(_changes, access)
               if c["status"] == "pending" and c["ptype"] == "u"] \
        if access.allows("access_policy", "read") else []
    return render(request, "admin/users.html", access=access, title="Users", items=items,
                  roles=roles, may_add=access.allows("user", "create"),
                  may_revoke=access.allows("user", "delete"),
                  may_token=access.allows("token", "create"), proposed=proposed,
                  pending=pending)


def _token_page(request: Request, access: PageAccess, token: dict, added: bool) -> Response:
    return render(request, "admin/token.html", access=access, title="Token", token=token,
                  added=added, headers=NO_STORE)


@router.post("/pages/users", summary="Add a user")
@permission("user", "create")
async def add_user(request: Request, access: PageAccess) -> Response:
    data = await form(request)
    try:
        body = UserCreate(user_id=(data.get("user_id") or "").strip(),
                          org=(data.get("org") or "").strip(), roles=listed(data.get("roles")))
    except ValidationError:
        raise Problem(422, "user_id, organisation and at least one role are needed") from None
    response = await run_in_threadpool(admin_routes.create_user, body, access)
    if response.status_code == 202:  # a person-level role: an IG lead approves it
        return see_other("/pages/users?proposed=pending")
    return _token_page(request, access, answer(response), added=True)


@router.post("/pages/users/{user_id}/tokens", summary="Issue a token")
@permission("token", "create")
async def new_token(request: Request, user_id: admin_routes.UserId, access: PageAccess
                    ) -> Response:
    await form(request)
    response = await run_in_threadpool(admin_routes.new_token, user_id, access)
    if response.status_code == 202:
        return see_other("/pages/users?proposed=pending")
    return _token_page(request, access, answer(response), added=False)


@router.post("/pages/users/{user_id}/revoke", summary="Revoke a user")
@permission("user", "delete")
async def revoke(request: Request, user_id: admin_routes.UserId, access: PageAccess
                 ) -> Response:
    await form(request)
    await run_in_threadpool(admin_routes.delete_user, user_id, access)
    return see_other("/pages/users")


def _changes(access: PageAccess) -> list[dict]:
    """Access rule changes, newest first (`GET /access-policy/changes`), where the API has
    the approval flow."""
    listing = getattr(admin_routes, "list_changes", None)
    if listing is None:
        return []
    return answer(listing(access, None, 50))["items"]


@router.get("/pages/access-rules", summary="Access rules")
@permission("access_policy", "read")
async def access_rules(request: Request, access: PageAccess,
                       proposed: Annotated[str | None, Query(pattern=r"^(applied|pending)$")]
                       = None) -> Response:
    rules = answer(await run_in_threadpool(admin_routes.access_rules, access))
    changes = await run_in_threadpool(_changes, access)
    return render(request, "admin/access_rules.html", access=access, title="Access rules",
                  p=sorted(rules["p"]), g=sorted(rules["g"]), p_fields=P_FIELDS,
                  g_fields=G_FIELDS, may_change=access.allows("access_policy", "update"),
                  may_decide=access.allows("access_policy", "approve"), proposed=proposed,
                  pending=[c for c in changes if c["status"] == "pending"],
                  decided=[c for c in changes if c["status"] != "pending"][:20])


@router.post("/pages/access-rules", summary="Change an access rule")
@permission("access_policy", "update")
async def change_rule(request: Request, access: PageAccess) -> Response:
    """Add or remove one rule (`POST /access-policy/rules`, `.../rules/delete`): one that
    widens access to person-level data waits for an IG lead."""
    data = await form(request)
    ptype = data.get("ptype") or "p"
    fields = P_FIELDS if ptype == "p" else G_FIELDS
    rule = [str(data.get(f"{ptype}_{name}") or "").strip() for name in fields]
    try:
        body = AccessRuleChange(ptype=ptype, rule=rule)
    except ValidationError:
        raise Problem(422, "rule: every field is needed") from None
    change = admin_routes.remove_rule if data.get("remove") == "yes" else admin_routes.add_rule
    response = await run_in_threadpool(change, body, access)
    pending = response.status_code == 202
    return see_other(f"/pages/access-rules?proposed={'pending' if pending else 'applied'}")


async def _decide(request: Request, change_id: str, name: str, access: PageAccess
                  ) -> Response:
    await form(request)
    route = getattr(admin_routes, name, None)
    if route is None or not re.match(r"^apc-[a-z]{12}$", change_id):
        raise Problem(404, "no such change")
    change = answer(await run_in_threadpool(route, change_id, access))
    if change.get("token"):  # an approved account or token: shown once, to the approver
        return _token_page(request, access, {"user_id": change["rule"][0],
                                             "token": change["token"]},
                           added=change["op"] == "add")
    return see_other("/pages/access-rules")


@router.post("/pages/access-rules/changes/{change_id}/approve", summary="Approve a change")
@permission("access_policy", "approve")
async def approve(request: Request, change_id: str, access: PageAccess) -> Response:
    """Approve a pending change (`POST /access-policy/changes/{id}/approve`: nobody decides
    their own change); it applies at once."""
    return await _decide(request, change_id, "approve_change", access)


@router.post("/pages/access-rules/changes/{change_id}/reject", summary="Reject a change")
@permission("access_policy", "approve")
async def reject(request: Request, change_id: str, access: PageAccess) -> Response:
    """Reject a pending change (`POST /access-policy/changes/{id}/reject`)."""
    return await _decide(request, change_id, "reject_change", access)
