"""Answers that depend only on one loaded run (aggregates), kept for the next caller.

Callers asking for the same answer at once wait for one computation; the oldest answers go
first once 256 are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

LIMIT = 256


class AnswerCache:
    """A small LRU of computed answers, keyed by the question."""

    def __init__(self) -> None:
        self.cache: OrderedDict = OrderedDict()
        self.cache_lock = threading.Lock()
        self.computing: dict[tuple, threading.Lock] = {}

    def get_now(self, key: tuple) -> Any:
        """The answer kept for `key`, or None (never waits for one being computed)."""
        with self.cache_lock:
            found = self.cache.get(key)
            if found is not None:
                self.cache.move_to_end(key)
            return found

    def get(self, key: tuple, compute: Any) -> Any:
        """The answer for `key`, computed once by `compute()` and kept."""
        with self.cache_lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            lock = self.computing.setdefault(key, threading.Lock())
        with lock:
            with self.cache_lock:
                if key in self.cache:
                    return self.cache[key]
            value = compute()
            with self.cache_lock:
                self.cache[key] = value
                self.computing.pop(key, None)
                while len(self.cache) > LIMIT:
                    self.cache.popitem(last=False)
        return value
