"""`haven model report`: a run or its evaluation as Markdown with PNG plots.

`write_report(run_or_evaluation, out_dir)` writes `report.md` and plots (matplotlib, Agg
backend, no display needed), and an evaluation's figures as `evaluation.json`. A run alone
gives its tiers, thresholds, model choice and the most common reasons; an evaluation adds
discrimination, calibration and subgroup tables and plots.
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

from stratify.evaluate import Evaluation  # noqa: E402
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
            "chosen": ev.chosen, "notes": list(ev.notes),
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


def _run_section(run: ScoreRun, out: Path) -> list[str]:
    scores = run.scores
    lines = [f"# Risk stratification run `{run.run_id}`", "",
             f"- Reference date: {run.at.isoformat()}; model `{run.model}` "
             f"({run.model_version}), seed {run.seed}",
             f"- Trained on features at {run.meta.get('train_at', '?')} with emergency admissions"
             f" in {' to '.join(run.meta.get('train_window', []))}",
             f"- Persons scored: {len(scores):,} (rows their opt-outs cover were left out "
             "before scoring, by the purpose's policy table)",
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


def _evaluation_section(ev: Evaluation, out: Path) -> list[str]:
    lines = ["## Evaluation on the following year", "", *ev.notes, ""]
    cols = ["model", "auroc", "auroc_lo", "auroc_hi", "auprc", "brier", "calibration_slope",
            "calibration_intercept", "ppv_top0_5", "ppv_top5", "ppv_top20", "sensitivity_top5",
            "events_top5", "events_top1000"]
    lines += ["### Overall", "", f"Chosen model: `{ev.chosen}` (row `chosen`).", "",
              _table(ev.overall[[c for c in cols if c in ev.overall.columns]]), ""]
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


def write_report(run_or_evaluation: ScoreRun | Evaluation, out_dir: Path | str,
                 run: ScoreRun | None = None) -> Path:
    """Write `report.md` and its PNG plots into `out_dir`; returns the Markdown path.

    Pass a `ScoreRun`, or an `Evaluation` (with its run as `run` for the run section).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if isinstance(run_or_evaluation, ScoreRun):
        lines += _run_section(run_or_evaluation, out)
    else:
        if run is not None:
            lines += _run_section(run, out)
        else:
            lines += [f"# Evaluation of run `{run_or_evaluation.run_id}`", ""]
        lines += _evaluation_section(run_or_evaluation, out)
        (out / EVALUATION_FILE).write_text(json.dumps(evaluation_figures(run_or_evaluation)),
                                           encoding="utf-8")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
