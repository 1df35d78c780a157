"""`pseudonyms_behind_bare_rows`: what the opt-out filter needs of the link map (issue #12:
read streaming, not the whole map), equal to the whole-map computation it replaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from governance.settings import Settings
from linkage import map_store
from linkage.person_index import MAP_SCHEMA, pseudonyms_behind_bare_rows


def _write_map(settings: Settings, frame: pd.DataFrame) -> None:
    """A map written as one file (as older homes hold it), split into a generation."""
    shutil.rmtree(settings.layout.index_dir, ignore_errors=True)
    settings.layout.index_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=MAP_SCHEMA, preserve_index=False),
                   settings.layout.legacy_link_map)
    assert map_store.split_legacy(settings) == len(frame)


def _map(rows: list[tuple[str, str | None, str]]) -> pd.DataFrame:
    frame = MAP_SCHEMA.empty_table().to_pandas()
    records = [{"extract_id": "e1", "source": "apc", "row": i, "person_key": key,
                "person_id": pid, "method": method,
                "weight": 1.0, "via_extract": None, "client_key": None}
               for i, (key, pid, method) in enumerate(rows)]
    return pd.concat([frame, pd.DataFrame(records)], ignore_index=True)


def test_pairs_of_persons_with_bare_rows_only(tmp_path: Path):
    settings = Settings(home=tmp_path)
    assert pseudonyms_behind_bare_rows(settings).empty  # no index yet
    # A row linked without an NHS number of its own carries its person's pseudonym in the
    # map (probabilistic, client) or none (unlinked): what marks it is the method.
    n, prob = "nhs_number", "probabilistic"
    rows = [("Pa", "id1", n), ("Pa", "id1", n), ("Pa", "id2", n), ("Pa", "id1", prob),
            ("Pb", "id3", n), ("Pb", "id3", n),                       # only its own numbers
            ("Pc", None, "unlinked"), ("Pd", "id4", "client"), ("Pd", "id4", n),
            ("Pe", "id5", n), ("Pe", "id6", prob)] * 3
    frame = _map(rows)
    _write_map(settings, frame)
    got = pseudonyms_behind_bare_rows(settings, batch_rows=4)  # pairs span batches
    whole = frame[["person_key", "person_id"]].dropna().drop_duplicates()
    bare_keys = set(frame.loc[frame["method"] != n, "person_key"])
    want = whole[whole["person_key"].isin(bare_keys)]
    order = ["person_key", "person_id"]
    assert sorted(map(tuple, got[order].to_numpy())) == sorted(map(tuple, want[order].to_numpy()))
    assert sorted(map(tuple, got[order].to_numpy())) == [("Pa", "id1"), ("Pa", "id2"),
                                                         ("Pd", "id4"), ("Pe", "id5"),
                                                         ("Pe", "id6")]
    _write_map(settings, _map([("Pb", "id3", n)]))
    assert pseudonyms_behind_bare_rows(settings).empty  # nobody bare: nothing read back


def test_pairs_come_back_in_one_order_whatever_the_map_order(tmp_path: Path):
    """Two reads of the same persons give equal frames, not merely equal sets: the pairs are
    sorted, so callers (and the generation-swap attack test) may compare frames. Arrow's
    threaded grouping returned them in an order that varied from run to run."""
    settings = Settings(home=tmp_path)
    rows = [(f"P{i:03d}", f"id{i:03d}", "probabilistic" if i % 2 else "nhs_number")
            for i in range(200)]
    _write_map(settings, _map(rows))
    forward = pseudonyms_behind_bare_rows(settings, batch_rows=7)
    _write_map(settings, _map(rows[::-1]))
    backward = pseudonyms_behind_bare_rows(settings, batch_rows=7)
    pd.testing.assert_frame_equal(forward, backward)
    assert list(forward["person_key"]) == sorted(forward["person_key"])
