"""Administration: users, their roles and tokens, key rotation and the access rules. No
patient-level data is reachable from here, and an admin cannot widen access to it alone: such a
rule change, and an account or a token for a user holding a person-level role, waits for an IG
lead (`api.policy_changes`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import policy_changes
from api.authz import PolicyError
from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import example_response, ok
from api.schemas import (
    AccessPolicyChange,
    AccessPolicyChangeList,
    AccessPolicyChangeRequest,
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


PENDING_ACCOUNT = example_response(
    AccessPolicyChange, "The user holds a role with access to person-level data: pending "
    "until an IG lead approves it; the approval answers the token, once, to the IG lead")


def _pending(access: Access, change: policy_changes.Change, user_id: str) -> JSONResponse:
    access.answered(0, user=user_id, change_id=change.change_id, status=change.status)
    return ok(change.to_json(), 202)


@router.post("/users", summary="Add a user", status_code=201,
             responses={201: example_response(Token, "Added; the token is shown once"),
                        202: PENDING_ACCOUNT, **responses(401, 403, 409, 422)})
@permission("user", "create")
def create_user(body: UserCreate, access: Annotated[Access, Depends(authorise)]
                ) -> JSONResponse:
    """Add a user with roles in their organisation; answers their token, shown only now. A
    user holding a role with access to person-level data (as `POST /access-policy/changes`
    judges it: every role with a permission beyond the read-only, non-person-level ones) is
    proposed instead (202, pending) and made only when an IG lead approves."""
    services = access.services
    try:
        change = policy_changes.propose_user(services.policy, _actor(access), body.user_id,
                                             body.org, body.roles)
        if change is not None:
            return _pending(access, change, body.user_id)
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
                        202: PENDING_ACCOUNT, **responses(401, 403, 404, 422)})
@permission("token", "create")
def new_token(user_id: UserId, access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """A further token for an active user, shown only now; for a user holding a role with
    access to person-level data, proposed instead (202, pending) for an IG lead to approve."""
    try:
        change = policy_changes.propose_token(access.services.policy, _actor(access), user_id)
        if change is not None:
            return _pending(access, change, user_id)
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


def _propose(access: Access, ptype: str, rule: list[str], add: bool
             ) -> policy_changes.Change:
    try:
        change = policy_changes.propose(access.services.policy, _actor(access), ptype, rule,
                                        add)
    except PolicyError as exc:
        raise Problem(422, str(exc)) from None
    access.answered(int(bool(change.changed)), ptype=ptype, rule=change.rule,
                    change_id=change.change_id, status=change.status)
    return change


def _change(access: Access, body: AccessRuleChange, add: bool) -> JSONResponse:
    change = _propose(access, body.ptype, body.rule, add)
    if change.status == "pending":
        return ok(change.to_json(), 202)
    return ok({"changed": bool(change.changed)})


@router.post("/access-policy/rules", summary="Add an access rule",
             responses={200: example_response(Changed),
                        202: example_response(AccessPolicyChange,
                                              "Widens access to person-level data: pending "
                                              "until an IG lead approves it"),
                        **responses(401, 403, 422)})
@permission("access_policy", "update")
def add_rule(body: AccessRuleChange, access: Annotated[Access, Depends(authorise)]
             ) -> JSONResponse:
    """Add a permission (`p`: role, org pattern, resource, action, purpose, source pattern,
    scope) or a role inheritance (`g`: role, inherited role, org pattern); audited. A rule
    that widens access to person-level data is proposed instead, as by
    `POST /access-policy/changes` (202, pending)."""
    return _change(access, body, add=True)


@router.post("/access-policy/rules/delete", summary="Remove an access rule",
             responses={200: example_response(Changed), **responses(401, 403, 422)})
@permission("access_policy", "update")
def remove_rule(body: AccessRuleChange, access: Annotated[Access, Depends(authorise)]
                ) -> JSONResponse:
    """Remove a rule exactly as listed by `GET /access-policy`; audited. Removing only ever
    narrows access, so it applies at once."""
    return _change(access, body, add=False)


ChangeId = Annotated[str, Path(pattern=policy_changes.CHANGE_ID, examples=["apc-kmpqrstvwxyz"])]


@router.post("/access-policy/changes", summary="Propose an access rule change",
             status_code=202,
             responses={202: example_response(AccessPolicyChange, "Pending: widens access to "
                                               "person-level data, so an IG lead decides"),
                        200: example_response(AccessPolicyChange, "Applied at once"),
                        **responses(401, 403, 422)})
@permission("access_policy", "update")
def propose_change(body: AccessPolicyChangeRequest,
                   access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Add or remove a rule. One that widens access to person-level data (a permission for
    anything beyond health, documentation, whoami, aggregates, runs, receipts, certificates,
    opt-out counts, policy tables, access rules and users, read only; or a role inheritance
    onto a role holding such a permission) stays pending until an IG lead approves it;
    anything else applies at once. Audited."""
    change = _propose(access, body.ptype, body.rule, body.op == "add")
    return ok(change.to_json(), 202 if change.status == "pending" else 200)


@router.get("/access-policy/changes", summary="Access rule changes",
            responses={200: example_response(AccessPolicyChangeList), **responses(401, 403, 422)})
@permission("access_policy", "read")
def list_changes(access: Annotated[Access, Depends(authorise)],
                 status: Annotated[str | None, Query(
                     pattern=r"^(applied|pending|approved|rejected)$",
                     examples=["pending"])] = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    """Changes to the access rules, newest first: who proposed each and who decided it."""
    items = [c.to_json() for c in policy_changes.listed(access.services.engine, status, limit)]
    access.answered(len(items))
    return ok({"items": items})


def _decide(access: Access, change_id: str, approve: bool) -> JSONResponse:
    decide = policy_changes.approve if approve else policy_changes.reject
    try:
        change = decide(access.services.policy, _actor(access), change_id)
    except policy_changes.ChangeError as exc:
        access.note.detail["refused"] = str(exc)
        raise Problem(exc.status, str(exc)) from None
    access.answered(1, change_id=change.change_id, status=change.status,
                    proposed_by=change.proposed_by)
    return ok(change.to_json())


@router.post("/access-policy/changes/{change_id}/approve", summary="Approve a change",
             responses={200: example_response(AccessPolicyChange),
                        **responses(401, 403, 404, 409, 422)})
@permission("access_policy", "approve")
def approve_change(change_id: ChangeId, access: Annotated[Access, Depends(authorise)]
                   ) -> JSONResponse:
    """An IG lead approves a pending change, which applies at once (both audited). Nobody
    approves their own change, nor one proposed by whoever gave them (or asked for) their
    account or token, nor an account or token for themselves. An approved account or token
    change (`ptype` u) answers the new token here, once: the IG lead hands it to its holder;
    neither the audit log nor the change keeps it."""
    return _decide(access, change_id, approve=True)


@router.post("/access-policy/changes/{change_id}/reject", summary="Reject a change",
             responses={200: example_response(AccessPolicyChange),
                        **responses(401, 403, 404, 409, 422)})
@permission("access_policy", "approve")
def reject_change(change_id: ChangeId, access: Annotated[Access, Depends(authorise)]
                  ) -> JSONResponse:
    """An IG lead rejects a pending change; it is never applied (audited)."""
    return _decide(access, change_id, approve=False)
