"""The refresh (drift) report as Markdown: what `haven refresh` measured, and every warning.

Counts and shares only: no person key, no identifier. Read with `pipeline.refresh`, which
writes the same report as JSON beside it.
"""

from __future__ import annotations

import math
from typing import Any

TOP_FEATURES = 12


def _n(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}%"


def _warnings(report: dict[str, Any]) -> list[str]:
    found = report["warnings"]
    if not found:
        return ["No figure is past its threshold (`policies/drift.json`)."]
    lines = ["| check | subject | value | threshold | |", "|---|---|---|---|---|"]
    lines += [f"| {w['check']} | {w['subject']} | {_n(w['value'], 4)} | {w['threshold']} | "
              f"{'**retrain**' if w['retrain'] else ''} |" for w in found]
    return lines


def _features(figures: dict[str, Any], limit: float) -> list[str]:
    rows = figures.get("feature_psi")
    if rows is None:
        return ["No previous run to compare with."]
    lines = [f"PSI of each of the model's {len(rows)} features between the two dates "
             f"(largest {min(TOP_FEATURES, len(rows))} shown; warning above {limit}):", "",
             "| feature | PSI | mean before | mean after |", "|---|---|---|---|"]
    lines += [f"| {r['feature']} | {_n(r['psi'], 4)} | {_n(r['mean_before'])} | "
              f"{_n(r['mean_after'])} |" for r in rows[:TOP_FEATURES]]
    return lines


def _sources(figures: dict[str, Any]) -> list[str]:
    shares = figures.get("source_shares")
    if shares is None:
        return ["No previous run to compare with."]
    lines = ["| source | persons before | persons after | change (points) |",
             "|---|---|---|---|"]
    lines += [f"| {s} | {_pct(v['before'])} | {_pct(v['after'])} | "
              f"{v['change_points']:+.2f} |" for s, v in shares.items()]
    return lines


def _scores(figures: dict[str, Any]) -> list[str]:
    dist, churn = figures.get("score_distribution"), figures.get("tier_churn")
    if dist is None or churn is None:
        return ["No previous run to compare with."]
    b, a = dist["before"], dist["after"]
    lines = ["| | before | after |", "|---|---|---|",
             f"| persons | {_n(b['persons'])} | {_n(a['persons'])} |",
             f"| mean probability | {_n(b['mean'], 4)} | {_n(a['mean'], 4)} |",
             f"| median | {_n(b['p50'], 4)} | {_n(a['p50'], 4)} |",
             f"| 90th centile | {_n(b['p90'], 4)} | {_n(a['p90'], 4)} |",
             f"| 99th centile | {_n(b['p99'], 4)} | {_n(a['p99'], 4)} |"]
    lines += [f"| {t} tier | {_pct(b['tier_shares'][t])} | {_pct(a['tier_shares'][t])} |"
              for t in b["tier_shares"]]
    lines += ["", f"PSI of the probability {_n(dist['psi_probability'], 4)}, of the tier "
              f"{_n(dist['psi_tier'], 4)}.", "",
              f"**Tier churn.** Of {churn['in_both']:,} persons in both runs, "
              f"{churn['moved']:,} moved tier ({_pct(churn['moved_share'])}): "
              f"{churn['up']:,} up, {churn['down']:,} down; {churn['new']:,} new, "
              f"{churn['gone']:,} no longer scored (died, moved away or opted out).", ""]
    if churn["moves"]:
        lines += ["| move | persons |", "|---|---|"]
        lines += [f"| {m} | {n:,} |" for m, n in sorted(churn["moves"].items(),
                                                        key=lambda kv: -kv[1])]
    for label, key in (("up", "up_by_reason"), ("down", "down_by_reason")):
        if churn[key]:
            top = ", ".join(f"{g} {n:,}" for g, n in list(churn[key].items())[:5])
            lines += ["", f"Main reason group now of those who moved {label}: {top}."]
    return lines


def _linkage(figures: dict[str, Any]) -> list[str]:
    runs = figures["linkage_runs"]
    lines = [f"Rows in the person index: {_n(runs['before_rows'])} before, "
             f"{_n(runs['after_rows'])} after. Per source, over the whole index after each "
             "link run:", "",
             "| source | match rate before | after | change (points) | probabilistic before "
             "| after | change (points) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s} | {_pct(v['match_rate_before'])} | {_pct(v['match_rate_after'])} | "
              f"{_n(v['match_rate_change_points'], 2)} | {_pct(v['probabilistic_before'])} | "
              f"{_pct(v['probabilistic_after'])} | {_n(v['probabilistic_change_points'], 2)} |"
              for s, v in figures["linkage"].items()]
    return lines


def _performance(figures: dict[str, Any]) -> list[str]:
    done = figures["performance"]
    if done["status"] != "measured":
        return [f"Awaiting outcomes: no run of the approved model has a complete outcome year "
                f"in the data held (hospital data to {done['data_end'] or '–'}; the first "
                f"year completes after {done['complete_after'] or '–'})."]
    year = done["year"]
    return [f"On run {done['run_id']}'s outcome year ({year[0]} to {year[1]}): "
            f"{_n(int(done['persons']))} persons, {_n(int(done['events']))} with an emergency "
            f"admission; AUROC {_n(done['auroc'])} (95% CI {_n(done['auroc_lo'])}–"
            f"{_n(done['auroc_hi'])}), calibration slope {_n(done['calibration_slope'])}."]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (see the module docstring)."""
    model, figures, limits = report["model"], report["figures"], report["thresholds"]
    approved = (f"approved by {model['decided_by']} ({model['decided_role']}) at "
                f"{model['decided_at']}: {model['reason']}")
    extracts = report["extracts"]
    parts = [
        f"# Refresh {report['at']}: run {report['run_id']}", "",
        f"Scored {report['persons']:,} persons for {report['purpose']} with model "
        f"{model['model_id']} ({model['algorithm']}), {approved}. Compared with run "
        f"{report['previous_run_id'] or '– (none: first run)'}"
        f"{' of ' + str(report['previous_at']) if report['previous_at'] else ''}. Extracts: "
        f"{extracts['landed']} landed, {extracts['refused']} refused, {extracts['duplicate']} "
        "duplicate.", "",
        f"## Warnings ({len(report['warnings'])})", "", *_warnings(report), "",
        "**The model is flagged for retraining** (performance past its threshold)."
        if report["retrain"] else "The model is not flagged for retraining.", "",
        "## Population and feature drift", "", *_features(figures, limits["feature_psi"]), "",
        "### Share of persons with records in each source", "", *_sources(figures), "",
        "## Score distribution and tier churn", "", *_scores(figures), "",
        "## Linkage quality against the previous link run", "", *_linkage(figures), "",
        "## Performance of the approved model", "", *_performance(figures), ""]
    return "\n".join(parts)
