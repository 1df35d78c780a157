"""The one dependency every route goes through: authenticate, ask Casbin, note the audit entry.

A route names what it does with `@permission(resource, action, owner=...)`; the app runs
`authorise` for every route (an app-level dependency), which reads that declaration from the
matched route and refuses a route that has none. The caller's roles are tried in turn with
their organisation as the domain, the purpose of use they assert (`X-Purpose-Of-Use`, or their
role's only purpose) and the organisation owning the resource:

- `owner=None`: the resource belongs to no organisation.
- `owner="path:<name>"`: the organisation named by a path parameter (a practice's list).
- `owner="person"`: the practice of the person named by the `person_key` path parameter.
- `owner="caller"`: the caller's own organisation (requests about several items, each of which
  the route checks again with `Access.allows`).
- `owner="collection"`: a listing; everyone's when a rule of scope `any` allows, else the
  caller's own (`Access.scope` says which).

FastAPI reads and parses a request's body before it runs any dependency, so `BodyGate` (an ASGI
middleware) holds the body back: the first time anything asks for it, the request is
authorised first (`authorise`, whose answer the dependency then reuses), and a body is capped
(`ApiConfig.max_json_bytes`, 413) unless the route streams it itself under its own limit
(`permission(..., streamed=True)`, the extract upload).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.authz import NONE, SOURCES, policy_source
from api.identity import AuthError
from api.problems import Halted, Problem
from api.scored_run import NoRun
from api.trail import AuditNote
from api.users import ANONYMOUS, Principal

PURPOSE_HEADER = "X-Purpose-Of-Use"
PURPOSE_RE = re.compile(r"^[a-z_]{2,32}$")
SAFE_PARAM = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
# Ten digits, however they are grouped or separated (anything but letters between them): a
# path parameter holding such a run is never written into the audit entry's resource.
DIGIT_RUN = re.compile(r"\d(?:[\W_]{0,3}\d){9}")
bearer = HTTPBearer(auto_error=False, description="A Haven token (`haven users add`) or an "
                                                  "OIDC access token from the configured issuer.")


ACCESS = "haven.access"  # where a request's Access is kept in its ASGI scope


@dataclass(frozen=True)
class Permission:
    obj: str
    act: str
    owner: str | None = None
    any_source: bool = False
    streamed: bool = False  # the route reads its body itself, under its own limit


def permission(obj: str, act: str, *, owner: str | None = None, any_source: bool = False,
               streamed: bool = False) -> Callable[[Callable], Callable]:
    """Declare the Casbin resource and action of a route (read by `authorise`); `streamed`
    when the route reads a body larger than `ApiConfig.max_json_bytes` itself."""

    def mark(endpoint: Callable) -> Callable:
        endpoint.haven_permission = Permission(obj, act, owner, any_source, streamed)  # type: ignore[attr-defined]
        return endpoint

    return mark


@dataclass
class Access:
    """A request that Casbin allowed: who, under which role and purpose, and the audit note."""

    principal: Principal
    role: str
    purpose: str
    scope: str  # any | own | -
    note: AuditNote
    services: Any
    context: dict[str, Any] = field(default_factory=dict)

    def allows(self, obj: str, act: str, *, source: str = NONE, owner: str = NONE) -> bool:
        return self.services.policy.granting_role(
            self.principal.roles, self.principal.org, obj, act, self.purpose, source,
            owner) is not None

    def require(self, obj: str, act: str, *, source: str = NONE, owner: str = NONE,
                detail: str | None = None) -> None:
        if not self.allows(obj, act, source=source, owner=owner):
            self.note.detail["refused"] = detail or f"{obj}.{act}"
            raise Problem(403, detail or f"not allowed to {act} {obj}")

    def visible_sources(self, owner: str) -> frozenset[str]:
        """Sources whose person-level data this caller may see for a person of `owner`."""
        return self.services.policy.sources_allowed(self.principal.roles, self.principal.org,
                                                    self.purpose, owner)

    def answered(self, n_records: int, **detail: Any) -> None:
        self.note.n_records = n_records
        self.note.detail.update(detail)


def _resource(request: Request) -> str:
    """The route with its path parameters, each only when it cannot be an identifier."""
    route = request.scope.get("route")
    path = getattr(route, "path", "unrouted")
    for name, value in request.path_params.items():
        text = str(value)
        if SAFE_PARAM.match(text) and not DIGIT_RUN.search(text):
            path = path.replace("{" + name + "}", text)
    return path[:200]


async def _principal(services: Any, credentials: HTTPAuthorizationCredentials | None,
                     request: Request) -> Principal:
    if credentials is None:
        if request.headers.get("authorization"):
            raise AuthError("the Authorization header must be `Bearer <token>`")
        return ANONYMOUS
    remembered = services.auth.remembered(credentials.credentials)
    if remembered is not None:
        return remembered
    return await run_in_threadpool(services.auth.authenticate, credentials.credentials)


async def _owner(rule: Permission, request: Request, access_context: dict[str, Any],
                 services: Any, principal: Principal, purpose: str) -> list[str]:
    """Owners to try, in order (a collection tries everyone's first, then the caller's own)."""
    if rule.owner is None:
        return [NONE]
    if rule.owner == "caller":
        return [principal.org]
    if rule.owner == "collection":
        return ["*", principal.org]
    if rule.owner.startswith("path:"):
        return [str(request.path_params.get(rule.owner[5:], NONE)).upper()]
    if rule.owner == "person":
        try:
            release = services.releases.fresh(purpose) or await run_in_threadpool(
                services.releases.current, purpose)
        except NoRun:
            return [NONE]
        row = release.position(str(request.path_params.get("person_key", "")))
        access_context["release"] = release
        access_context["row"] = row
        return [release.practice_of(row) if row is not None else NONE]
    raise ValueError(f"unknown owner rule {rule.owner}")


async def authorise(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    purpose_of_use: Annotated[str | None, Header(
        alias=PURPOSE_HEADER, description="Purpose of use asserted by the caller "
        "(commissioning, case_finding, governance, administration, data_submission); by "
        "default their role's only purpose.", examples=["case_finding"])] = None,
) -> Access:
    """Authenticate, decide with Casbin and note the audit entry; raises 401 or 403. Decided
    once per request (`BodyGate` may have asked already, before the body was read)."""
    decided = request.scope.get(ACCESS)
    if decided is not None:
        return decided
    access = await _decide(request, credentials, purpose_of_use)
    request.scope[ACCESS] = access
    return access


async def _decide(request: Request, credentials: HTTPAuthorizationCredentials | None,
                  purpose_of_use: str | None) -> Access:
    services = request.app.state.services
    note = AuditNote(resource=_resource(request))
    request.state.audit_note = note
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    rule: Permission | None = getattr(endpoint, "haven_permission", None)
    if rule is None:  # fail closed: a route without a declared permission answers nobody
        raise Problem(403, "this route has no access rule")
    note.action = f"{rule.obj}.{rule.act}"
    try:
        principal = await _principal(services, credentials, request)
    except AuthError as exc:
        note.detail["reason"] = str(exc)
        raise Problem(401, str(exc)) from None
    note.actor, note.org = principal.user, principal.org
    note.role = principal.roles[0] if principal.roles else "-"
    if services.policy.refresh_due():
        await run_in_threadpool(services.policy.refresh)
    asserted = (purpose_of_use or "").strip().lower()
    if asserted and not PURPOSE_RE.match(asserted):
        raise Problem(422, f"header {PURPOSE_HEADER}: a purpose of use such as commissioning")
    purpose = asserted or services.policy.default_purpose(principal.roles)
    note.purpose = purpose
    context: dict[str, Any] = {}
    sources = [policy_source(s) for s in SOURCES] if rule.any_source else [NONE]
    owners = await _owner(rule, request, context, services, principal, purpose)
    for index, owner in enumerate(owners):
        for source in sources:
            role = services.policy.granting_role(principal.roles, principal.org, rule.obj,
                                                 rule.act, purpose, source, owner)
            if role is not None:
                note.role = role
                scope = "any" if rule.owner == "collection" and index == 0 else (
                    "own" if rule.owner else NONE)
                return Access(principal, role, purpose, scope, note, services, context)
    if not principal.authenticated:
        raise Problem(401, "a bearer token is required")
    named = rule.owner is not None and rule.owner.startswith("path:")  # the caller named it
    whose = f" of {owners[-1]}" if named else ""  # problem details are scrubbed
    raise Problem(403, f"role {', '.join(principal.roles)} may not {rule.act} {rule.obj}"
                       f"{whose} for purpose {purpose}")


class BodyGate:
    """ASGI middleware: nothing reads a request's body before the request is authorised, and
    a body is at most `limit` bytes unless its route streams it under its own limit.

    The body is held back behind `receive`: the first call authorises the request (the route
    is matched by then; a refusal is answered without a byte of the body read) and checks the
    declared length; later calls count what arrives, so a body without a declared length is
    cut off at the limit too."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit: int | None = None
        admitted = False
        size = 0

        async def gated() -> Message:
            nonlocal limit, admitted, size
            if not admitted:
                limit = await self._admit(scope, receive)
                admitted = True
            message = await receive()
            if limit is not None and message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise Halted(_too_large(limit))
            return message

        await self.app(scope, gated, send)

    async def _admit(self, scope: Scope, receive: Receive) -> int | None:
        """Authorise the request (once) and return the limit its body is read under."""
        request = Request(scope, receive)
        try:
            await authorise(request, await bearer(request), request.headers.get(PURPOSE_HEADER))
            rule = getattr(getattr(scope.get("route"), "endpoint", None), "haven_permission",
                           None)
            if rule is not None and rule.streamed:
                return None
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.limit:
                raise _too_large(self.limit)
        except Problem as exc:
            raise Halted(exc) from None
        return self.limit


def _too_large(limit: int) -> Problem:
    return Problem(413, f"the request body is larger than the {limit // 1024} KiB limit")
