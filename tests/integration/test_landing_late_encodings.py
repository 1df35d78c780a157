"""A file whose first batches carry no row needing linkage encodings and a later batch does
(one row without an NHS number near the end) lands whole: every batch's encoding columns have
the same types, so the later batch is written beside the earlier ones (found by the Spark
helper: "Unsupported cast from binary to null", the file refused)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import key_environment
from factories import rows_for, write_extract
from governance.settings import Settings
from linkage.landing.land import LandingContext, land_file
from pipeline.context import Context as Haven

pytestmark = pytest.mark.parametrize("backend", [""])


def test_encodings_first_needed_in_a_later_batch(tmp_path, backend):
    rows = rows_for("apc", 100)
    rows[80]["nhs_number"] = ""  # the only row to be encoded, in the fourth batch of 25
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=25)
    path = write_extract(tmp_path / "inbox", "apc", rows, name="apc.parquet",
                         raw=sink.getvalue().to_pybytes())
    settings = Settings(home=tmp_path / "home", key_env=key_environment(), batch_rows=25)
    haven = Haven(settings)
    try:
        receipt = land_file(LandingContext(settings, haven.engine, haven.keys), path)
        assert receipt.status == "landed", receipt.reason
        landed = pq.read_table(settings.layout.rows(receipt.extract_id))
    finally:
        haven.close()
    assert landed.num_rows == 100
    bloom = [n for n in landed.column_names if n.endswith("__bf")]
    assert bloom and all(pa.types.is_binary(landed.schema.field(n).type) for n in bloom)
    encoded = landed.filter(pa.compute.is_valid(landed.column(bloom[0])))
    assert 81 in encoded.column("row").to_pylist()  # the row without a number (and a sample)
