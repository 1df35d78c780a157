"""The landed rows' Parquet: the cheap encodings of its near-unique columns, and every reader
Haven uses (Arrow, DuckDB) reads the same values from it."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq

from factories import rows_for, write_extract
from linkage.landing.land import land_file


def test_landed_rows_are_delta_encoded_and_read_alike(haven, landing, inbox):
    rows = rows_for("apc", 60)
    receipt = land_file(landing, write_extract(inbox, "apc", rows))
    assert receipt.status == "landed"
    path = haven.settings.layout.rows(receipt.extract_id)
    meta = pq.ParquetFile(path).metadata
    names = meta.schema.names
    group = meta.row_group(0)
    encodings = {name: set(group.column(names.index(name)).encodings)
                 for name in ("row", "person_id", "record_key", "provider_code")}
    assert "DELTA_BINARY_PACKED" in encodings["row"]
    assert "DELTA_LENGTH_BYTE_ARRAY" in encodings["person_id"]
    assert "DELTA_LENGTH_BYTE_ARRAY" in encodings["record_key"]
    assert "RLE_DICTIONARY" in encodings["provider_code"]
    assert group.column(names.index("row")).statistics is not None  # rows can be looked up
    assert group.column(names.index("person_id")).statistics is None
    table = pq.read_table(path)
    assert table.column("row").to_pylist() == list(range(1, 61))
    with duckdb.connect() as connection:
        got = connection.execute(
            f"SELECT row, person_id, record_key FROM read_parquet('{path}') ORDER BY row"
        ).fetchall()
    assert got == list(zip(table.column("row").to_pylist(), table.column("person_id").to_pylist(),
                           table.column("record_key").to_pylist(), strict=True))
