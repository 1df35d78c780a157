"""Benchmark: what a person's history adds to the model, and that a new key draws no new model.

Usage: `.venv/bin/python bench/model_history.py [--persons 20000] [--seed 1] [--persistent 0.8]
[--keys 3] [--out DIR] [--json FILE]`

On a generated population (synth, with a persistent person-level effect of spread
`--persistent`, the generator's S_U) the extracts are put in landed form with the true person as
link (tests/stratify_fixtures.py: the model must not depend on how linkage got there), then each
person is given a keyed person key under `--keys` fresh random keys (HMAC-SHA256, as a data
directory's own key would), and a full score run is made per key at the generator's score date.
Judged on the year after that date (the generator's truth, never read by the run):

- AUROC of the history-aware model (the run's chosen candidate);
- AUROC of the same learner trained on the reference-date features alone (no activity history),
  and on every feature but the long-history ones (what the model had before them);
- AUROC of the true observable risk (`observable_risk`: the generator's risk from the
  reference-date factors, averaged over the unrecorded person effects) and of the true risk;
- calibration slope of the model;
- the spread of AUROC, slope and per-person probability over the keys (must be zero);
- the run's own `history_gain` (measured in training on the calibration hold-out).

Measured 2026-12-05 (20,000 persons; chosen model boosting in each):

| population | model | reference only | no long history | observable | true risk | slope |
|---|---|---|---|---|---|---|
| seed 1, S_U 0.8 (standard) | 0.6957 | 0.6784 | 0.6976 | 0.6918 | 0.7938 | 1.032 |
| seed 2, S_U 1.2 | 0.7323 | 0.6601 | 0.7311 | 0.6740 | 0.8346 | 0.956 |
| seed 3, S_U 0.8 (standard) | 0.6889 | 0.6676 | 0.6965 | 0.6850 | 0.7847 | 1.002 |
| seed 4, S_U 1.2 | 0.7403 | 0.6609 | 0.7357 | 0.6766 | 0.8434 | 1.051 |

Spread over three fresh keys (seed 1): zero for AUROC, slope and every probability. The
generator's history holds two years before the training date, so the long-history features
reach no further than the 24-month ones there and add nothing measurable (within noise); what
the history adds over the reference date comes from the activity features as a whole.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import synth  # noqa: E402
from stratify.catalogue import LONG_HISTORY, NAMES  # noqa: E402
from stratify.evaluate import calibration_fit  # noqa: E402
from stratify.features import connect, features_from  # noqa: E402
from stratify.scoring import ScoreRun, score  # noqa: E402
from stratify.train import REFERENCE_FEATURES, train  # noqa: E402
from stratify_fixtures import SynthData, load_synth  # noqa: E402


def keyed(data: SynthData, key: bytes) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The sources with each true person replaced by an HMAC person key under `key`, and the
    way back (person key -> true person) for judging against the truth."""
    def pseudonym(person: str) -> str:
        return "P" + hmac.new(key, person.encode(), hashlib.sha256).hexdigest()[:20]

    back = {pseudonym(p): p for p in data.persons.index}
    forward = {p: k for k, p in back.items()}
    sources = {}
    for name, frame in data.sources.items():
        frame = frame.copy()
        if "person_key" in frame.columns:
            frame["person_key"] = frame["person_key"].astype(str).map(forward)
        sources[name] = frame
    return sources, back


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p))


def _learner(run: ScoreRun) -> tuple[str, tuple[str, ...]]:
    chosen = run.model if run.model != "rule" else "logistic"
    return chosen, (chosen,)


def comparison(sources: dict[str, pd.DataFrame], at: dt.date, seed: int, learner: str,
               features: list[str]) -> pd.Series:
    """Probabilities at `at` of `learner` trained (as a run trains) on `features` only."""
    con = connect(sources)
    try:
        bundle = train(con, at, seed, candidates=(learner,), features=features,
                       history_gain_check=False)
        X = features_from(con, at, bundle.lookback_months)
    finally:
        con.close()
    return pd.Series(bundle.probability(X, learner), index=X.index)


def bench(persons: int, seed: int, persistent: float, keys: int, out: Path) -> dict[str, Any]:
    """Generate (or reuse) the population, score it under `keys` keys; the figures."""
    if not (out / "truth" / "persons.parquet").exists():
        synth.generate(persons=persons, seed=seed, out=out, progress=False,
                       persistent=persistent)
    data = load_synth(out)
    meta_u = data.meta.get("model", {}).get("S_U")
    if meta_u is not None and abs(float(meta_u) - persistent) > 1e-12:
        raise SystemExit(f"{out} holds a population with S_U {meta_u}, not {persistent}")
    at = dt.date.fromisoformat(data.meta["score_date"])
    truth = data.persons
    runs = []
    for k in range(keys):
        sources, back = keyed(data, secrets.token_bytes(32))
        started = time.perf_counter()
        run = score(sources, at, seed=0)
        seconds = time.perf_counter() - started
        p = pd.Series(run.scores["probability"].to_numpy(),
                      index=run.scores["person_key"].map(back).to_numpy()).sort_index()
        y = truth["emergency_in_outcome_year"].reindex(p.index).astype(int).to_numpy()
        slope, intercept = calibration_fit(y, p.to_numpy())
        runs.append({"key": k + 1, "model": run.model, "auroc": _auc(y, p.to_numpy()),
                     "slope": slope, "intercept": intercept, "seconds": round(seconds, 1),
                     "p": p, "y": y, "run": run, "sources": sources, "back": back})
    first = runs[0]
    p, y = first["p"], first["y"]
    learner, _ = _learner(first["run"])
    figures: dict[str, Any] = {
        "persons": persons, "seed": seed, "persistent_S_U": persistent,
        "scored": int(len(p)), "events": int(y.sum()), "model": first["model"],
        "auroc_model": first["auroc"],
    }
    for label, names in (("reference_only", REFERENCE_FEATURES),
                         ("without_long_history", [n for n in NAMES if n not in LONG_HISTORY])):
        other = comparison(first["sources"], at, 0, learner, names)
        other.index = other.index.map(first["back"])
        figures[f"auroc_{label}"] = _auc(y, other.reindex(p.index).to_numpy())
    figures["auroc_true_observable"] = _auc(y, truth["observable_risk"].reindex(p.index)
                                            .to_numpy())
    figures["auroc_true_risk"] = _auc(y, truth["true_risk"].reindex(p.index).to_numpy())
    figures["calibration_slope"] = first["slope"]
    figures["calibration_intercept"] = first["intercept"]
    figures["training_history_gain"] = first["run"].metrics["training"].get("history_gain")
    figures["keys"] = [{k: r[k] for k in ("key", "model", "auroc", "slope", "seconds")}
                       for r in runs]
    figures["spread_over_keys"] = {
        "auroc": max(r["auroc"] for r in runs) - min(r["auroc"] for r in runs),
        "slope": max(r["slope"] for r in runs) - min(r["slope"] for r in runs),
        "max_probability_difference": max(
            float((r["p"] - first["p"]).abs().max()) for r in runs),
        "same_persons": all(r["p"].index.equals(first["p"].index) for r in runs),
    }
    return figures


def show(f: dict[str, Any]) -> None:
    """Print the figures as a small table."""
    print(f"population: {f['persons']:,} persons (seed {f['seed']}, persistent effect S_U "
          f"{f['persistent_S_U']}); scored {f['scored']:,}, {f['events']:,} with an emergency "
          f"admission in the year after the score date")
    print(f"{'AUROC, year after the score date':<52} value")
    for label, key in (("history-aware model (" + f["model"] + ")", "auroc_model"),
                       ("same learner, reference-date features only", "auroc_reference_only"),
                       ("same learner, without the long-history features",
                        "auroc_without_long_history"),
                       ("true observable risk (reference-date factors)", "auroc_true_observable"),
                       ("true risk (with the person's own effects)", "auroc_true_risk")):
        print(f"  {label:<50} {f[key]:.4f}")
    print(f"calibration slope {f['calibration_slope']:.3f}, intercept "
          f"{f['calibration_intercept']:.3f}")
    gain = f["training_history_gain"] or {}
    if gain:
        print(f"run's history_gain (training hold-out, {gain['learner']}): model "
              f"{gain['auroc_model']:.4f} vs reference-only {gain['auroc_reference_only']:.4f}")
    for r in f["keys"]:
        print(f"  key {r['key']}: model {r['model']}, AUROC {r['auroc']:.4f}, slope "
              f"{r['slope']:.3f}, {r['seconds']} s")
    s = f["spread_over_keys"]
    print(f"spread over {len(f['keys'])} keys: AUROC {s['auroc']:.2e}, slope {s['slope']:.2e}, "
          f"largest probability difference {s['max_probability_difference']:.2e}, same persons "
          f"{s['same_persons']}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--persistent", type=float, default=synth.population.S_U)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--out", type=Path, help="population folder (made when absent)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "population"
        figures = bench(args.persons, args.seed, args.persistent, args.keys, out)
    show(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
