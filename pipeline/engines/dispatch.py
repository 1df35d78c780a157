"""Which engine scores the persons: the one `Settings.engine` names.

`persons_scorer(settings)` is what `pipeline.score` will call in place of
`stratify.scoring.score` (the one-line change is left to that module's owner; docs/scale.md):
the embedded engine's function itself, or one with the same arguments that runs prediction,
tiers and reasons on Spark (`spark_score.score_on_spark`) in a session made for the call from
the settings and stopped after it, or in the session the caller passes (and keeps).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from governance.settings import Settings
from pipeline.engines.spark_score import score_on_spark
from pipeline.engines.spark_session import session
from stratify.features import Sources
from stratify.scoring import ScoreRun
from stratify.scoring import score as score_embedded

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Scorer = Callable[..., ScoreRun]


def persons_scorer(settings: Settings, spark: SparkSession | None = None) -> Scorer:
    """`stratify.scoring.score` for the embedded engine; its Spark counterpart for `spark`."""
    if settings.engine != "spark":
        return score_embedded

    def on_spark(sources: Sources, at: dt.date, **options: Any) -> ScoreRun:
        if spark is not None:
            return score_on_spark(spark, sources, at, **options)
        with session(settings, "haven-score") as made:
            return score_on_spark(made, sources, at, **options)

    return on_spark
