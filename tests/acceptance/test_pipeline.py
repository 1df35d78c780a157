"""Acceptance: synthetic extracts -> land -> link -> score -> export and report, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from factories import approve_candidates
from linkage.person_index import read_link_map
from synth import generate


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(2500, 11, out, progress=False)
    return out


def environ(haven) -> dict[str, str]:
    return {"HAVEN_HOME": str(haven.settings.home),
            "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}


def test_land_link_score_export_report(haven, population, tmp_path, capsys):
    env = environ(haven)
    assert main(["land", str(population), "--json"], env) == 0
    receipts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["status"] for r in receipts} == {"landed"}
    assert main(["link"], env) == 0
    link_output = capsys.readouterr().out
    assert "quality" in link_output and "probabilistic" in link_output

    # The rows without an NHS number are linked to their true person (truth never seen by Haven).
    files = pd.DataFrame([{"extract_id": r["extract_id"], "file": r["file"]} for r in receipts])
    links = read_link_map(haven.settings).merge(files, on="extract_id")
    truth = pd.read_parquet(population / "truth" / "rows.parquet")
    rows = links.merge(truth, on=["file", "row"])
    anchor = rows[rows["method"] == "nhs_number"].groupby("person_key")["person"].first()
    others = rows[rows["method"] != "nhs_number"].assign(
        predicted=lambda f: f["person_key"].map(anchor))
    linked = others[others["method"] != "unlinked"]
    assert len(others) > 100
    assert (linked["predicted"] == linked["person"]).mean() >= 0.99
    assert len(linked) / len(others) >= 0.9

    meta = json.loads((population / "truth" / "meta.json").read_text())
    assert main(["score", "--at", meta["score_date"]], env) == 0
    assert "score run" in capsys.readouterr().out
    assert main(["score", "--at", meta["score_date"], "--model", "oracle"], env) == 2
    assert "candidates: " in capsys.readouterr().err
    approve_candidates(haven.engine)  # a model serves once a clinical safety officer approves
    out = tmp_path / "scores.csv"
    assert main(["scores", "export", "--out", str(out)], env) == 0
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["person_key", "probability", "tier", "reasons"]
    assert scores["person_key"].str.fullmatch(r"P[0-9a-f]{20}").all()
    assert scores["probability"].between(0, 1).all()
    assert set(scores["tier"]) <= {"very_high", "high", "moderate", "low"}
    report_dir = tmp_path / "report"
    assert main(["model", "report", "--out", str(report_dir)], env) == 0
    text = (report_dir / "report.md").read_text()
    assert "AUROC" in text or "auroc" in text
    assert list(report_dir.glob("*.png"))


def test_score_without_an_index_or_with_a_bad_date_says_why(haven, capsys):
    env = environ(haven)
    assert main(["score", "--at", "01/04/2025"], env) == 2
    assert main(["scores", "export", "--out", "x.csv"], env) == 2
