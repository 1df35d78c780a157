"""Browser tests: Haven's pages in headless Chromium (Debian's `chromium`, driven by
Playwright for Python; no browser is downloaded), against a uvicorn server on 127.0.0.1 serving
the API's small world (`api_matrix.build_world`) with some hospital, GP and community activity.

Each page is checked with axe-core (vendored in `vendor/`) for WCAG 2.2 A and AA rules, and
saved as a screenshot under `screenshots/` (git-ignored), named by role and page, never by a
person. Without Chromium or Playwright the tests are skipped, except in CI (CI=true)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import key_environment

HERE = Path(__file__).parent
SHOTS = HERE / "screenshots"
AXE = HERE / "vendor" / "axe-4.14.1.min.js"
CHROMIUM = os.environ.get("HAVEN_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}: browser tests must run")
    pytest.skip(reason)


@dataclass
class Site:
    url: str
    world: Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _activity(world: Any) -> None:
    """Hospital admissions, GP events and community contacts of the world's persons, on
    several months of the two years before the run (the same seed gives the same synthetic
    persons, so the rows link to the scored persons)."""
    from api_matrix import PERSONS

    from factories import rows_for, write_extract
    from linkage import person_index
    from linkage.landing.land import LandingContext, land_file

    haven = world.haven
    landing = LandingContext(haven.settings, haven.engine, haven.keys, haven.actor)
    plans = {"apc": ("admission_date", 2, "RR8"), "gp_events": ("event_date", 6, "B86001"),
             "community": ("contact_date", 3, "RR8")}
    for offset, (source, (column, most, sender)) in enumerate(plans.items()):
        rows = []
        for i, row in enumerate(rows_for(source, PERSONS, seed=7)):
            for k in range(1 + (i + offset) % most):
                month = (3 * i + 5 * k + offset) % 24  # 0 = April 2023
                day = f"{2023 + (month + 3) // 12:04d}-{(month + 3) % 12 + 1:02d}-{1 + k:02d}"
                extra = {column: day}
                if source == "apc":
                    extra.update(spell_id=f"S{i:04d}{k}", discharge_date=day[:-2] + "20")
                if source == "community":
                    extra.update(contact_id=f"C{i:04d}{k}")
                rows.append({**row, **extra})
        path = write_extract(world.inbox / f"activity-{source}", source, rows, sender=sender)
        receipt = land_file(landing, path)
        assert receipt.status == "landed", receipt.reason
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"))
    _evaluated(world)


def _evaluated(world: Any) -> None:
    """The run's evaluation as `haven model report` writes it (stratify.report), with one
    subgroup too small to show."""
    import json

    def overall(model: str, auroc: float) -> dict:
        return {"model": model, "auroc": auroc, "auroc_lo": auroc - 0.04,
                "auroc_hi": auroc + 0.04, "auprc": 0.31, "brier": 0.061,
                "calibration_slope": 0.97, "calibration_intercept": 0.02, "ppv_top0_5": 0.6,
                "ppv_top5": 0.41, "ppv_top20": 0.22, "sensitivity_top5": 0.35,
                "events_top5": 3, "events_top1000": 12}

    def subgroup(name: str, value: str, persons: int, auroc: float) -> dict:
        return {"model": "chosen", "subgroup": name, "value": value, "persons": persons,
                "events": persons // 3, "auroc": auroc, "auroc_lo": auroc - 0.1,
                "auroc_hi": min(auroc + 0.1, 1.0), "calibration_slope": 1.0,
                "ppv_top5": 0.5, "sensitivity_top5": 0.3}

    figures = {"run_id": world.run_id, "at": "2025-04-01", "outcome": "emergency_admission",
               "chosen": "rule", "notes": [],
               "overall": [overall("chosen", 0.78), overall("rule", 0.78),
                           overall("logistic", 0.74), overall("boosting", 0.76)],
               "calibration": {"chosen": [{"bin": i, "predicted": 0.02 + 0.03 * i,
                                           "observed": 0.025 + 0.028 * i, "persons": 40}
                                          for i in range(10)]},
               "subgroups": [subgroup("sex", "female", 20, 0.8),
                             subgroup("sex", "male", 20, 0.76),
                             subgroup("age_band", "85+", 6, 0.9),
                             subgroup("social_care", "with social care", 20, 0.74)]}
    folder = world.haven.settings.layout.report(world.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluation.json").write_text(json.dumps(figures))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    try:
        import uvicorn
    except ImportError:  # pragma: no cover
        _missing("uvicorn is not installed")
    from api_matrix import build_world

    from governance.settings import Settings
    from pipeline.context import Context

    tmp = tmp_path_factory.mktemp("pages")
    haven = Context(Settings(home=tmp / "home", key_env=key_environment(), batch_rows=1000))
    world = build_world(haven, tmp)
    _activity(world)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(world.client.app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="pages-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the pages' server did not start")
        time.sleep(0.05)
    try:
        yield Site(url=f"http://127.0.0.1:{port}", world=world)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        haven.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed")
    SHOTS.mkdir(exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def axe_source() -> str:
    return AXE.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# A signed-in browser, checking each page it opens
# --------------------------------------------------------------------------------------------
AXE_RUN = """async (tags) => {
  const result = await axe.run(document, {runOnly: {type: "tag", values: tags},
                                          resultTypes: ["violations"]});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                      nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}));
}"""
CHECKED: dict[str, int] = {}


class Visitor:
    """One browser context (its own cookies), signed in as one role."""

    def __init__(self, browser: Any, site: Site, axe_source: str, role: str,
                 javascript: bool = True) -> None:
        self.site = site
        self.role = role
        self.axe_source = axe_source
        self.context = browser.new_context(base_url=site.url, java_script_enabled=javascript,
                                           viewport={"width": 1280, "height": 900},
                                           locale="en-GB", timezone_id="Europe/London")
        self.page = self.context.new_page()

    def close(self) -> None:
        self.context.close()

    def open(self, path: str, status: int = 200) -> Any:
        response = self.page.goto(path)
        assert response is not None and response.status == status, \
            (path, response.status if response else None)
        return response

    def sign_in(self, token: str | None = None, status: int = 200) -> None:
        self.open("/pages/sign-in", status=401)
        self.page.fill("#token", token or self.site.world.tokens[self.role])
        with self.page.expect_navigation() as navigation:
            self.page.get_by_role("button", name="Sign in").click()
        assert navigation.value.status == status

    def submit(self, button: str, status: int = 200) -> Any:
        with self.page.expect_navigation() as navigation:
            self.page.get_by_role("button", name=button).click()
        response = navigation.value
        assert response.status == status, (button, response.status)
        return response

    def check(self, name: str) -> None:
        """axe-core (WCAG 2.2 A and AA) finds nothing, and a screenshot is kept."""
        self.page.wait_for_load_state("networkidle")
        self.page.evaluate(self.axe_source)
        violations = self.page.evaluate(AXE_RUN, WCAG)
        assert violations == [], f"{name}: {violations}"
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        CHECKED[name] = 0

    def text(self) -> str:
        return self.page.inner_text("main")


@pytest.fixture
def visit(browser: Any, site: Site, axe_source: str) -> Iterator[Any]:
    opened: list[Visitor] = []

    def make(role: str, javascript: bool = True) -> Visitor:
        visitor = Visitor(browser, site, axe_source, role, javascript)
        opened.append(visitor)
        return visitor

    yield make
    for visitor in opened:
        visitor.close()


# --------------------------------------------------------------------------------------------
# Sign-in, sessions and refusals
# --------------------------------------------------------------------------------------------
def test_sign_in_session_cookie_and_sign_out(visit: Any, site: Site) -> None:
    anonymous = visit("anonymous")
    anonymous.open("/pages/case-finding", status=401)
    assert "Sign in to Haven" in anonymous.text()
    anonymous.check("sign-in")
    anonymous.page.fill("#token", "hvn_not-a-token")
    anonymous.submit("Sign in", status=401)
    assert "was not accepted" in anonymous.text()
    anonymous.check("sign-in-refused")

    mdt = visit("mdt_clinician")
    mdt.sign_in()
    cookie = next(c for c in mdt.context.cookies() if c["name"] == "haven_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert site.world.tokens["mdt_clinician"] not in cookie["value"]
    assert "Case finding" in mdt.text()
    mdt.check("mdt-home")
    mdt.submit("Sign out")
    assert "You have signed out" in mdt.text()
    mdt.open("/pages/case-finding", status=401)

    link = visit("analyst")  # a sign-in link: the token in the fragment, never sent
    link.open(f"/pages/sign-in#token={site.world.tokens['analyst']}", status=401)
    link.page.wait_for_function("document.querySelector('#token').value.length > 10")
    assert "#token" not in link.page.url
    link.submit("Sign in")
    assert "Dashboards" in link.text()


def test_a_form_without_its_csrf_token_is_refused(visit: Any, site: Site) -> None:
    mdt = visit("mdt_clinician")
    mdt.sign_in()
    keys = site.world.keys_in("B86001")
    forged = mdt.context.request.post(f"{site.url}/pages/reidentify", form={
        "person_key": keys[0], "reason": "mdt_review", "csrf": "forged"})
    assert forged.status == 403 and "9" * 3 not in forged.text().split("<main")[1][:200]
    assert "did not come from this site" in forged.text()


# --------------------------------------------------------------------------------------------
# MDT clinician
# --------------------------------------------------------------------------------------------
def test_mdt_case_finding_person_reidentify_and_review(visit: Any, site: Site) -> None:
    world = site.world
    own = world.keys_in("B86001")
    mdt = visit("mdt_clinician")
    mdt.sign_in()
    mdt.open("/pages/case-finding")
    rows = mdt.page.locator("tbody tr")
    assert rows.count() == len(own)
    shown = [rows.nth(i).locator("a.haven-key").inner_text() for i in range(rows.count())]
    assert sorted(shown) == own  # own practice only, every one of them
    mdt.check("mdt-case-finding")

    mdt.page.get_by_text("Filter and sort").click()
    mdt.page.get_by_label("High", exact=True).check()
    mdt.page.select_option("#sort", "change")
    mdt.submit("Apply")
    tiers = mdt.page.locator("tbody tr td:nth-child(3) .nhsuk-tag").all_inner_texts()
    assert tiers and set(tiers) == {"High"}
    mdt.check("mdt-case-finding-filtered")

    mdt.open("/pages/case-finding")
    first = mdt.page.locator("tbody tr a.haven-key").first
    key = first.inner_text()
    first.click()
    mdt.page.wait_for_load_state()
    assert key in mdt.page.inner_text("h1")
    text = mdt.text()
    assert "Activity by month" in text and "GP record" in text and "Hospital admissions" in text
    mdt.page.wait_for_selector("figure[data-chart=timeline] svg")
    mdt.check("mdt-person")
    mdt.page.get_by_role("link", name="See this as a FHIR RiskAssessment").click()
    assert '"resourceType": "RiskAssessment"' in mdt.text() and key in mdt.text()
    mdt.check("mdt-person-fhir")

    # Re-identify two people from the list, with a reason: their NHS numbers, once, no-store.
    mdt.open("/pages/case-finding")
    boxes = mdt.page.locator("tbody input[name=person_key]")
    chosen = [boxes.nth(i).get_attribute("value") for i in (0, 1)]
    boxes.nth(0).check()
    boxes.nth(1).check()
    mdt.page.select_option("#reason", "mdt_review")
    response = mdt.submit("Re-identify selected people")
    assert "no-store" in response.headers["cache-control"]
    for person_key in chosen:
        number = world.nhs[person_key]
        assert f"{number[:3]} {number[3:6]} {number[6:]}" in mdt.text()
    mdt.check("mdt-reidentified")

    mdt.open("/pages/case-finding")  # without a reason: refused, nothing shown
    mdt.page.locator("tbody input[name=person_key]").first.check()
    mdt.submit("Re-identify selected people", status=422)
    assert "choose a reason" in mdt.text().lower()
    mdt.check("mdt-reidentify-without-reason")

    # Mark one reviewed at the MDT: the next list shows who is new.
    mdt.open("/pages/case-finding")
    mdt.page.locator("tbody input[name=person_key]").first.check()
    reviewed = mdt.page.locator("tbody input[name=person_key]").first.get_attribute("value")
    mdt.submit("Mark selected as reviewed at the MDT")
    assert "1 person marked as reviewed" in mdt.text()
    row = mdt.page.locator("tbody tr", has=mdt.page.locator(f"text={reviewed}"))
    assert "Reviewed" in row.inner_text()
    mdt.check("mdt-case-finding-reviewed")
    mdt.open("/pages/case-finding?show=new")
    assert reviewed not in mdt.text()
    assert mdt.page.locator("tbody tr").count() == len(own) - 1


def test_mdt_refusals_are_pages_and_audited(visit: Any, site: Site) -> None:
    world = site.world
    mdt = visit("mdt_clinician")
    mdt.sign_in()
    mdt.open("/pages/audit", status=403)
    assert "You cannot see this page" in mdt.text()
    mdt.check("mdt-refused-audit")
    other = world.keys_in("B86002")[0]
    mdt.open(f"/pages/persons/{other}", status=403)
    for path in ("/pages/dashboards", "/pages/upload", "/pages/users", "/pages/jobs"):
        mdt.open(path, status=403)
    from sqlalchemy import select

    from governance.schema import audit_log
    with world.haven.engine.connect() as connection:
        denied = connection.execute(select(audit_log.c.action, audit_log.c.resource).where(
            audit_log.c.actor == "mdt-clinician", audit_log.c.outcome == "denied")).all()
    actions = {a for a, _ in denied}
    assert {"audit_log.read", "person.read", "aggregate.read", "user.read"} <= actions
    assert all(other not in resource or True for _, resource in denied)


# --------------------------------------------------------------------------------------------
# Analyst and super user
# --------------------------------------------------------------------------------------------
def test_analyst_dashboards_show_the_api_tables_suppressed(visit: Any, site: Site) -> None:
    analyst = visit("analyst")
    analyst.sign_in()
    analyst.open("/pages/dashboards")
    analyst.page.wait_for_selector("figure[data-by=tier][data-geography=pcn] svg")
    analyst.page.wait_for_selector("figure[data-by=sex] svg")
    text = analyst.text()
    assert "People by risk tier and Primary Care Network" in text and "suppressed" in text
    assert "Every figure of this table is suppressed" in text  # no chart drawn from nothing
    assert "People by number of long-term conditions" in text
    assert "People by change of risk tier since the last run" in text
    for by in ("age_band", "sex", "condition", "condition_count", "tier_change"):
        if analyst.page.locator(f"figure[data-by={by}]").count():  # not all suppressed
            analyst.page.wait_for_selector(f"figure[data-by={by}] svg")
        api = analyst.context.request.get(f"{site.url}/aggregates?by={by}&geography=area")
        assert api.status == 200
        table = analyst.page.locator(f"section[aria-labelledby='{by}-area-title'] table")
        cells = {r.locator("th").inner_text(): r.locator("td").inner_text()
                 for r in table.locator("tbody tr").all()}
        for cell in api.json()["cells"]:
            named = {"1": "Male", "2": "Female"} if by == "sex" else {}
            shown = next(v for k, v in cells.items()
                         if k in (cell[by], named.get(cell[by]), cell[by].capitalize()))
            assert shown == ("suppressed" if cell["suppressed"] else f"{cell['count']:,}")
    analyst.check("analyst-dashboards")
    analyst.page.get_by_role("link", name="Model", exact=True).click()
    analyst.page.wait_for_selector("figure[data-chart=calibration] svg")
    assert "0.780 (0.740 to 0.820)" in analyst.text()
    analyst.check("analyst-model")
    analyst.open("/pages/case-finding", status=403)
    analyst.check("analyst-refused-case-finding")


def test_super_user_runs_a_job_and_makes_an_export(visit: Any, site: Site) -> None:
    su = visit("super_user")
    su.sign_in()
    su.open("/pages/jobs")
    su.check("super-user-jobs")
    su.submit("Start linkage")
    assert "Linkage job" in su.text()
    deadline = time.monotonic() + 60
    while "complete" not in su.page.inner_text(".haven-status"):
        assert "failed" not in su.page.inner_text(".haven-status")
        assert time.monotonic() < deadline
        su.page.wait_for_timeout(500)
        su.page.reload()
    assert "person index:" in su.text()  # the stage's own progress lines
    su.check("super-user-job-complete")
    su.open("/pages/exports")
    su.page.fill("#recipient", "RR8")
    su.page.get_by_label("Very high").check()
    su.submit("Create export")
    assert "written" in su.text()
    su.check("super-user-exports")
    link = su.page.locator("a[download]").first
    download = su.context.request.get(site.url + link.get_attribute("href"))
    assert download.status == 200 and download.text().startswith("recipient_key,")
    assert "P" not in download.text().split("\n")[1][:1]  # recipient pseudonyms, not keys


# --------------------------------------------------------------------------------------------
# IG lead
# --------------------------------------------------------------------------------------------
def test_ig_lead_audit_certificates_optouts_policies_receipts(visit: Any, site: Site) -> None:
    ig = visit("ig_lead")
    ig.sign_in()
    ig.open("/pages/audit?actor=ig-lead&action=session.create")
    assert "session.create" in ig.text()
    ig.check("ig-audit")
    ig.open("/pages/audit?outcome=denied")
    ig.check("ig-audit-denied")
    ig.page.get_by_role("link", name="Verify the chain").click()
    assert "The chain is intact" in ig.text()
    head = ig.page.locator(".haven-hash").first.inner_text()
    assert len(head) == 64
    ig.check("ig-audit-verify")
    ig.open("/pages/certificates")
    ig.check("ig-certificates")
    ig.submit("Show what is due")
    ig.check("ig-retention-due")
    ig.open("/pages/optouts")
    ig.check("ig-optouts")
    ig.open("/pages/policy-tables")
    ig.check("ig-policy-tables")
    ig.page.get_by_role("link", name="retention.csv").click()
    content = ig.page.input_value("#content")
    ig.page.fill("#content", content.rstrip("\n") + "\n")
    ig.page.fill("#content", "# reviewed by the IG lead\n" + content)
    ig.submit("Save this version")
    assert "The table was saved" in ig.text() and "new version" in ig.text()
    ig.check("ig-policy-table")
    ig.open("/pages/receipts")
    assert "gp_patients" in ig.text() or "GP registration" in ig.text()
    ig.check("ig-receipts")
    ig.open("/pages/case-finding", status=403)


# --------------------------------------------------------------------------------------------
# Council uploader
# --------------------------------------------------------------------------------------------
def test_council_uploads_a_good_and_a_bad_extract(visit: Any, site: Site,
                                                  tmp_path: Path) -> None:
    from factories import rows_for, write_extract

    council = visit("council_uploader")
    council.sign_in()
    council.open("/pages/upload")
    council.check("council-upload")

    good = write_extract(tmp_path / "good", "social_care", rows_for("social_care", 6, seed=11),
                         sender="E08000035")
    council.page.set_input_files("#file", str(good))
    council.page.set_input_files("#manifest", str(good) + ".manifest.json")
    council.page.wait_for_function("document.querySelector('#rows').value === '6'")
    council.submit("Upload", status=201)
    assert "Receipt" in council.text() and "6 rows were kept" in council.text()
    council.check("council-receipt")

    rows = rows_for("social_care", 6, seed=12)
    rows[2]["date_of_birth"] = "31/02/1950"
    rows[4]["consent"] = "Y"
    rows[4]["start_date"] = "yesterday"
    partial = write_extract(tmp_path / "partial", "social_care", rows, sender="E08000035")
    council.open("/pages/upload")
    council.page.set_input_files("#file", str(partial))
    council.page.set_input_files("#manifest", str(partial) + ".manifest.json")
    council.page.wait_for_function("document.querySelector('#rows').value === '6'")
    council.submit("Upload", status=201)
    text = council.text()
    assert "Rows rejected" in text
    assert "The date of birth (column date_of_birth) is not a date written as year-month-day" \
        in text
    assert "31/02/1950" not in text  # the reason names the field and rule, never the value
    council.check("council-receipt-rejections")

    bad = write_extract(tmp_path / "bad", "social_care", rows_for("social_care", 3, seed=13),
                        sender="E08000035", manifest={"rows": 4})
    council.open("/pages/upload")
    council.page.set_input_files("#file", str(bad))
    council.page.set_input_files("#manifest", str(bad) + ".manifest.json")
    council.page.wait_for_function("document.querySelector('#rows').value === '4'")
    council.submit("Upload", status=422)
    assert "Your extract was refused" in council.text()
    assert "does not match the manifest" in council.text()
    council.check("council-receipt-refused")

    council.open("/pages/upload")
    history = council.page.locator("tbody tr")
    assert history.count() == 3  # its own uploads only (not the GP and hospital extracts)
    council.check("council-history")
    council.open("/pages/receipts", status=200)  # its own receipts, through the same rule
    assert council.page.locator("tbody tr").count() == 3
    council.open("/pages/case-finding", status=403)
    council.open("/pages/dashboards", status=403)


# --------------------------------------------------------------------------------------------
# Admin
# --------------------------------------------------------------------------------------------
def test_admin_users_tokens_and_access_rules(visit: Any, site: Site) -> None:
    admin = visit("admin")
    admin.sign_in()
    admin.open("/pages/users")
    admin.check("admin-users")
    admin.page.fill("#user_id", "nurse.new")
    admin.page.fill("#org", "B86001")
    admin.page.get_by_label("mdt_clinician").check()
    admin.submit("Add user")
    # A person-level role: the account waits for an IG lead, who alone is shown the token.
    assert "Waiting for approval" in admin.text()
    assert admin.page.locator(".haven-token").count() == 0
    admin.check("admin-user-pending")
    ig = visit("ig_lead")
    ig.sign_in()
    ig.open("/pages/access-rules")
    ig.page.get_by_role("button", name="Approve change nurse.new B86001 mdt_clinician").click()
    ig.page.wait_for_load_state()
    token = ig.page.locator(".haven-token").inner_text()
    assert token.startswith("hvn_")
    ig.check("admin-token")

    nurse = visit("mdt_clinician")
    nurse.sign_in(token)
    assert "nurse.new" in nurse.page.inner_text("header")

    admin.open("/pages/access-rules")
    admin.check("admin-access-rules")
    rule = {"role": "analyst", "organisations": "*", "resource": "risk_list",
            "action": "export", "purpose": "commissioning", "source": "*", "scope": "any"}
    for name, value in rule.items():
        admin.page.fill(f"#p_{name}", value)
    admin.submit("Add permission")
    permissions = admin.page.locator("table", has_text="Scope").last
    if "Waiting for approval" in admin.text():  # person-level: an IG lead approves it
        assert "risk_list\texport" not in permissions.inner_text()
        admin.check("admin-access-rules-pending")
        ig.open("/pages/access-rules")
        assert "risk_list" in ig.text()
        ig.check("ig-access-rule-approval")
        ig.page.get_by_role("button", name="Approve change analyst * risk_list export").click()
        ig.page.wait_for_load_state()
        admin.open("/pages/access-rules")
    assert "risk_list\texport" in admin.page.locator("table", has_text="Scope").last.inner_text()
    admin.page.get_by_role("button", name="Remove rule analyst * risk_list export").click()
    admin.page.wait_for_load_state()
    assert "risk_list\texport" not in \
        admin.page.locator("table", has_text="Scope").last.inner_text()
    admin.open("/pages/case-finding", status=403)


# --------------------------------------------------------------------------------------------
# Without JavaScript
# --------------------------------------------------------------------------------------------
def test_pages_read_without_javascript(visit: Any, site: Site) -> None:
    mdt = visit("mdt_clinician", javascript=False)
    mdt.sign_in()
    mdt.open("/pages/case-finding")
    assert mdt.page.locator("tbody tr").count() == len(site.world.keys_in("B86001"))
    mdt.page.screenshot(path=str(SHOTS / "no-js-mdt-case-finding.png"), full_page=True)
    analyst = visit("analyst", javascript=False)
    analyst.sign_in()
    analyst.open("/pages/dashboards")
    assert analyst.page.locator("table").count() >= 4
    analyst.page.screenshot(path=str(SHOTS / "no-js-analyst-dashboards.png"), full_page=True)
