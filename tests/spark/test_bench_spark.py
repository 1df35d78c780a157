"""bench/spark.py's comparison of the two engines' outputs: it finds a changed person key, a
row moved to another person, a probability off by more than 1e-9 and a changed receipt, and
tolerates only what differs between two homes by design (the extract ids, and the keys of
unlinked rows that hash them). No Spark needed: plain Arrow tables."""

from __future__ import annotations

import pyarrow as pa
import pytest

from bench.spark import Links, Outputs, compare, compare_links, task_rates


def _links(extract_ids: list[str], keys: list[str]) -> pa.Table:
    """Four landed rows of two extracts: rows 0 and 1 one person by pseudonym, row 2 a
    second person, row 3 unlinked with no pseudonym (its key is its own)."""
    return pa.table({
        "extract_id": [extract_ids[0], extract_ids[0], extract_ids[1], extract_ids[1]],
        "source": ["apc", "apc", "op", "op"], "row": [1, 2, 1, 2],
        "person_key": keys,
        "method": ["deterministic", "deterministic", "probabilistic", "unlinked"],
        "person_id": ["ps1", "ps1", None, None], "client_key": [None, None, None, None]})


def _outputs(extract_ids: list[str], keys: list[str], probability: list[float],
             rows_landed: int = 2) -> Outputs:
    digest_of = dict(zip(extract_ids, ["d-apc", "d-op"], strict=True))
    receipts = {d: {"source": d[2:], "sender": "RR8", "status": "landed",
                    "rows_landed": rows_landed, "counts": {"landed": rows_landed}}
                for d in digest_of.values()}
    scores = pa.table({"person_key": ["PA", "PB"], "probability": probability,
                       "tier": ["high", "low"]})
    return Outputs(receipts, Links(_links(extract_ids, keys), digest_of), scores)


def _held(checks: list[tuple[str, bool, str]]) -> dict[str, bool]:
    return {what.split(" (")[0]: held for what, held, _ in checks}


def test_two_homes_that_agree_pass_though_their_extract_ids_and_own_keys_differ() -> None:
    a = _outputs(["e1", "e2"], ["PA", "PA", "PB", "Pown1"], [0.25, 0.5])
    b = _outputs(["x9", "x8"], ["PA", "PA", "PB", "Pown2"], [0.25 + 1e-12, 0.5])
    checks = compare(a, b)
    assert all(held for _, held, _ in checks), checks
    assert "1 unlinked rows keyed by their own" in checks[1][2]


@pytest.mark.parametrize(("keys", "failing"), [
    (["PA", "PA", "PC", "Pown2"], "person key of every landed row"),
    (["PA", "PB", "PB", "Pown2"], "the same rows grouped into the same persons"),
])
def test_a_changed_person_key_or_grouping_is_found(keys: list[str], failing: str) -> None:
    a = _outputs(["e1", "e2"], ["PA", "PA", "PB", "Pown1"], [0.25, 0.5])
    held = _held(compare(a, _outputs(["x9", "x8"], keys, [0.25, 0.5])))
    assert held[failing] is False
    assert held["receipts"] is True


def test_a_probability_past_the_tolerance_and_a_changed_receipt_are_found() -> None:
    a = _outputs(["e1", "e2"], ["PA", "PA", "PB", "Pown1"], [0.25, 0.5])
    b = _outputs(["e1", "e2"], ["PA", "PA", "PB", "Pown1"], [0.25, 0.5 + 1e-6], rows_landed=3)
    held = _held(compare(a, b))
    assert held["probability within 1e-09 per person"] is False
    assert held["receipts"] is False
    assert held["tier per person"] is True


def test_a_link_map_row_without_a_receipt_is_refused_without_naming_it() -> None:
    with pytest.raises(KeyError, match="1 extract id"):
        compare_links(Links(_links(["e1", "e2"], ["PA", "PA", "PB", "P0"]), {"e1": "d"}),
                      Links(_links(["e1", "e2"], ["PA", "PA", "PB", "P0"]), {"e1": "d"}))


def test_task_rates_sum_each_task_before_dividing() -> None:
    rates = task_rates([{"task": 0, "n": 100, "seconds": 1.0},
                        {"task": 0, "n": 300, "seconds": 1.0},
                        {"task": 1, "n": 50, "seconds": 0.5}], "rows")
    assert rates["per_task"]["0"] == {"rows": 400, "seconds": 2.0, "rate": 200.0}
    assert rates["per_task"]["1"]["rate"] == 100.0
    assert rates["tasks"] == 2 and rates["median_rate"] == 100.0  # the lower of two
    assert rates["pooled_rate"] == 450 / 2.5
