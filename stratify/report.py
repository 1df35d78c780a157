"""`haven model report`: a run or its evaluation as Markdown with PNG plots.

`write_report(run_or_evaluation, out_dir)` writes `report.md` and plots (matplotlib, Agg
backend, no display needed), and an evaluation's figures as `evaluation.json`. The report opens
with the model card (stratify.model_card) and, when the outcome year after the run's date is not
in the data (`status`), says so plainly before anything else; the evaluation shown is then the
back-test the model was chosen on (stratify.backtest), labelled as such. A run alone gives its
tiers, thresholds, model choice and the most common reasons; an evaluation adds discrimination,
calibration, bootstrap spread and subgroup tables and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from stratify.evaluate import Evaluation, FollowUp  # noqa: E402
from stratify.model_card import (  # noqa: E402
    RunCounts,
    bootstrap_lines,
    bootstrap_records,
    counts_lines,
    history_gain_lines,
    model_card,
)
from stratify.scoring import ScoreRun  # noqa: E402
from stratify.tiers import ORDER  # noqa: E402

EVALUATION_FILE = "evaluation.json"


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON values (NaN as null)."""
    cleaned = frame.astype(object).where(pd.notna(frame), None)
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in cleaned.to_dict("records")]


def evaluation_figures(ev: Evaluation) -> dict:
    """An evaluation's figures as JSON (what the web pages show): every model's overall
    metrics, each model's calibration by decile, and the chosen model's subgroup metrics.
    Person-level values (`ev.frame`) are not included."""
    return {"run_id": ev.run_id, "at": ev.at.isoformat(), "outcome": ev.outcome,
            "kind": ev.kind, "judged_at": (ev.judged_at or ev.at).isoformat(),
            "chosen": ev.chosen, "notes": list(ev.notes), **bootstrap_records(ev),
            "overall": _records(ev.overall),
            "calibration": {name: _records(curve) for name, curve in ev.calibration.items()},
            "subgroups": _records(ev.subgroups[ev.subgroups["model"] == "chosen"])}


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A frame as a Markdown table (numbers rounded)."""
    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            if np.isnan(value):
                return ""
            return f"{value:,.0f}" if float(value).is_integer() else f"{value:.{digits}f}"
        return str(value)
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body])


def _title(run: ScoreRun) -> list[str]:
    return [f"# Risk stratification run `{run.run_id}`", ""]


def _notice(status: FollowUp | None, ev: Evaluation | None) -> list[str]:
    """What the report can and cannot say about the year after the run's date, first."""
    if status is None:
        return []
    if status.complete:
        return [f"The outcome year after this run's date ({status.at.isoformat()} to "
                f"{status.window_end.isoformat()}) is complete in the data: the evaluation "
                "below is prospective.", ""]
    reach = status.records_reach.isoformat() if status.records_reach else "no date at all"
    lines = [f"> **The outcome year after this run's date has not happened yet in these data.** "
             f"The year to judge this run on runs from {status.at.isoformat()} to "
             f"{status.window_end.isoformat()}; hospital records reach {reach} "
             f"({status.months_observed} of {status.months} months). No figure in this "
             "report is an evaluation of this run's scores on that year; it is shown once "
             "the records reach the end of it (run `haven model report` again).", ">"]
    if ev is not None and ev.kind == "backtest":
        lines.append(f"> Shown instead: the back-test the model was chosen on, the run's "
                     f"procedure one year earlier, judged on the year from "
                     f"{(ev.judged_at or ev.at).isoformat()} to {status.at.isoformat()}.")
    else:
        lines.append("> No back-test either: the data do not hold the two earlier years it "
                     "needs.")
    return [*lines, ""]


def _run_section(run: ScoreRun, out: Path) -> list[str]:
    scores = run.scores
    lines = ["## This run", "",
             f"- Reference date: {run.at.isoformat()}; model `{run.model}` "
             f"({run.model_version}), seed {run.seed}",
             f"- Trained on features at {run.meta.get('train_at', '?')} with emergency admissions"
             f" in {' to '.join(run.meta.get('train_window', []))}",
             f"- Persons in this report: {len(scores):,} (rows their opt-outs cover were left "
             "out before scoring, by the purpose's policy table; counts below)",
             "- Extracts used: " + ", ".join(f"{k}: {len(v)}" for k, v in
                                              sorted(run.extract_ids.items())), ""]
    selection = run.metrics.get("selection", {})
    if selection:
        lines += ["## Model choice", "",
                  f"Method: {selection.get('method')} (fit at {selection.get('fit_at', '-')}, "
                  f"judged at {selection.get('validate_at', 'held-out persons')}). AUROC:", ""]
        lines += [f"- `{k}`: {v:.3f}" for k, v in selection.items()
                  if isinstance(v, float)]
        lines.append("")
    counts = scores["tier"].value_counts().reindex(list(reversed(ORDER))).fillna(0)
    tiers = pd.DataFrame({"tier": counts.index, "persons": counts.to_numpy(dtype=float),
                          "lower threshold": [run.thresholds.get(t, 0.0) for t in counts.index]})
    lines += ["## Tiers", "", _table(tiers, 4), ""]
    top = scores[scores["tier"].isin(["very_high", "high"])]
    if len(top) and "reason_group_1" in top.columns:
        common = top["reason_group_1"].value_counts().head(10)
        lines += ["## Most common first reason (high and very high tiers)", "",
                  _table(pd.DataFrame({"reason group": common.index,
                                       "persons": common.to_numpy(dtype=float)})), ""]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(scores["probability"], bins=50, color="#005eb8")
    ax.set_yscale("log")
    ax.set_xlabel("probability of emergency admission in 12 months")
    ax.set_ylabel("persons")
    for tier in ("moderate", "high", "very_high"):
        ax.axvline(run.thresholds[tier], color="#da291c", lw=0.8)
    fig.tight_layout()
    fig.savefig(out / "distribution.png", dpi=110)
    plt.close(fig)
    lines += ["![Distribution of probabilities, tier thresholds in red](distribution.png)", ""]
    if scores["change"].notna().any():
        moved = scores["tier_change"].value_counts().sort_index()
        lines += ["## Change since the previous run", "",
                  _table(pd.DataFrame({"tier steps": moved.index.astype(int),
                                       "persons": moved.to_numpy(dtype=float)})), ""]
    return lines


def _heading(ev: Evaluation) -> list[str]:
    if ev.kind == "backtest":
        judged = (ev.judged_at or ev.at).isoformat()
        return [f"## Back-test evaluation: the year from {judged} to {ev.at.isoformat()} "
                "(not the year after this run's date)", "",
                f"What the model was chosen on: each candidate trained as this run's were, one "
                f"year earlier (features on the date 24 months before this run's, emergency "
                f"admissions in the 12 months after it, calibrated on held-out persons), "
                f"scored everyone registered on {judged} and is judged here on their emergency "
                f"admissions up to {ev.at.isoformat()}. The chosen row is this run's choice, "
                f"`{ev.chosen}`. (The AUROCs under \"Model choice\" judge the same year with "
                "each candidate fitted on every person and not calibrated, so they differ a "
                "little from these.)", ""]
    return ["## Evaluation on the year after the reference date (prospective)", ""]


def _evaluation_section(ev: Evaluation, out: Path) -> list[str]:
    lines = [*_heading(ev), *ev.notes, ""]
    cols = ["model", "auroc", "auroc_lo", "auroc_hi", "auprc", "brier", "calibration_slope",
            "calibration_intercept", "ppv_top0_5", "ppv_top5", "ppv_top20", "sensitivity_top5",
            "events_top5", "events_top1000"]
    lines += ["### Overall", "", f"Chosen model: `{ev.chosen}` (row `chosen`).", "",
              _table(ev.overall[[c for c in cols if c in ev.overall.columns]]), ""]
    lines += bootstrap_lines(ev)
    # ROC and calibration plots
    fig, (roc, cal) = plt.subplots(1, 2, figsize=(10, 4.2))
    y = ev.frame["outcome"].to_numpy()
    for column in [c for c in ev.frame.columns if c.startswith("p_")]:
        p = ev.frame[column].to_numpy()
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            roc.plot(fpr, tpr, lw=1, label=column[2:])
        curve = ev.calibration[column[2:]]
        cal.plot(curve["predicted"], curve["observed"], marker="o", ms=3, lw=1,
                 label=column[2:])
    roc.plot([0, 1], [0, 1], color="grey", lw=0.5)
    roc.set_xlabel("false-positive rate")
    roc.set_ylabel("sensitivity")
    roc.legend(fontsize=8)
    roc.set_title("ROC")
    top = 1.1 * max(max(float(c["predicted"].max()), float(c["observed"].max()))
                    for c in ev.calibration.values())
    cal.plot([0, top], [0, top], color="grey", lw=0.5)
    cal.set_xlabel("mean predicted (decile)")
    cal.set_ylabel("observed rate")
    cal.set_title("Calibration by decile")
    cal.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc_calibration.png", dpi=110)
    plt.close(fig)
    lines += ["![ROC curves and calibration](roc_calibration.png)", ""]
    sub = ev.subgroups[ev.subgroups["model"] == "chosen"]
    keep = ["subgroup", "value", "persons", "events", "auroc", "auroc_lo", "auroc_hi",
            "calibration_slope", "ppv_top5", "sensitivity_top5"]
    lines += ["### By subgroup (chosen model)", "", _table(sub[keep]), ""]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = (sub["subgroup"] + ": " + sub["value"]).to_list()
    ax.errorbar(sub["auroc"], range(len(sub)), xerr=[sub["auroc"] - sub["auroc_lo"],
                                                     sub["auroc_hi"] - sub["auroc"]],
                fmt="o", color="#005eb8", ms=4)
    ax.set_yticks(range(len(sub)), labels, fontsize=7)
    ax.set_xlabel("AUROC (95% CI)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "subgroup_auroc.png", dpi=110)
    plt.close(fig)
    lines += ["![AUROC by subgroup](subgroup_auroc.png)", ""]
    lines += ["### Error rates at the tier thresholds (chosen model)", "",
              "Flagged = probability at or above the tier's lower threshold.", "",
              _table(ev.error_rates[["threshold", "subgroup", "value", "persons", "flagged",
                                     "fpr", "fnr"]]), ""]
    compare = ev.subgroups.pivot_table(index=["subgroup", "value"], columns="model",
                                       values="auroc").reset_index()
    lines += ["### AUROC by subgroup, all models", "", _table(compare), ""]
    return lines


def _history_gain(run: ScoreRun) -> dict | None:
    """The run's `history_gain` figures, in its metrics or its training metrics."""
    found = run.metrics.get("history_gain")
    if found is None and isinstance(run.metrics.get("training"), dict):
        found = run.metrics["training"].get("history_gain")
    return found if isinstance(found, dict) else None


def write_report(run_or_evaluation: ScoreRun | Evaluation | None, out_dir: Path | str,
                 run: ScoreRun | None = None, *, status: FollowUp | None = None,
                 counts: RunCounts | None = None,
                 approval: dict | None = None) -> Path:
    """Write `report.md` and its PNG plots into `out_dir`; returns the Markdown path.

    Pass a `ScoreRun`, or an `Evaluation` (with its run as `run` for the model card and run
    section), or None with `run` when there is no evaluation to show. `status`: whether the
    year after the run's date is in the data (said first when it is not); `counts`: the
    measured counts of whom the run covers; `approval`: the model's approval (default: as the
    run's metadata records it, if at all).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev = run_or_evaluation if isinstance(run_or_evaluation, Evaluation) else None
    run = run_or_evaluation if isinstance(run_or_evaluation, ScoreRun) else run
    lines: list[str] = []
    if run is not None:
        if approval is None:
            found = run.meta.get("approval") or run.metrics.get("approval")
            approval = found if isinstance(found, dict) else None
        lines += [*_title(run), *_notice(status, ev),
                  *model_card(run, ev, status, counts, approval)]
        if counts is not None:
            lines += counts_lines(counts)
        lines += history_gain_lines(_history_gain(run))
        lines += _run_section(run, out)
    elif ev is not None:
        lines += [f"# Evaluation of run `{ev.run_id}`", "", *_notice(status, ev)]
    if ev is not None:
        lines += _evaluation_section(ev, out)
        (out / EVALUATION_FILE).write_text(json.dumps(evaluation_figures(ev)),
                                           encoding="utf-8")
    else:  # an earlier report's figures must not stand in for an evaluation there is not
        (out / EVALUATION_FILE).unlink(missing_ok=True)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
