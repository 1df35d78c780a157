"""Arrow's buffers come from jemalloc in a Haven process (governance/arrow_pool.py), unless
the environment given names another pool."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from governance import arrow_pool


@pytest.fixture(autouse=True)
def _pool_put_back() -> Iterator[None]:
    before = pa.default_memory_pool()
    yield
    pa.set_memory_pool(before)


def test_jemalloc_is_chosen_unless_the_environment_names_another() -> None:
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    assert arrow_pool.choose({}) == "jemalloc"
    assert pa.default_memory_pool().backend_name == "jemalloc"
    assert pa.array(list(range(1000))).buffers()[1] is not None  # allocates from it
    assert arrow_pool.choose({"ARROW_DEFAULT_MEMORY_POOL": "System"}) == "system"
    assert pa.default_memory_pool().backend_name == "system"


def test_a_pool_arrow_does_not_know_leaves_the_one_in_use() -> None:
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    assert arrow_pool.choose({"ARROW_DEFAULT_MEMORY_POOL": "tcmalloc"}) == "mimalloc"
    assert pa.default_memory_pool().backend_name == "mimalloc"


def test_the_command_line_chooses_the_pool_from_the_environment_it_is_given(tmp_path) -> None:
    from cli.main import main

    pa.set_memory_pool(pa.mimalloc_memory_pool())
    assert main(["--help"], {"HAVEN_HOME": str(tmp_path)}) == 0
    assert pa.default_memory_pool().backend_name == "jemalloc"
