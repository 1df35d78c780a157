"""Training, scoring, tiers, reasons, runs and evaluation on generated landed frames."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from factories import bench_score
from stratify.evaluate import calibration_fit, delong, evaluate, summary
from stratify.models import Calibrator, RuleBaseline, expit
from stratify.report import write_report
from stratify.scoring import ScoreRun, load_run, save_run, score
from stratify.tiers import assign, thresholds, tier_change

AT = dt.date(2025, 4, 1)


@pytest.fixture(scope="module")
def sources() -> dict[str, pd.DataFrame]:
    return bench_score().make_sources(2500, seed=3)


@pytest.fixture(scope="module")
def run(sources: dict[str, pd.DataFrame]) -> ScoreRun:
    return score(sources, AT, seed=0)


def _before(sources: dict[str, pd.DataFrame], at: dt.date) -> dict[str, pd.DataFrame]:
    """Only the records dated before `at` (what a system would hold on that day)."""
    dates = {"apc": "admission_date", "ae": "arrival_datetime", "op": "appointment_date",
             "gp_events": "event_date", "gp_medications": "issue_date",
             "community": "contact_date", "social_care": "start_date",
             "deaths": "date_of_death"}
    out = {}
    for name, frame in sources.items():
        if name in dates:
            frame = frame[frame[dates[name]] < pd.Timestamp(at)].copy()
            if name == "apc":
                late = frame["discharge_date"] >= pd.Timestamp(at)
                frame.loc[late, "discharge_date"] = pd.NaT
        out[name] = frame
    return out


def test_same_seed_same_scores(sources: dict[str, pd.DataFrame], run: ScoreRun) -> None:
    again = score(sources, AT, seed=0)
    np.testing.assert_array_equal(run.scores["probability"], again.scores["probability"])
    assert run.run_id == again.run_id
    assert (run.scores["reasons"] == again.scores["reasons"]).all()


def test_no_record_on_or_after_the_date_is_used(sources: dict[str, pd.DataFrame],
                                                run: ScoreRun) -> None:
    """Training and scoring see the same data whether or not the future is in the frames."""
    past_only = score(_before(sources, AT), AT, seed=0)
    np.testing.assert_allclose(run.scores["probability"], past_only.scores["probability"])


def test_time_split_and_metadata(run: ScoreRun) -> None:
    assert run.meta["train_at"] == "2024-04-01"
    assert run.meta["train_window"] == ["2024-04-01", "2025-04-01"]
    assert run.metrics["selection"]["method"] == "backtest"
    assert run.model in {"rule", "logistic", "boosting", "blend"}
    assert run.model == max(("rule", "logistic", "boosting", "blend"),
                            key=lambda m: run.metrics["selection"][m])
    assert set(run.extract_ids) >= {"apc", "gp_patients"}
    assert run.extract_ids["apc"] == ["bench-apc"]


def test_tiers_have_the_stated_proportions(run: ScoreRun) -> None:
    share = run.scores["tier"].value_counts(normalize=True)
    assert share["very_high"] == pytest.approx(0.005, abs=0.003)
    assert share["high"] == pytest.approx(0.045, abs=0.01)
    assert share["moderate"] == pytest.approx(0.15, abs=0.02)
    t = run.thresholds
    assert t["very_high"] > t["high"] > t["moderate"]
    p = np.arange(1000) / 1000
    tiers = assign(p, thresholds(p))
    assert (tiers == "very_high").sum() == 5 and (tiers == "low").sum() == 800


def test_every_person_has_three_personal_reasons(run: ScoreRun) -> None:
    scores = run.scores
    parts = scores["reasons"].str.split("; ")
    assert (parts.str.len() == 3).all()
    assert scores["reasons"].nunique() > len(scores) / 10
    top = scores.sort_values("probability").iloc[-1]
    assert "lowers risk" not in top["reasons"]
    admitted = scores[scores["reasons"].str.contains("emergency admission")]
    assert len(admitted) > 0
    high = scores[scores["tier"] == "very_high"]
    assert high["reasons"].str.contains(r"\d", regex=True).all()


def test_change_since_previous_run(sources: dict[str, pd.DataFrame], run: ScoreRun) -> None:
    previous = run.scores[["person_key", "probability", "tier"]].copy()
    previous["probability"] = previous["probability"] * 0.5
    previous["tier"] = "low"
    previous = previous.iloc[10:]
    again = score(sources, AT, seed=0, previous=previous, bundle=run.bundle)
    assert again.scores["change"].iloc[:10].isna().all()
    later = again.scores.iloc[10:]
    np.testing.assert_allclose(later["change"], later["probability"] * 0.5, rtol=1e-6)
    moved = tier_change(pd.Series(["high", "low"]), pd.Series(["low", None]))
    assert moved.iloc[0] == 2 and pd.isna(moved.iloc[1])


def test_save_and_load_round_trip(run: ScoreRun, tmp_path: Path) -> None:
    save_run(run, tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert loaded.run_id == run.run_id and loaded.at == run.at
    assert loaded.thresholds == run.thresholds
    pd.testing.assert_frame_equal(loaded.scores, run.scores, check_dtype=False)
    assert loaded.bundle is not None
    X = run.bundle.models[run.model].features
    assert loaded.bundle.features == run.bundle.features and X


def test_evaluation_and_report(sources: dict[str, pd.DataFrame], run: ScoreRun,
                               tmp_path: Path) -> None:
    ev = evaluate(run, sources)
    figures = summary(ev)
    assert figures["chosen"]["auroc"] > 0.7
    assert 0.6 < figures["chosen"]["calibration_slope"] < 1.5
    assert set(ev.subgroups["subgroup"]) == {"sex", "age_band", "social_care", "community"}
    assert {"fpr", "fnr"} <= set(ev.error_rates.columns)
    path = write_report(ev, tmp_path / "report", run=run)
    text = path.read_text()
    assert "AUROC" in text and (tmp_path / "report" / "roc_calibration.png").exists()
    assert (tmp_path / "report" / "subgroup_auroc.png").stat().st_size > 1000
    figures = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert figures["chosen"] == ev.chosen and {r["model"] for r in figures["overall"]} >= {"chosen"}
    assert figures["calibration"]["chosen"] and "frame" not in figures


def test_a_loaded_run_is_what_pandas_reads_and_shares_its_person_keys(
        run: ScoreRun, tmp_path: Path) -> None:
    """`load_run` makes the person keys without Arrow's de-duplication and gives the
    candidates the scores' own key objects when they list the same persons in the same
    order: the frames must still be exactly `pandas.read_parquet`'s, with or without a
    choice of columns, and a file whose candidates are in another order keeps its own keys."""
    save_run(run, tmp_path / "run")
    files = tmp_path / "run"
    for columns in (None, ["person_key", "probability", "tier", "sources"],
                    ["probability", "tier"]):
        loaded = load_run(files, columns=columns)
        pd.testing.assert_frame_equal(loaded.scores,
                                      pd.read_parquet(files / "scores.parquet", columns=columns))
        pd.testing.assert_frame_equal(loaded.candidates,
                                      pd.read_parquet(files / "candidates.parquet"))
    loaded = load_run(files)
    theirs, ours = loaded.candidates["person_key"], loaded.scores["person_key"]
    assert theirs.to_numpy()[7] is ours.to_numpy()[7]
    candidates = pd.read_parquet(files / "candidates.parquet")
    candidates.iloc[::-1].reset_index(drop=True).to_parquet(files / "candidates.parquet")
    loaded = load_run(files)
    pd.testing.assert_frame_equal(loaded.candidates, pd.read_parquet(files / "candidates.parquet"))
    assert list(loaded.candidates["person_key"]) == list(candidates["person_key"])[::-1]


def test_evaluation_does_not_depend_on_the_order_of_the_run_s_rows(
        sources: dict[str, pd.DataFrame], run: ScoreRun) -> None:
    """A saved run lists scores and candidates in key order, and the evaluation then uses the
    candidates' columns as they are; shuffled (and one person's sources missing), it sorts and
    reindexes and must judge exactly as before: every figure, and each person's values."""
    from dataclasses import replace

    ordered = replace(run, scores=run.scores.sort_values("person_key", ignore_index=True),
                      candidates=run.candidates.sort_values("person_key", ignore_index=True))
    ordered.scores.loc[3, "sources"] = None
    shuffled = replace(ordered, scores=ordered.scores.sample(frac=1, random_state=1),
                       candidates=ordered.candidates.sample(frac=1, random_state=2))
    want, got = evaluate(ordered, sources, resamples=20), evaluate(shuffled, sources, resamples=20)
    for name in ("overall", "subgroups", "error_rates", "bootstrap", "frame"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name), check_exact=True)
    community = want.subgroups[(want.subgroups["subgroup"] == "community")
                               & (want.subgroups["model"] == "chosen")]
    has = ordered.scores["sources"].fillna("").str.contains("community")
    assert 0 < has.sum() < len(has)
    assert dict(zip(community["value"], community["persons"], strict=True)) == {
        "with community data": has.sum(), "without community data": (~has).sum()}


def test_delong_and_calibration_helpers() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.6, 5000)
    y = rng.random(5000) < p
    auc, lo, hi = delong(y, p)
    assert auc == pytest.approx(roc_auc_score(y, p))
    assert lo < auc < hi and hi - lo < 0.05
    slope, intercept = calibration_fit(y, p)
    assert slope == pytest.approx(1.0, abs=0.15) and abs(intercept) < 0.15
    over = expit(2 * np.log(p / (1 - p)))
    assert calibration_fit(y, over)[0] == pytest.approx(0.5, abs=0.1)
    cal = Calibrator("platt").fit(np.log(over / (1 - over)), y)
    assert cal.slope == pytest.approx(0.5, abs=0.1)


def test_rule_points() -> None:
    X = pd.DataFrame({"age": [70, 30], "ae_attendances_6m": [2, 0], "ltc_count": [3, 0],
                      "distinct_medicines_6m": [6, 1], "ltc_dementia": [1, 0],
                      "ltc_cognitive_impairment": [0, 0]})
    assert RuleBaseline.points(X).sum(axis=1).tolist() == [5, 0]
