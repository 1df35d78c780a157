"""Risk stratification: risk of emergency admission in the next 12 months, tiered and explained.

Public API (what the CLI and API use; everything else may change):
- `build_features(sources, at)`: person-level features at a reference date (`FEATURES.md`).
- `build_outcomes(sources, persons, at)`: emergency admission (or death) in the 12 months after.
- `score(sources, at, seed=0, previous=None)` -> `ScoreRun`; `save_run`, `load_run`.
- `evaluate(run, sources)` -> `Evaluation`; `write_report(run_or_evaluation, out_dir)`.
"""

from stratify.evaluate import Evaluation, evaluate
from stratify.features import build_features
from stratify.outcomes import build_outcomes
from stratify.report import write_report
from stratify.scoring import ScoreRun, load_run, save_run, score

__all__ = ["Evaluation", "ScoreRun", "build_features", "build_outcomes", "evaluate",
           "load_run", "save_run", "score", "write_report"]
