"""Run a generator one item ahead on a thread of its own: a stage of landing's pipeline.

Reading a CSV, checking a batch and writing Parquet release the GIL for most of their work,
so each runs on its own thread while the landing thread pseudonymises. A stage holds at most two
items (the one being made, and the one its consumer works on), so memory stays bounded by a
batch or two per stage.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def ahead(items: Iterator[T], name: str) -> Iterator[T]:
    """Iterate `items` one step ahead on a thread named `name` (work that releases the GIL).

    The thread makes the next item while the consumer works on the last one, and waits for
    that one to be taken before making another: two items at most, one on each side.
    Like any generator it starts (and starts its thread) when the first item is asked for.
    """
    slot: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue()
    turn = threading.Semaphore(1)  # held while an item is made or waits to be taken
    stop = threading.Event()
    done = object()

    def my_turn() -> bool:
        while not stop.is_set():
            if turn.acquire(timeout=0.05):
                return True
        return False

    def run() -> None:
        try:
            iterator = iter(items)
            while my_turn():
                item = next(iterator, done)
                slot.put((item, None))
                if item is done:
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            slot.put((None, exc))
        finally:  # a stage stopped early stops the stage before it now, not when collected
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = slot.get()
            turn.release()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
