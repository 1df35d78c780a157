"""Run a generator one item ahead on a thread of its own: a stage of landing's pipeline.

Reading a CSV, checking a batch and writing Parquet release the GIL for most of their work,
so each runs on its own thread while the landing thread pseudonymises. The hand-over slot holds
one item, so memory stays bounded by a batch or two per stage.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def ahead(items: Iterator[T], name: str) -> Iterator[T]:
    """Iterate `items` one step ahead on a thread named `name` (work that releases the GIL).

    Like any generator it starts (and starts its thread) when the first item is asked for.
    """
    slot: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slot.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            put((None, exc))
        finally:  # a stage stopped early stops the stage before it now, not when collected
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = slot.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
