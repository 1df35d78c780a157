"""linkage.landing.ahead: a pipeline stage on a thread yields in order, passes failures on and
stops the stage before it when stopped early."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from linkage.landing.ahead import ahead


def test_items_come_in_order_from_another_thread():
    seen_on: set[str] = set()

    def source() -> Iterator[int]:
        for i in range(50):
            seen_on.add(threading.current_thread().name)
            yield i

    assert list(ahead(source(), "stage-a")) == list(range(50))
    assert seen_on == {"stage-a"}


def test_a_failure_in_the_stage_is_raised_to_the_consumer_after_what_came_before():
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("batch 3 could not be read")

    got = []
    with pytest.raises(ValueError, match="batch 3"):
        for item in ahead(source(), "stage-b"):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_stops_the_thread_and_closes_the_stage_before_it():
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    stages = ahead(ahead(source(), "stage-read"), "stage-check")
    assert next(stages) == 0
    stages.close()
    assert closed.wait(5)
    names = {t.name for t in threading.enumerate()}
    assert not names & {"stage-read", "stage-check"}


def test_the_thread_makes_one_item_ahead_and_no_more():
    made: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10):
            made.append(i)
            yield i

    stage = ahead(source(), "stage-d")
    assert next(stage) == 0
    time.sleep(0.2)  # while item 0 is worked on, item 1 is made; item 2 waits for 1 to be taken
    assert made == [0, 1]
    assert next(stage) == 1
    time.sleep(0.2)
    assert made == [0, 1, 2]
    stage.close()
