"""The model card that opens each run's report, and the measured counts of whom a run covers.

DCB0129 asks that a clinical system's intended use, population, performance and limits be
written down where its users see them. `model_card(...)` renders, as Markdown lines: intended use
and users, the population (measured `RunCounts`), the training window, features by source
(stratify.catalogue), performance with bootstrap intervals (prospective or back-test, said
which), subgroup figures, known limits (with the measured number of persons with little
history), the model's approval when the run records one, and a history-gain section when the
run's metrics carry one. `counts_lines(counts)` renders the counts in full. Each section is
tolerant of what a run lacks: it says what is missing instead of printing blanks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stratify.catalogue import FEATURES
from stratify.evaluate import Evaluation, FollowUp
from stratify.scoring import ScoreRun

INTENDED_USE = (
    "Ranks persons registered with a GP practice by their probability of one or more emergency "
    "hospital admissions in the 12 months after the reference date, to help a multidisciplinary "
    "team (MDT) choose whom to review for anticipatory care (case finding), and to plan "
    "services for the population (commissioning).")
USERS = ("MDT clinicians reviewing their own practice's list; analysts and commissioners "
         "using tiers and aggregates. Not for: diagnosis, deciding or withholding treatment, "
         "or any decision without a clinician's review of the person's record.")
LIMITS = (
    "Persons with little recorded history (new registrations, few contacts) get probabilities "
    "driven mostly by age and sex: a high need may not show.",
    "Persons without a GP registration in the data are not scored at all.",
    "Records that fail to link to a person (no NHS number, probabilistic match below the "
    "threshold) do not count towards that person's risk.",
    "Admissions to hospitals that send no extract are neither features nor outcomes.",
    "Opted-out persons are left out as the opt-out policy table says; a model trained without "
    "them may describe the rest of the population slightly differently.",
    "Probabilities are calibrated on the training year; they drift as services and coding "
    "change: a model is only as current as its training window.",
)
FIGURE_NAMES = {"auroc": "AUROC", "calibration_slope": "calibration slope",
                "ppv_top5": "PPV in the top 5%"}
HISTORY_GAIN_NAMES = {"auroc_model": "this model (with history features)",
                      "auroc_reference_only": "a model given the reference-date factors only",
                      "auroc_true_observable": "the true observable risk (synthetic truth)"}


@dataclass
class OptoutCount:
    """One opt-out type as a run applied it: persons with it in force, of them persons in the
    run's linked data and persons the run scored anyway, and what it takes from each purpose."""

    optout_type: str
    in_force: int
    in_data: int
    scored: int
    takes: dict[str, str] = field(default_factory=dict)  # purpose -> "every source" / sources


@dataclass
class RunCounts:
    """Measured counts about whom a run covers (pipeline.report_counts fills it)."""

    purpose: str
    in_force_on: str
    linked_persons: int          # distinct persons in the run's extracts (register aside)
    registered: int              # of them, with a GP registration row
    scored: int                  # persons the run scored
    optouts: list[OptoutCount] = field(default_factory=list)
    optout_persons_in_data: int = 0      # distinct persons in data with one covering purpose
    probabilistic_persons: int = 0       # scored persons with a record linked probabilistically
    probabilistic_records: int = 0       # those records
    unlinked_records: int = 0            # records linked to no registered person
    withheld_now: int = 0                # scored persons the run must hold back now

    @property
    def without_registration(self) -> int:
        """Persons in the run's data with no GP registration: never scored."""
        return self.linked_persons - self.registered

    @property
    def registered_not_scored(self) -> int:
        """Registered persons not scored: died before the date, registered after it, or left
        out by an opt-out covering their registration."""
        return max(self.registered - self.scored, 0)


def _n(value: float | int) -> str:
    return f"{int(value):,}"


def _fig(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measurable"
    return f"{float(value):.{digits}f}"


def counts_lines(counts: RunCounts) -> list[str]:
    """The counts of whom the run covers and leaves out, each as measured."""
    lines = ["## Who is in this run (measured)", "",
             f"- Persons in the run's linked extracts: {_n(counts.linked_persons)}",
             f"- Without a GP registration in the data (never scored): "
             f"{_n(counts.without_registration)}",
             f"- Registered but not scored (died before the date, registered after it, or "
             f"registration left out by an opt-out): {_n(counts.registered_not_scored)}",
             f"- Scored: {_n(counts.scored)}",
             f"- Scored persons with at least one record joined to them only by probabilistic "
             f"linkage (no NHS number on it): {_n(counts.probabilistic_persons)} "
             f"({_n(counts.probabilistic_records)} records)",
             f"- Records linked to no registered person: {_n(counts.unlinked_records)}",
             f"- Scored persons held back now (an opt-out in force today the run did not "
             f"apply): {_n(counts.withheld_now)}", ""]
    lines += [f"### Opt-outs applied (in force on {counts.in_force_on}, purpose "
              f"`{counts.purpose}`)", ""]
    if not counts.optouts:
        lines += ["No opt-out was in force for the register extracts this run applied.", ""]
        return lines
    purposes = sorted({p for o in counts.optouts for p in o.takes})
    head = ["opt-out type", "persons in force", "in this run's data", "scored anyway",
            *[f"takes from {p}" for p in purposes]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in counts.optouts:
        cells = [o.optout_type, _n(o.in_force), _n(o.in_data), _n(o.scored),
                 *[o.takes.get(p, "nothing") for p in purposes]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Persons in the data with an opt-out covering `{counts.purpose}`: "
                  f"{_n(counts.optout_persons_in_data)} (a person may hold more than one type). "
                  "\"Scored anyway\" counts persons the type takes only some sources from: "
                  "they were scored without those sources' records.", ""]
    return lines


def features_by_source(names: list[str]) -> dict[str, list[str]]:
    """The run's features grouped by the source the catalogue names (unknown: `other`)."""
    known = {f.name: f.source for f in FEATURES}
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(known.get(name, "other"), []).append(name)
    return out


def _performance(ev: Evaluation | None) -> list[str]:
    if ev is None:
        return ["Performance: no evaluation in this report (neither the year after the run's "
                "date nor a back-test year was evaluated).", ""]
    label = ("prospective: the year after this run's date" if ev.kind == "prospective" else
             f"back-test: the run's procedure one year earlier, judged on the year from "
             f"{(ev.judged_at or ev.at).isoformat()}")
    chosen = ev.overall.set_index("model").loc["chosen"] if "chosen" in set(
        ev.overall["model"]) else None
    lines = [f"Performance ({label}; {_n(chosen['events']) if chosen is not None else '?'} "
             f"events among {_n(chosen['persons']) if chosen is not None else '?'} persons), "
             f"chosen model `{ev.chosen}`, 95% bootstrap intervals:", ""]
    spread = ev.bootstrap
    if spread.empty:
        return [*lines, "- no bootstrap resamples were drawn", ""]
    mine = spread[spread["model"] == "chosen"].set_index("figure")
    for figure, words in FIGURE_NAMES.items():
        if figure in mine.index:
            row = mine.loc[figure]
            lines.append(f"- {words}: {_fig(row['estimate'])} "
                         f"({_fig(row['lo'])} to {_fig(row['hi'])})")
    return [*lines, ""]


def _subgroups(ev: Evaluation | None) -> list[str]:
    if ev is None:
        return []
    sub = ev.subgroups[ev.subgroups["model"] == "chosen"]
    rates = ev.error_rates[ev.error_rates["threshold"] == "high"].set_index(
        ["subgroup", "value"])
    lines = ["Subgroups (chosen model; FNR: share of persons admitted whom the high tier "
             "threshold missed):", "",
             "| subgroup | value | persons | events | AUROC (95% CI) | FNR at high |",
             "|---|---|---|---|---|---|"]
    for row in sub.itertuples(False):
        auc = "not measurable" if np.isnan(row.auroc) else \
            f"{row.auroc:.3f} ({row.auroc_lo:.3f}-{row.auroc_hi:.3f})"
        key = (row.subgroup, row.value)
        fnr = rates.loc[key, "fnr"] if key in rates.index else float("nan")
        lines.append(f"| {row.subgroup} | {row.value} | {_n(row.persons)} | {_n(row.events)} "
                     f"| {auc} | {_fig(fnr)} |")
    return [*lines, ""]


def _little_history(run: ScoreRun) -> int:
    """Scored persons seen in no source but their GP registration before the date."""
    if "sources" not in run.scores:
        return 0
    # Counted over the distinct source lists (a few hundred), not split person by person:
    # a list of texts for each of a million persons held 0.4 GB (issue #12).
    lists = run.scores["sources"].fillna("").value_counts()
    return int(sum(count for text, count in lists.items()
                   if not set(str(text).split(";")) - {"", "gp_patients"}))


def approval_lines(approval: dict[str, Any] | None) -> list[str]:
    """The model's approval as recorded with the run (tolerant of missing fields)."""
    if not approval:
        return ["- Approval: none recorded with this run."]
    fields = [("model", "model_id"), ("status", "status"), ("decided by role", "decided_by_role"),
              ("decided at", "decided_at"), ("reason", "reason")]
    parts = [f"{words} {approval[key]}" for words, key in fields if approval.get(key)]
    lines = ["- Approval: " + ("; ".join(parts) if parts else "recorded without details")]
    if approval.get("status") not in (None, "approved"):
        lines.append(f"- This model is NOT approved ({approval['status']}): its scores must "
                     "not be used for care.")
    if approval.get("retrain_flag"):
        lines.append("- Flagged for retraining: its measured performance fell past the drift "
                     "policy's threshold (`haven refresh`).")
    return lines


def history_gain_lines(gain: dict[str, Any] | None) -> list[str]:
    """A small section on what the whole history adds, from the run's `history_gain` figures
    (any of the keys may be missing; unknown numeric keys are listed as they are)."""
    if not isinstance(gain, dict) or not gain:
        return []
    lines = ["## What the history adds", "",
             "As training recorded it (AUROC on the same persons and year):", ""]
    shown = False
    for key, words in HISTORY_GAIN_NAMES.items():
        if isinstance(gain.get(key), int | float):
            lines.append(f"- {words}: {_fig(gain[key])}")
            shown = True
    for key, value in gain.items():
        if key not in HISTORY_GAIN_NAMES and isinstance(value, int | float) \
                and not isinstance(value, bool):
            shown_value = f"{value:,}" if isinstance(value, int) else _fig(value)
            lines.append(f"- {key.replace('_', ' ')}: {shown_value}")
            shown = True
    if "gain" not in gain and isinstance(gain.get("auroc_model"), int | float) and \
            isinstance(gain.get("auroc_reference_only"), int | float):
        lines.append(f"- gain over the reference-date-only model: "
                     f"{gain['auroc_model'] - gain['auroc_reference_only']:+.3f}")
    if not shown:
        return []
    return [*lines, ""]


def model_card(run: ScoreRun, ev: Evaluation | None, status: FollowUp | None = None,
               counts: RunCounts | None = None,
               approval: dict[str, Any] | None = None) -> list[str]:
    """The model card as Markdown lines (see the module docstring)."""
    window = run.meta.get("train_window") or []
    lines = ["## Model card", "",
             f"- Intended use: {INTENDED_USE}", f"- Users: {USERS}",
             f"- Model: `{run.model}` ({run.model_version}), chosen by "
             f"{run.metrics.get('chosen_by', 'validation')}; seed {run.seed}",
             *approval_lines(approval)]
    if counts is not None:
        lines.append(f"- Population: persons alive and registered with a GP practice on "
                     f"{run.at.isoformat()}: {_n(counts.scored)} scored of "
                     f"{_n(counts.linked_persons)} persons in the linked data "
                     f"({_n(counts.without_registration)} without a registration; "
                     f"{_n(counts.optout_persons_in_data)} with an opt-out covering "
                     f"`{counts.purpose}`)")
    else:
        lines.append(f"- Population: persons alive and registered with a GP practice on "
                     f"{run.at.isoformat()}: {_n(len(run.scores))} scored")
    lines.append(f"- Training window: features on {run.meta.get('train_at', 'not recorded')}, "
                 f"emergency admissions in {' to '.join(window) if window else 'not recorded'}")
    if status is not None:
        lines.append(f"- Outcome year after this run's date ({status.at.isoformat()} to "
                     f"{status.window_end.isoformat()}): "
                     + ("complete in the data" if status.complete else
                        f"NOT complete: hospital records reach "
                        f"{status.records_reach.isoformat() if status.records_reach else 'no date'}"
                        f" ({status.months_observed} of {status.months} months)"))
    lines += ["", "Features by source:", ""]
    for source, names in features_by_source(list(run.meta.get("features") or [])).items():
        lines.append(f"- {source}: {len(names)} ({', '.join(names[:6])}"
                     f"{', ...' if len(names) > 6 else ''})")
    if not run.meta.get("features"):
        lines.append("- not recorded with this run")
    lines += ["", *_performance(ev), *_subgroups(ev), "Known limits:", ""]
    lines += [f"- {limit}" for limit in LIMITS]
    lines.append(f"- Measured here: {_n(_little_history(run))} scored persons have no record "
                 "but their GP registration before the date (little history).")
    return [*lines, ""]


def bootstrap_lines(ev: Evaluation) -> list[str]:
    """The bootstrap spread per model and of each candidate's difference from the chosen one."""
    if ev.bootstrap.empty:
        return []
    resamples = int(ev.bootstrap["resamples"].iloc[0])
    table = ev.bootstrap.pivot_table(index="model", columns="figure", values=[
        "estimate", "lo", "hi"], sort=False)
    lines = [f"### Spread over {resamples} bootstrap resamples (95% intervals)", "",
             "Resamples of persons, the same for every model, drawn with the run's seed. "
             "Two models whose difference interval contains 0 are not told apart by these "
             "data.", "",
             "| model | " + " | ".join(FIGURE_NAMES.values()) + " |",
             "|---|" + "---|" * len(FIGURE_NAMES)]
    for model in table.index:
        cells = []
        for figure in FIGURE_NAMES:
            if ("estimate", figure) in table.columns:
                cells.append(f"{_fig(table.loc[model, ('estimate', figure)])} "
                             f"({_fig(table.loc[model, ('lo', figure)])} to "
                             f"{_fig(table.loc[model, ('hi', figure)])})")
            else:
                cells.append("")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append("")
    if not ev.differences.empty:
        lines += [f"Difference from the chosen model (`{ev.chosen}`), candidate minus chosen; "
                  "\"better\" is the share of resamples where the candidate did better (for "
                  "the slope: nearer 1):", "",
                  "| model | figure | difference (95% interval) | better in |", "|---|---|---|---|"]
        for row in ev.differences.itertuples(False):
            lines.append(f"| {row.model} | {FIGURE_NAMES.get(row.figure, row.figure)} | "
                         f"{row.estimate:+.3f} ({row.lo:+.3f} to {row.hi:+.3f}) | "
                         f"{row.share_better:.0%} |")
        lines.append("")
    return lines


def bootstrap_records(ev: Evaluation) -> dict[str, list[dict]]:
    """The bootstrap tables as plain JSON values (for evaluation.json)."""
    def plain(frame: pd.DataFrame) -> list[dict]:
        return [{k: (None if isinstance(v, float) and math.isnan(v) else
                     v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
                for row in frame.to_dict("records")]
    return {"bootstrap": plain(ev.bootstrap), "differences": plain(ev.differences)}
