"""`haven refresh` on consecutive synthetic months (issue #17 part 4): each drift figure is
measured, warnings follow the thresholds in force, a model whose performance falls past its
threshold is flagged for retraining, and refresh never scores with an unapproved model."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from months import month_extracts
from sqlalchemy import select

from api.app import create_app
from api.config import ApiConfig
from cli.main import main
from conftest import key_environment
from governance import model_approvals, policy_tables
from governance.audit import Actor
from governance.schema import audit_log, runs
from governance.settings import Settings
from pipeline.context import Context
from policies import POLICIES_DIR
from stratify import drift
from synth.generator import generate

SCORE_DAY, NEXT_MONTH, A_YEAR_ON = "2025-04-01", "2025-05-01", "2026-04-01"
IG = Actor("ivy.iglead", "ig_lead", "X26", "governance")


@pytest.fixture(scope="module")
def months(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic population cut into deliveries: everything before 2025-04-01, the
    month of April 2025, and the eleven months after (when the first outcome year completes)."""
    root = tmp_path_factory.mktemp("months")
    generate(400, 2, root / "all", progress=False)
    cuts = {"first": (None, SCORE_DAY), "second": (SCORE_DAY, NEXT_MONTH),
            "later": (NEXT_MONTH, A_YEAR_ON)}
    out = {}
    for name, (start, end) in cuts.items():
        out[name] = root / name
        assert month_extracts(root / "all", out[name],
                              start and dt.date.fromisoformat(start),
                              dt.date.fromisoformat(end))
    return out


def _report(home: Context, run_id: str) -> dict:
    return json.loads(home.settings.layout.run(run_id).refresh_json.read_text())


def test_refresh_on_consecutive_months_shows_every_drift_figure(months, tmp_path, capsys):
    env = {"HAVEN_HOME": str(tmp_path / "home"), "HAVEN_DATABASE_URL": "",
           **key_environment()}
    home = Context(Settings.from_environ(env))
    assert main(["land", str(months["first"])], env) == 0
    assert main(["link"], env) == 0
    assert main(["score", "--at", SCORE_DAY], env) == 0
    (candidate,) = model_approvals.list_models(home.engine)
    # Nothing approved: refresh refuses before landing anything.
    capsys.readouterr()
    assert main(["refresh", str(months["second"]), "--at", NEXT_MONTH], env) == 1
    assert "no approved model" in capsys.readouterr().out
    assert main(["users", "add", "cara.cso", "--org", "X26", "--role",
                 "clinical_safety_officer"], env) == 0
    assert main(["users", "add", "ivy.iglead", "--org", "X26", "--role", "ig_lead"], env) == 0
    assert main(["model", "approve", candidate["model_id"], "--reason", "fine",
                 "--as", "ivy.iglead"], env) == 3  # refused (and audited)
    assert main(["model", "approve", candidate["model_id"], "--reason",
                 "back-test reviewed", "--as", "cara.cso"], env) == 0
    first_run = candidate["run_id"]

    capsys.readouterr()
    assert main(["refresh", str(months["second"]), "--at", NEXT_MONTH], env) == 0
    printed = capsys.readouterr().out
    assert "drift warnings" in printed and "refresh report written" in printed
    with home.engine.connect() as connection:
        latest = connection.execute(select(runs.c.run_id, runs.c.summary).where(
            runs.c.kind == "score").order_by(runs.c.at.desc())).first()
    report = _report(home, latest.run_id)
    figures = report["figures"]
    assert report["previous_run_id"] == first_run
    assert report["model"]["model_id"] == candidate["model_id"]
    assert report["model"]["decided_role"] == "clinical_safety_officer"
    assert latest.summary["model_id"] == candidate["model_id"]
    # Each drift figure, measured.
    features = {row["feature"]: row for row in figures["feature_psi"]}
    assert len(features) > 20 and all(row["psi"] >= 0 for row in features.values())
    assert "age" in features and features["age"]["mean_after"] > 0
    assert {"apc", "gp_events"} <= set(figures["source_shares"])
    assert all(0 <= s["after"] <= 1 for s in figures["source_shares"].values())
    scores = figures["score_distribution"]
    assert scores["before"]["persons"] > 300 and scores["psi_probability"] >= 0
    churn = figures["tier_churn"]
    assert churn["in_both"] > 300 and churn["up"] + churn["down"] == churn["moved"]
    assert {"apc", "gp_patients"} <= set(figures["linkage"])
    assert 0 < figures["linkage"]["apc"]["match_rate_after"] <= 1
    assert figures["performance"]["status"] == "awaiting outcomes"
    assert figures["performance"]["complete_after"] == "2026-04-01"
    assert figures["performance"]["data_end"] == "2025-04-30"  # the manifests' period end
    # Warnings are exactly the figures past the thresholds in force.
    assert report["warnings"] == drift.warnings(figures, report["thresholds"])
    assert latest.summary["refresh"]["warnings"] == len(report["warnings"])
    markdown = home.settings.layout.run(latest.run_id).refresh_markdown.read_text()
    for heading in ("## Warnings", "## Population and feature drift", "### Share of persons",
                    "## Score distribution and tier churn", "## Linkage quality",
                    "## Performance of the approved model"):
        assert heading in markdown
    scored = set(pd.read_parquet(home.settings.layout.run(latest.run_id).scores)["person_key"])
    assert not {k for k in re.findall(r"P[0-9a-f]{20}", markdown + json.dumps(report))} \
        & scored  # counts only: no person key in the report

    # A year on, the first run's outcome year is complete: performance is measured, and past
    # a (strict) threshold the model is flagged for retraining.
    strict = json.loads((POLICIES_DIR / "drift.json").read_text())
    policy_tables.set_policy(home.engine, "drift.json",
                             json.dumps({**strict, "min_auroc": 0.999}), IG)
    assert main(["refresh", str(months["later"]), "--at", A_YEAR_ON], env) == 0
    with home.engine.connect() as connection:
        newest = connection.execute(select(runs.c.run_id).where(
            runs.c.kind == "score").order_by(runs.c.at.desc())).scalar()
        flagged = connection.execute(select(audit_log.c.detail).where(
            audit_log.c.action == "model.flag_retrain")).scalar()
        drifted = connection.execute(select(audit_log.c.detail).where(
            audit_log.c.action == "refresh.drift").order_by(audit_log.c.seq.desc())).scalar()
    later = _report(home, newest)
    done = later["figures"]["performance"]
    # The May run's year ends after the data (to 2026-03-31): the April run's is measured.
    assert done["status"] == "measured" and done["run_id"] == first_run
    assert 0.5 < done["auroc"] < 0.999 and done["events"] > 0
    assert done["calibration_slope"] > 0
    assert later["retrain"] and any(w["check"] == "auroc" for w in later["warnings"])
    assert model_approvals.get_model(home.engine, candidate["model_id"])["retrain_flag"]
    assert flagged["performance"]["auroc"] == pytest.approx(done["auroc"])
    assert drifted["retrain"] is True and "auroc:model" in drifted["checks"]

    # The API shows the latest report to the clinical safety officer and the IG lead.
    app = create_app(home.settings, engine=home.engine,
                     config=ApiConfig(refresh_seconds=0, token_cache_seconds=0))
    from api.users import add_user

    token = add_user(home.engine, IG, "cara.api", "X26", ["clinical_safety_officer"],
                     {"clinical_safety_officer"})
    with TestClient(app) as client:
        answer = client.get("/refresh/latest", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json()["run_id"] == newest
    assert answer.json()["retrain"] is True
    home.close()
