"""Rendering the pages: Jinja2 templates in the NHS design system's markup, the header's
navigation (only the pages Casbin lets the caller open), and the security headers every page
carries (no caching anywhere: every page is someone's data or governance record)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from api.pages.session import Session

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_URL = "/pages/static"
CSS = f"{STATIC_URL}/nhsuk/nhsuk-frontend-10.6.1.min.css"
SECURITY_HEADERS = {
    # Scripts and everything else from this server only; Plot's SVG carries inline styles.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "font-src 'self'; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
TIER_LABEL = {"very_high": "Very high", "high": "High", "moderate": "Moderate", "low": "Low"}
TIER_TAG = {"very_high": "nhsuk-tag--red", "high": "nhsuk-tag--orange",
            "moderate": "nhsuk-tag--yellow", "low": "nhsuk-tag--grey"}
SEX_LABEL = {"1": "Male", "2": "Female", "9": "Not specified", "0": "Not known"}
SOURCE_LABEL = {"apc": "Hospital admissions", "ae": "A&E", "op": "Outpatients",
                "gp_patients": "GP registration", "gp_events": "GP record",
                "gp_medications": "GP prescribing", "community": "Community services",
                "social_care": "Social care", "deaths": "Deaths register",
                "optouts": "Opt-outs"}


@dataclass(frozen=True)
class NavItem:
    label: str
    href: str
    obj: str
    act: str
    owner: str = "-"  # "-" | "own" (the caller's organisation) | "any" (a collection)


NAV = (
    NavItem("Case finding", "/pages/case-finding", "case_finding", "read", "own"),
    NavItem("Dashboards", "/pages/dashboards", "aggregate", "read"),
    NavItem("Model", "/pages/model", "aggregate", "read"),
    NavItem("Jobs", "/pages/jobs", "job_score", "create"),
    NavItem("Exports", "/pages/exports", "export", "create"),
    NavItem("Upload", "/pages/upload", "receipt", "read", "own"),
    NavItem("Audit log", "/pages/audit", "audit_log", "read"),
    NavItem("Certificates", "/pages/certificates", "destruction_certificate", "read"),
    NavItem("Opt-outs", "/pages/optouts", "optout_report", "read"),
    NavItem("Policy tables", "/pages/policy-tables", "policy_table", "read"),
    NavItem("Receipts", "/pages/receipts", "receipt", "read", "any"),
    NavItem("Users", "/pages/users", "user", "read"),
    NavItem("Access rules", "/pages/access-rules", "access_policy", "read"),
)


def navigation(access: Any) -> list[NavItem]:
    """The pages the caller may open, as Casbin decides them for this caller and purpose."""
    if access is None or not access.principal.authenticated:
        return []
    org = access.principal.org
    shown = []
    for item in NAV:
        owner = {"own": org, "any": "*"}.get(item.owner, "-")
        if access.allows(item.obj, item.act, owner=owner):
            shown.append(item)
    if any(i.href == "/pages/receipts" for i in shown):  # IG leads: all receipts, no upload
        shown = [i for i in shown if i.href != "/pages/upload"
                 or access.allows("extract", "create", owner=org,
                                  source="social_care/social_care")]
    return shown


def _tier(value: str | None) -> str:
    return TIER_LABEL.get(value or "", "Not scored")


def _percent(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _change(value: float | None) -> str:
    if value is None:
        return "first scored"
    points = 100 * value
    if abs(points) < 0.05:
        return "no change"
    return f"{'up' if points > 0 else 'down'} {abs(points):.1f} points"


def _metric(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _count(figure: dict[str, Any] | None) -> str:
    if not figure:
        return "–"
    if figure.get("suppressed"):
        return "suppressed"
    return f"{figure['count']:,}"


def _json_script(value: Any) -> Markup:
    """JSON for a `<script type="application/json">` block (no `</script>` can close it)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


ENV = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(
    ["html"]), trim_blocks=True, lstrip_blocks=True, auto_reload=False)
ENV.filters.update(tier=_tier, percent=_percent, change=_change, count=_count, metric=_metric,
                   json_script=_json_script,
                   sex=lambda v: SEX_LABEL.get(v or "", "Not known"),
                   source=lambda v: SOURCE_LABEL.get(v, v),
                   tier_tag=lambda v: TIER_TAG.get(v or "", "nhsuk-tag--grey"))
ENV.globals.update(CSS=CSS, STATIC=STATIC_URL, TIER_LABEL=TIER_LABEL, SEX_LABEL=SEX_LABEL)


def session_of(request: Request) -> Session | None:
    return request.scope.get("state", {}).get("page_session")


def render(request: Request, template: str, *, access: Any = None, status: int = 200,
           headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    """A page: the template with the caller's navigation and the session's CSRF token."""
    session = session_of(request)
    signed_in = None
    if session is not None:
        if access is not None and access.principal.authenticated:
            principal = access.principal
            signed_in = {"user": principal.user, "org": principal.org, "role": access.role}
        else:
            signed_in = {"user": session.user, "org": "", "role": ""}
    body = ENV.get_template(template).render(
        request=request, path=request.url.path,
        nav=navigation(access) if signed_in else [], signed_in=signed_in,
        csrf=session.csrf if session is not None else "", **context)
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS,
                                                           **(headers or {})})
