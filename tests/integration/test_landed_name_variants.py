"""The landed path gets name variants too: landing's encodings (linkage/landing/pseudonymise.py
calls `encode_identifiers`) carry `lk_forename__nk`, so the person index compares "Bill" with
"William" as the encoded-file path does."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from factories import rows_for, write_extract
from linkage.landing.land import land_file


def test_landed_rows_carry_the_name_variant_encoding(haven, landing, inbox):
    rows = rows_for("social_care", 6)
    for row, name in zip(rows, ["William", "Bill", "Bill", "Peggy", "Margaret", ""], strict=True):
        row["forename"] = name
    receipt = land_file(landing, write_extract(inbox, "social_care", rows, sender="E08000035"))
    assert receipt.status == "landed", receipt.reason
    table = pq.read_table(haven.settings.layout.rows(receipt.extract_id)).to_pandas()
    table = table.sort_values("row")
    assert "forename" not in table.columns
    nk = table["lk_forename__nk"].tolist()
    assert nk[5] is None  # blank forename: no encoding
    slots = [set(np.frombuffer(v, dtype="<u8")) - {0} for v in nk[:5]]
    assert slots[0] & slots[1]  # William ~ Bill
    assert slots[1] == slots[2]
    assert slots[3] & slots[4]  # Peggy ~ Margaret
    assert not slots[0] & slots[3]
    blob = b"".join(nk[:5])
    assert b"WILLIAM" not in blob and b"BILL" not in blob
