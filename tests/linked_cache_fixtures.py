"""Test helper: whether the copies of linked rows asked for in a block came from the linked
cache (pipeline/linked_cache.take spied on), for the cache's integration and attack tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pipeline.linked_cache as cache_module


@contextmanager
def takes_watched() -> Iterator[list[bool]]:
    """A list that gets, for each copy asked for in the block, whether it was taken from the
    cache; `take` is as it was after the block."""
    taken: list[bool] = []
    real = cache_module.take

    def spy(*args: Any) -> Any:
        found = real(*args)
        taken.append(found is not None)
        return found

    cache_module.take = spy  # type: ignore[assignment]
    try:
        yield taken
    finally:
        cache_module.take = real  # type: ignore[assignment]
