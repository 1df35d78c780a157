"""Administration: users, their roles and tokens, key rotation and the access rules. No
patient-level data is reachable from here."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.authz import PolicyError
from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import example_response, ok
from api.schemas import (
    AccessRuleChange,
    AccessRules,
    Changed,
    KeyRotated,
    Token,
    UserCreate,
    UserList,
)
from api.users import UserError, add_user, issue_token, list_users, revoke_user
from governance.audit import Actor
from governance.keys import KeyError_
from pipeline import govern

router = APIRouter(tags=["administration"])
UserId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._@-]{1,63}$", examples=["dr.mdt"])]


def _actor(access: Access) -> Actor:
    principal = access.principal
    return Actor(principal.user, access.role, principal.org, access.purpose)


@router.get("/users", summary="Users",
            responses={200: example_response(UserList), **responses(401, 403)})
@permission("user", "read")
def users(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Every user with organisation, roles and how many live tokens they hold."""
    items = list_users(access.services.engine)
    access.answered(len(items))
    return ok({"items": items})


@router.post("/users", summary="Add a user", status_code=201,
             responses={201: example_response(Token, "Added; the token is shown once"),
                        **responses(401, 403, 409, 422)})
@permission("user", "create")
def create_user(body: UserCreate, access: Annotated[Access, Depends(authorise)]
                ) -> JSONResponse:
    """Add a user with roles in their organisation; answers their token, shown only now."""
    services = access.services
    try:
        token = add_user(services.engine, _actor(access), body.user_id, body.org, body.roles,
                         services.policy.roles())
    except UserError as exc:
        status = 409 if "already exists" in str(exc) else 422
        raise Problem(status, str(exc)) from None
    access.answered(1, user=body.user_id)
    return ok({"user_id": body.user_id, "token": token, "revoked": 0}, 201)


@router.delete("/users/{user_id}", summary="Revoke a user",
               responses={200: example_response(Token), **responses(401, 403, 404, 422)})
@permission("user", "delete")
def delete_user(user_id: UserId, access: Annotated[Access, Depends(authorise)]
                ) -> JSONResponse:
    """Deactivate a user and revoke every token they hold (at once in this process)."""
    try:
        revoked = revoke_user(access.services.engine, _actor(access), user_id)
    except LookupError:
        raise Problem(404, "no such user") from None
    access.services.auth.forget()
    access.answered(revoked)
    return ok({"user_id": user_id, "token": None, "revoked": revoked})


@router.post("/users/{user_id}/tokens", summary="Issue a further token", status_code=201,
             responses={201: example_response(Token, "Issued; shown once"),
                        **responses(401, 403, 404, 422)})
@permission("token", "create")
def new_token(user_id: UserId, access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    try:
        token = issue_token(access.services.engine, _actor(access), user_id)
    except LookupError:
        raise Problem(404, "no such active user") from None
    access.answered(1)
    return ok({"user_id": user_id, "token": token, "revoked": 0}, 201)


@router.post("/keys/{purpose}/rotate", summary="Rotate a key",
             responses={200: example_response(KeyRotated), **responses(401, 403, 409, 422)})
@permission("key", "rotate")
async def rotate_key(purpose: Annotated[Literal["pseudonym", "vault"], Path(examples=["vault"])],
                     access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Rotate a key as `haven keys rotate` does (`governance.rotation`): a new pseudonymisation
    key re-keys every pseudonym (landed rows, opt-outs, vault, person index); a new vault key
    re-encrypts the vault. Keys passed in the environment are rotated where they are kept
    (409)."""
    services = access.services
    ctx = services.context.acting_as(_actor(access))

    def rotate() -> int:
        if purpose == "vault":
            return govern.rotate_vault_key(ctx)
        return int(govern.rotate_pseudonym_key(ctx)["pseudonyms"])

    try:
        changed = await run_in_threadpool(rotate)
    except KeyError_ as exc:
        raise Problem(409, str(exc), slug="key-rotation-refused") from None
    access.answered(changed)
    return ok({"purpose": purpose, "key_id": services.keys.current(purpose).key_id,
               "reencrypted": changed})


@router.get("/access-policy", summary="The access rules",
            responses={200: example_response(AccessRules), **responses(401, 403)})
@permission("access_policy", "read")
def access_rules(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Casbin's rules in force (`p`: permissions, `g`: role inheritance)."""
    rules = access.services.policy.rules()
    access.answered(len(rules["p"]) + len(rules["g"]))
    return ok(rules)


def _change(access: Access, body: AccessRuleChange, add: bool) -> JSONResponse:
    try:
        changed = access.services.policy.change(_actor(access), body.ptype, body.rule, add)
    except PolicyError as exc:
        raise Problem(422, str(exc)) from None
    access.answered(int(changed), ptype=body.ptype, rule=body.rule)
    return ok({"changed": changed})


@router.post("/access-policy/rules", summary="Add an access rule",
             responses={200: example_response(Changed), **responses(401, 403, 422)})
@permission("access_policy", "update")
def add_rule(body: AccessRuleChange, access: Annotated[Access, Depends(authorise)]
             ) -> JSONResponse:
    """Add a permission (`p`: role, org pattern, resource, action, purpose, source pattern,
    scope) or a role inheritance (`g`: role, inherited role, org pattern); audited."""
    return _change(access, body, add=True)


@router.post("/access-policy/rules/delete", summary="Remove an access rule",
             responses={200: example_response(Changed), **responses(401, 403, 422)})
@permission("access_policy", "update")
def remove_rule(body: AccessRuleChange, access: Annotated[Access, Depends(authorise)]
                ) -> JSONResponse:
    """Remove a rule exactly as listed by `GET /access-policy`; audited."""
    return _change(access, body, add=False)
