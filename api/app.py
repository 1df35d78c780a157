"""The app factory: `create_app(settings)` builds Haven's API with nothing global.

Every request goes through the audit middleware (one entry each, written before the response)
and the `authorise` dependency (authentication, then Casbin), which runs before any body is read
(`BodyGate`); errors are problem details.

Examples:
    >>> from governance.settings import Settings
    >>> app = create_app(Settings(home=Path("/srv/haven")))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api import pages, problems
from api.authz import AccessPolicy
from api.config import ApiConfig
from api.current_release import ReleaseStore
from api.guard import BodyGate, authorise
from api.identity import Authenticator
from api.jobs import JobRunner
from api.routes import (
    admin,
    analyses,
    extracts,
    governance,
    impact,
    jobs,
    meta,
    models,
    reidentify,
    risk,
)
from api.scored_run import NoRun
from api.trail import AuditMiddleware, AuditWriter
from governance import core_dumps
from governance.db import open_database
from governance.keys import KeyProvider
from governance.settings import Settings
from governance.suppression import Rule
from pipeline.context import Context

DESCRIPTION = """Haven's release API. Every request is authenticated (a Haven bearer token, or an
OIDC access token from the configured issuer), decided by Casbin on the caller's role,
organisation, purpose of use (header `X-Purpose-Of-Use`; by default the role's own) and the
data source, and written to the tamper-evident audit log. Person-level answers are
pseudonymised (person keys) except the MDT re-identification and reverse lookup answers, and
hold only the sources the caller's role may see. Errors are `application/problem+json`."""


@dataclass
class Services:
    """What the routes use, built once per app and reached through `app.state.services`."""

    settings: Settings
    engine: Engine
    keys: KeyProvider
    context: Context  # the pipeline's handle; routes act through `context.acting_as(caller)`
    config: ApiConfig
    policy: AccessPolicy
    auth: Authenticator
    releases: ReleaseStore
    audit: AuditWriter
    jobs: JobRunner
    _rule: tuple[float, Rule] | None = None
    _rule_lock: threading.Lock = field(default_factory=threading.Lock)

    def suppression_rule(self) -> Rule:
        """The small-number rule in force (an IG lead's change applies within seconds)."""
        found = self.fresh_suppression_rule()
        if found is not None:
            return found
        with self._rule_lock:
            self._rule = (time.monotonic(), Rule.load(engine=self.engine))
            return self._rule[1]

    def fresh_suppression_rule(self) -> Rule | None:
        """The rule in force when checked within the refresh interval (no I/O), else None."""
        cached = self._rule
        if cached is not None and time.monotonic() - cached[0] < max(
                self.config.refresh_seconds, 1.0):
            return cached[1]
        return None

    def forget_suppression_rule(self) -> None:
        self._rule = None


def _problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The generated description, with every operation's errors as problem details."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=app.openapi_tags)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ProblemModel" not in components:
            from api.problems import ProblemModel

            components["ProblemModel"] = ProblemModel.model_json_schema(
                ref_template="#/components/schemas/{model}")
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                answers = operation.setdefault("responses", {})
                for status, entry in problems.responses(401, 403, 422).items():
                    answers.setdefault(str(status), entry)
                    if str(status) == "422":
                        answers["422"] = entry
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(settings: Settings, *, engine: Engine | None = None,
               keys: KeyProvider | None = None, config: ApiConfig | None = None) -> FastAPI:
    """Haven's API over one data directory and database.

    Args:
        settings: where the data is (as for every `haven` command).
        engine: an open database (default: `open_database(settings)`, which migrates).
        keys: the key provider (default: from `settings`).
        config: upload limit, caches and OIDC (default: `ApiConfig()`, tokens only).
    """
    engine = engine or open_database(settings)
    keys = keys or KeyProvider(settings.layout.key_file, settings.key_env)
    config = config or ApiConfig()
    policy = AccessPolicy(engine, settings, config.refresh_seconds)
    writer = AuditWriter(engine)
    context = Context(settings, engine=engine, keys=keys)
    services = Services(
        settings=settings, engine=engine, keys=keys, context=context, config=config,
        policy=policy,
        auth=Authenticator(engine, config, policy.roles()),
        releases=ReleaseStore(settings, engine, config.refresh_seconds), audit=writer,
        jobs=JobRunner(context))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Load the current run now rather than on the first request, then keep everything
        # built so far (modules, FHIR models, pyarrow's compute functions: a few hundred
        # thousand objects) out of the cyclic collector's full passes, which otherwise pause
        # a busy server for 100 ms or more.
        import fhir.resources.R4B.riskassessment  # noqa: F401 - imported now, frozen below
        import pyarrow.compute  # noqa: F401

        from api.present import group_sources

        group_sources()  # stratify's catalogue (imports the modelling stack, once)
        for purpose in ("commissioning", "case_finding"):
            with contextlib.suppress(NoRun):
                await run_in_threadpool(services.releases.current, purpose)
        for context in iter_route_contexts(_app.routes):  # FastAPI builds routes on first use
            _ = context.route
        _app.openapi()
        gc.collect()
        gc.freeze()
        yield
        writer.close()

    app = FastAPI(title="Haven", version="0.1.0", description=DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  dependencies=[Depends(authorise)])
    app.state.services = services
    for module in (meta, risk, reidentify, extracts, jobs, governance, admin, impact, models):
        app.include_router(module.router)
    app.include_router(analyses.router)  # journeys, costs, segments (issue #14)
    problems.install(app)
    # Added first, so innermost: the gate must see the scope the router fills in (the route).
    app.add_middleware(BodyGate, limit=config.max_json_bytes)
    pages.install(app)  # web pages: routes, sessions (outside the gate), error pages
    app.add_middleware(AuditMiddleware, writer=writer)
    app.openapi = _problem_openapi(app)  # type: ignore[method-assign]
    return app


def create_app_from_environ() -> FastAPI:  # pragma: no cover - used by uvicorn workers
    """Factory for `uvicorn --factory` (several workers): settings from this process's
    environment, read once here, at the process's entry point. No core dumps (it holds the
    release key and serves identifiable rows)."""
    core_dumps.forbid(hard=True)
    return create_app(Settings.from_environ(os.environ),
                      config=ApiConfig.from_environ(os.environ))
