"""Every count a model report states is the measured one (#17 part 1): on a tiny hand-made
person index and opt-out register, the counts equal those worked out by hand."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import insert

from governance import optouts
from governance.schema import optouts as register
from linkage import map_store
from linkage.person_index import MAP_SCHEMA
from pipeline.report_counts import run_counts
from pipeline.serving import ServingRun
from stratify.model_card import counts_lines

# extract, source, row, pseudonym, person key, method
INDEX = [
    ("e-gp", "gp_patients", 1, "a", "PA", "nhs_number"),
    ("e-gp", "gp_patients", 2, "b", "PB", "nhs_number"),
    ("e-gp", "gp_patients", 3, "c", "PC", "nhs_number"),   # ndoo: left out
    ("e-gp", "gp_patients", 4, "d", "PD", "nhs_number"),   # type1: left out
    ("e-gp", "gp_patients", 5, "g", "PG", "nhs_number"),   # died before the date
    ("e-apc", "apc", 1, "a", "PA", "nhs_number"),
    ("e-apc", "apc", 2, "b", "PB", "probabilistic"),
    ("e-apc", "apc", 3, "b", "PB", "probabilistic"),
    ("e-apc", "apc", 4, "e", "PE", "nhs_number"),          # no registration
    ("e-apc", "apc", 5, None, "PF", "unlinked"),           # linked to no one
    ("e-apc", "apc", 6, "c", "PC", "probabilistic"),       # not scored: not counted
    ("e-old", "apc", 1, "h", "PH", "nhs_number"),          # an extract the run did not use
    ("e-old", "apc", 2, "a", "PA", "probabilistic"),       # nor this row
    ("e-opt", "optouts", 1, "c", "PC", "nhs_number"),      # the register: never a person
]
# pseudonym, type, effective date, withdrawn, register extract
REGISTER = [
    ("c", "ndoo", "2025-01-01", False, "e-opt"),
    ("z", "ndoo", "2025-01-01", False, "e-opt"),          # in force, not in the data
    ("d", "type1", "2025-02-01", False, "e-opt"),
    ("a", "ndoo", "2026-06-01", False, "e-opt"),          # not in force on the run's day
    ("g", "type1", "2024-01-01", False, "e-opt"),
    ("g", "type1", "2024-06-01", True, "e-opt"),          # withdrawn: not in force
    ("b", "type1", "2025-01-01", False, "e-late"),        # a register the run did not read
]


def _world(haven) -> ServingRun:
    frame = {name: [row[i] for row in INDEX] for i, name in enumerate(
        ["extract_id", "source", "row", "person_id", "person_key", "method"])}
    n = len(INDEX)
    table = pa.table({**frame, "weight": [None] * n, "via_extract": [None] * n,
                      "client_key": [None] * n}, schema=MAP_SCHEMA)
    haven.settings.layout.link_map.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, haven.settings.layout.legacy_link_map)  # one file, as older homes
    map_store.split_legacy(haven.settings)
    with haven.engine.begin() as connection:
        connection.execute(insert(register), [
            {"person_id": p, "optout_type": t, "effective_date": dt.date.fromisoformat(d),
             "withdrawn": w, "sender": "X26", "extract_id": e, "row": i}
            for i, (p, t, d, w, e) in enumerate(REGISTER, start=1)])
    record = {"in_force_on": "2026-01-01", "register": ["e-opt"],
              "policy": optouts.coverage_rows(optouts.coverage(haven.engine))}
    return ServingRun("score-hand-made", dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
                      {"purpose": "commissioning", "optouts": record})


@pytest.mark.parametrize("backend", [""])  # counting, not storage: SQLite is enough
def test_counts_equal_the_hand_counted_ones(haven) -> None:
    serving = _world(haven)
    counts = run_counts(haven.settings, haven.engine, serving, scored_keys={"PA", "PB"},
                        extract_ids={"gp_patients": ["e-gp"], "apc": ["e-apc"],
                                     "optouts": ["e-opt"]}, withheld_now=1)
    assert counts.linked_persons == 7          # PA PB PC PD PG PE PF
    assert counts.registered == 5 and counts.without_registration == 2
    assert counts.scored == 2 and counts.registered_not_scored == 3
    assert (counts.probabilistic_persons, counts.probabilistic_records) == (1, 2)
    assert counts.unlinked_records == 1 and counts.withheld_now == 1
    by_type = {o.optout_type: o for o in counts.optouts}
    assert set(by_type) == {"ndoo", "type1"}
    assert (by_type["ndoo"].in_force, by_type["ndoo"].in_data, by_type["ndoo"].scored) == \
        (2, 1, 0)
    assert (by_type["type1"].in_force, by_type["type1"].in_data) == (1, 1)
    assert by_type["ndoo"].takes["commissioning"] == "every source"
    assert "direct_care" not in by_type["ndoo"].takes
    assert by_type["type1"].takes["commissioning"] == "gp_events; gp_medications; gp_patients"
    assert counts.optout_persons_in_data == 2 and counts.purpose == "commissioning"
    text = "\n".join(counts_lines(counts))
    assert "Persons in the run's linked extracts: 7" in text
    assert "Without a GP registration in the data (never scored): 2" in text
    assert "probabilistic linkage (no NHS number on it): 1 (2 records)" in text
    assert "| ndoo | 2 | 1 | 0 | nothing | every source | every source |" in text
    assert "in force on 2026-01-01, purpose `commissioning`" in text


@pytest.mark.parametrize("backend", [""])
def test_a_purpose_an_opt_out_does_not_cover_counts_no_one_left_out(haven) -> None:
    """Direct care: the national opt-out does not cover it; type 1 does not either."""
    serving = _world(haven)
    serving = ServingRun(serving.run_id, serving.scored_at,
                         {**serving.summary, "purpose": "direct_care"})
    counts = run_counts(haven.settings, haven.engine, serving, {"PA", "PB", "PC", "PD"},
                        {"gp_patients": ["e-gp"], "apc": ["e-apc"]})
    assert counts.optout_persons_in_data == 0
    assert {o.optout_type: o.scored for o in counts.optouts} == {"ndoo": 1, "type1": 1}
