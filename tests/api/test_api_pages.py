"""The web pages through the HTTP app: sessions, CSRF, refusals and what each leaves in the
audit log. (What each role sees in a browser, and axe-core, are in tests/browser.)"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_matrix import OTHER_PRACTICE, OWN_PRACTICE, World, build_world
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.pages import session as page_session
from api.users import revoke_user
from conftest import key_environment
from governance import audit
from governance.audit import SYSTEM
from governance.schema import audit_log
from governance.settings import Settings
from pipeline.context import Context

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pages-api")
    haven = Context(Settings(home=tmp / "home", key_env=key_environment(), batch_rows=1000))
    yield build_world(haven, tmp)
    haven.close()


def client(world: World, https: bool = False) -> TestClient:
    return TestClient(world.client.app, raise_server_exceptions=False,
                      base_url="https://testserver" if https else "http://testserver")


def signed_in(world: World, role: str, https: bool = False) -> tuple[TestClient, str]:
    browser = client(world, https)
    form = browser.get("/pages/sign-in")
    assert form.status_code == 401
    answer = browser.post("/pages/sign-in", data={
        "csrf": CSRF.search(form.text).group(1), "token": world.tokens[role]},
        follow_redirects=False)
    assert answer.status_code == 303, answer.text
    home = browser.get("/pages/")
    assert home.status_code == 200
    return browser, CSRF.search(home.text).group(1)


def entries(world: World, **where: str) -> list[dict]:
    query = select(audit_log)
    for name, value in where.items():
        query = query.where(audit_log.c[name] == value)
    with world.haven.engine.connect() as connection:
        return [dict(r) for r in connection.execute(query.order_by(audit_log.c.seq))
                .mappings()]


def test_session_cookie_flags_and_the_token_never_in_it(world: World) -> None:
    browser, _ = signed_in(world, "analyst")
    cookie = browser.cookies.jar
    session = next(c for c in cookie if c.name == page_session.COOKIE)
    assert world.tokens["analyst"] not in session.value
    assert not session.secure
    form = client(world, https=True).get("/pages/sign-in")
    response = client(world, https=True).post("/pages/sign-in", data={
        "csrf": CSRF.search(form.text).group(1), "token": world.tokens["analyst"]},
        cookies={page_session.SIGN_IN_COOKIE: CSRF.search(form.text).group(1)},
        follow_redirects=False)
    header = [v for k, v in response.headers.multi_items() if k == "set-cookie"
              and v.startswith(page_session.COOKIE + "=")][0]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" in header \
        and "Path=/" in header


def test_sign_in_is_audited_with_the_user_never_the_token(world: World) -> None:
    signed_in(world, "ig_lead")
    found = entries(world, action="session.create", actor="ig-lead")
    assert found and found[-1]["outcome"] == "ok" and found[-1]["role"] == "ig_lead"
    text = str(entries(world))
    assert world.tokens["ig_lead"] not in text
    bad = client(world)
    form = bad.get("/pages/sign-in")
    refused = bad.post("/pages/sign-in", data={"csrf": CSRF.search(form.text).group(1),
                                               "token": "hvn_wrong"})
    assert refused.status_code == 401 and "was not accepted" in refused.text
    assert entries(world, action="session.create", outcome="unauthenticated")


def test_forms_need_the_session_csrf_token(world: World) -> None:
    browser, csrf = signed_in(world, "mdt_clinician")
    key = world.keys_in(OWN_PRACTICE)[0]
    for token in ("", "forged"):
        refused = browser.post("/pages/reviews", data={"csrf": token, "person_key": key,
                                                       "reviewed_on": "2025-01-01"})
        assert refused.status_code == 403 and "did not come from this site" in refused.text
    assert entries(world, action="mdt_review.create", outcome="denied")[-1]["detail"][
        "refused"] == "csrf"
    no_session = client(world).post("/pages/sign-in", data={"token": world.tokens["admin"]})
    assert no_session.status_code == 401  # the sign-in form's own token is missing
    upload = browser.post("/pages/upload", files={"file": ("x.csv", b"a\n")})
    assert upload.status_code == 403  # an MDT may not upload at all
    accepted = browser.post("/pages/reviews", data={"csrf": csrf, "person_key": key,
                                                    "reviewed_on": dt.date.today().isoformat()},
                            follow_redirects=False)
    assert accepted.status_code == 303


def test_refusals_are_pages_and_audited_as_the_api_would(world: World) -> None:
    browser, _ = signed_in(world, "mdt_clinician")
    other = world.keys_in(OTHER_PRACTICE)[0]
    for path, action in (("/pages/audit", "audit_log.read"),
                         (f"/pages/persons/{other}", "person.read"),
                         ("/pages/dashboards", "aggregate.read")):
        page = browser.get(path)
        assert page.status_code == 403, path
        assert page.headers["content-type"].startswith("text/html")
        assert "You cannot see this page" in page.text
        assert entries(world, action=action, outcome="denied", actor="mdt-clinician")
    anonymous = client(world).get("/pages/case-finding")
    assert anonymous.status_code == 401 and "Sign in to Haven" in anonymous.text


def test_reidentify_page_is_not_cached_and_its_numbers_stay_out_of_the_log(world: World
                                                                            ) -> None:
    browser, csrf = signed_in(world, "mdt_clinician")
    keys = world.keys_in(OWN_PRACTICE)[:2]
    page = browser.post("/pages/reidentify", data={"csrf": csrf, "person_key": keys,
                                                   "reason": "mdt_review"})
    assert page.status_code == 200
    assert "no-store" in page.headers["cache-control"]
    for key in keys:
        number = world.nhs[key]
        assert f"{number[:3]} {number[3:6]} {number[6:]}" in page.text
        assert number not in str(entries(world))
    assert audit.verify(world.haven.engine).ok


def test_a_session_ends_when_idle_expired_signed_out_or_its_token_revoked(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    browser, csrf = signed_in(world, "analyst")
    monkeypatch.setattr(page_session, "IDLE_SECONDS", -1)
    ended = browser.get("/pages/dashboards")
    assert ended.status_code == 401 and "Your session has ended" in ended.text
    monkeypatch.undo()

    browser, csrf = signed_in(world, "council_uploader")
    out = browser.post("/pages/sign-out", data={"csrf": csrf})
    assert out.status_code == 200 and "You have signed out" in out.text
    assert browser.get("/pages/upload").status_code == 401

    from api.users import add_user

    token = add_user(world.haven.engine, SYSTEM, "short.lived", "X26", ["analyst"],
                     {"analyst"})
    temporary = client(world)
    form = temporary.get("/pages/sign-in")
    temporary.post("/pages/sign-in", data={"csrf": CSRF.search(form.text).group(1),
                                           "token": token})
    assert temporary.get("/pages/dashboards").status_code == 200
    revoke_user(world.haven.engine, SYSTEM, "short.lived")
    world.client.app.state.services.auth.forget()
    assert temporary.get("/pages/dashboards").status_code == 401


def test_the_session_reaches_api_reads_the_charts_use_and_nothing_else(world: World) -> None:
    browser, _ = signed_in(world, "analyst")
    assert browser.get("/aggregates?by=tier&geography=area").status_code == 200
    assert browser.get("/risk/persons").status_code == 401  # not a page's read
    mdt, _ = signed_in(world, "mdt_clinician")
    key = world.keys_in(OWN_PRACTICE)[0]
    assert mdt.post("/reidentify", json={"person_keys": [key], "reason": "mdt_review"}
                    ).status_code == 401  # API writes never ride on the cookie


def test_static_assets_are_served_and_audited_without_a_session(world: World) -> None:
    anonymous = client(world)
    css = anonymous.get("/pages/static/nhsuk/nhsuk-frontend-10.6.1.min.css")
    assert css.status_code == 200 and "max-age" in css.headers["cache-control"]
    assert anonymous.get("/pages/static/../../haven.db").status_code == 404
    assert anonymous.post("/pages/static/haven.js").status_code == 405
    assert entries(world, action="page_asset.read")


def test_every_page_answers_a_signed_in_role_it_belongs_to(world: World, tmp_path: Path
                                                           ) -> None:
    pages = {"mdt_clinician": ["/pages/", "/pages/case-finding",
                               f"/pages/persons/{world.keys_in(OWN_PRACTICE)[0]}",
                               f"/pages/persons/{world.keys_in(OWN_PRACTICE)[0]}/fhir"],
             "analyst": ["/pages/dashboards", f"/pages/persons/{world.keys_in(OTHER_PRACTICE)[0]}"],
             "super_user": ["/pages/jobs", "/pages/exports", "/pages/dashboards"],
             "ig_lead": ["/pages/audit", "/pages/audit/verify", "/pages/certificates",
                         "/pages/optouts", "/pages/policy-tables",
                         "/pages/policy-tables/retention.csv", "/pages/receipts",
                         "/pages/access-rules", "/pages/audit/export"],
             "council_uploader": ["/pages/upload", "/pages/receipts"],
             "admin": ["/pages/users", "/pages/access-rules"]}
    for role, paths in pages.items():
        browser, _ = signed_in(world, role)
        for path in paths:
            page = browser.get(path)
            assert page.status_code == 200, (role, path, page.text[-500:])


def test_a_job_page_shows_its_progress_without_server_paths(world: World,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import time

    from api import jobs

    asked: list[bool] = []

    def link(ctx, progress, retrain=False) -> dict:
        asked.append(retrain)
        progress("reading 3 extracts from /srv/haven/extracts")
        progress("person index: 40 rows")
        return {"rows": 40}

    monkeypatch.setattr(jobs, "link", link)
    browser, csrf = signed_in(world, "super_user")
    started = browser.post("/pages/jobs/link", data={"csrf": csrf}, follow_redirects=False)
    assert started.status_code == 303
    for _ in range(100):
        page = browser.get(started.headers["location"])
        if "complete" in page.text:
            break
        time.sleep(0.05)
    assert "person index: 40 rows" in page.text and "(on the server)" in page.text
    assert "/srv/haven" not in page.text
    assert asked == [False]  # the box unticked: the kept linkage models are reused
    again = browser.post("/pages/jobs/link", data={"csrf": csrf, "retrain": "yes"},
                         follow_redirects=False)
    assert again.status_code == 303
    for _ in range(100):
        if "complete" in browser.get(again.headers["location"]).text:
            break
        time.sleep(0.05)
    assert asked == [False, True]


def evaluation(run_id: str) -> dict:
    """An evaluation's figures as `haven model report` writes them (stratify.report)."""
    def overall(model: str, auroc: float) -> dict:
        return {"model": model, "auroc": auroc, "auroc_lo": auroc - 0.04,
                "auroc_hi": auroc + 0.04, "auprc": 0.31, "brier": 0.061,
                "calibration_slope": 0.97, "calibration_intercept": 0.02, "ppv_top0_5": 0.6,
                "ppv_top5": 0.41, "ppv_top20": 0.22, "sensitivity_top5": 0.35,
                "events_top5": 3, "events_top1000": 12}

    return {"run_id": run_id, "at": "2025-04-01", "outcome": "emergency_admission",
            "chosen": "rule", "notes": [],
            "overall": [overall("chosen", 0.78), overall("rule", 0.78),
                        overall("logistic", 0.74)],
            "calibration": {"chosen": [{"bin": i, "predicted": 0.02 + 0.03 * i,
                                        "observed": 0.025 + 0.028 * i, "persons": 4}
                                       for i in range(10)]},
            "subgroups": [{"model": "chosen", "subgroup": "sex", "value": "female",
                           "persons": 20, "events": 9, "auroc": 0.8, "auroc_lo": 0.7,
                           "auroc_hi": 0.9, "calibration_slope": 1.0, "ppv_top5": 0.5,
                           "sensitivity_top5": 0.3},
                          {"model": "chosen", "subgroup": "age_band", "value": "85+",
                           "persons": 6, "events": 2, "auroc": 0.91, "auroc_lo": 0.6,
                           "auroc_hi": 1.0, "calibration_slope": 1.4, "ppv_top5": 1.0,
                           "sensitivity_top5": 0.5}]}


def test_the_model_page_shows_the_evaluation_with_small_counts_suppressed(world: World
                                                                         ) -> None:
    import json

    browser, _ = signed_in(world, "analyst")
    before = browser.get("/pages/model")
    assert before.status_code == 200 and "has not been evaluated yet" in before.text
    folder = world.haven.settings.layout.report(world.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluation.json").write_text(json.dumps(evaluation(world.run_id)))
    page = browser.get("/pages/model").text
    assert "0.780 (0.740 to 0.820)" in page and "41.0%" in page
    row = page[page.index("age band: 85+"):][:400]
    assert "suppressed" in row and "0.910" not in row  # six persons: no figure at all
    assert ">20<" in page  # twenty persons shown, rounded to fives
    assert "0.910" not in page
    council, _ = signed_in(world, "council_uploader")
    assert council.get("/pages/model").status_code == 403


def test_the_model_page_says_plainly_when_its_figures_are_a_back_test(world: World) -> None:
    """Before the year after a run has happened, the report judges the training procedure one
    year earlier (#17); the page must not present those figures as this run's."""
    import json

    browser, _ = signed_in(world, "analyst")
    folder = world.haven.settings.layout.report(world.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    figures = evaluation(world.run_id)
    (folder / "evaluation.json").write_text(json.dumps(figures))
    assert "back-test" not in browser.get("/pages/model").text
    (folder / "evaluation.json").write_text(json.dumps(
        {**figures, "kind": "backtest", "judged_at": "2024-04-01"}))
    page = browser.get("/pages/model").text
    assert "Model evaluation: back-test" in page
    assert "has not happened yet" in page and "2024-04-01" in page
