"""Which engine scores the persons and matches the person index's profiles: the one
`Settings.engine` names.

`persons_scorer(settings)` is what `pipeline.score` will call in place of
`stratify.scoring.score` (the one-line change is left to that module's owner; docs/scale.md):
the embedded engine's function itself, or one with the same arguments that runs prediction,
tiers and reasons on Spark (`spark_score.score_on_spark`) in a session made for the call from
the settings and stopped after it, or in the session the caller passes (and keeps).

`profile_matching(settings)` gives the person index's matcher and quality estimate: the
embedded ones, or the same functions with each bucket of persons matched on Spark
(`spark_link.bucket_mapper`), in a session started only when a register of several buckets is
matched and stopped when the command's block ends. `range_mapper(settings)` does the same for
the analyses' ranges of persons (journeys, costs, segments).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.settings import Settings
from governance.store import scratch_workspace
from linkage.index_matcher import estimate_quality, in_order, match_profiles
from pipeline.engines.spark_link import handover_in, spark_buckets
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


RangeMap = Callable[[Callable[[int], Any], int], list[Any]]  # [task(0), ..., task(n - 1)]


def _on_spark(settings: Settings, stack: ExitStack, app_name: str,
              handed_over: bool = False) -> Callable[[Callable[[int], Any], int], Any]:
    """A `RangeMap` running each of several tasks on Spark (`spark_buckets`: a task a
    partition, results in order), in a session started on its first use and stopped when
    `stack` closes; one task runs here. `handed_over`: the results come back through sealed
    files in a scratch workspace of this stage's (removed when `stack` closes), read one at
    a time (an iterator, not a list)."""
    started: list[SparkSession] = []
    folders: list[Path] = []

    def run(task: Callable[[int], Any], count: int) -> Any:
        if count <= 1:
            return in_order(task, count)
        if not started:
            started.append(stack.enter_context(session(settings, app_name)))
        if handed_over and not folders:
            folders.append(stack.enter_context(scratch_workspace(settings)))
        folder = handover_in(folders[0]) if handed_over else None
        return spark_buckets(started[0], task, count, folder)

    return run


@contextmanager
def profile_matching(settings: Settings) -> Iterator[tuple[Callable[..., Any],
                                                           Callable[..., Any]]]:
    """(matcher, quality estimate) for `person_index.update` and the re-linking of a purge or
    a destruction: `match_profiles` and `estimate_quality` themselves for the embedded engine;
    for `spark`, the same with every bucket's task on Spark (a session started on the first
    match of several buckets, stopped when the block ends), each bucket's results read back
    from the stage's scratch workspace one at a time."""
    if settings.engine != "spark":
        yield match_profiles, estimate_quality
        return
    with ExitStack() as stack:
        on_spark = _on_spark(settings, stack, "haven-link", handed_over=True)
        yield (functools.partial(match_profiles, map_buckets=on_spark),
               functools.partial(estimate_quality, map_buckets=on_spark))


@contextmanager
def range_mapper(settings: Settings) -> Iterator[RangeMap]:
    """How journeys, costs and segments run their ranges of persons' tasks
    (`pipeline.analysis_ranges`): in order in this process, or for `spark` a Spark task each
    (a session started only when there are several ranges, stopped when the block ends)."""
    if settings.engine != "spark":
        yield in_order
        return
    with ExitStack() as stack:
        yield _on_spark(settings, stack, "haven-analyses")
