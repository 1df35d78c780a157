"""Keyed linkage encodings: keyed, deterministic, normalised, null-safe and never in clear."""

from __future__ import annotations

import secrets

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from linkage.encodings import (
    BLOOM,
    bloom_filters,
    column,
    encode_identifiers,
    encoded_fields,
    normalise_date,
    normalise_name,
    normalise_postcode,
    subkey,
)

PEOPLE = pd.DataFrame({
    "forename": ["Jonathan", "Émile", "Mary-Ann", None],
    "surname": ["Featherstonehaugh", "O'Brien", "Smithson", ""],
    "date_of_birth": ["1956-04-09", "1987-11-30", "2001-02-03", None],
    "sex": ["1", "2", "F", "9"],
    "postcode": ["LS1 4AB", "sw1a 1aa", "M60 2LA", "  "],
    "address": ["12 Harrowgate Road", "Flat 3, 7 Bramble Close", None, ""],
    "identifier": ["AB123456C", "QQ654321D", None, None],
})
CLEAR = ["Jonathan", "JONATHAN", "Featherstonehaugh", "FEATHERSTONEHAUGH", "OBRIEN", "Smithson",
         "SMITHSON", "1956-04-09", "19560409", "1987-11-30", "LS1 4AB", "LS14AB", "SW1A 1AA",
         "HARROWGATE", "Harrowgate", "BRAMBLE", "AB123456C", "QQ654321D", "MARYANN", "EMILE"]


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


def _cell_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if value is None or value is pd.NA:
        return b""
    return int(value).to_bytes(8, "little", signed=True)


def test_output_is_only_lk_columns_same_index(key: bytes) -> None:
    frame = PEOPLE.set_index(pd.Index([10, 20, 30, 40])).assign(service_type="home_care")
    out = encode_identifiers(frame, key)
    assert list(out.index) == [10, 20, 30, 40]
    assert all(c.startswith("lk_") for c in out.columns)
    assert "lk_service_type" not in out.columns
    assert set(encoded_fields(out)) == set(PEOPLE.columns)
    assert column("surname", "bf") in out.columns


def test_deterministic_under_one_key_and_different_under_another(key: bytes) -> None:
    a = encode_identifiers(PEOPLE, key)
    b = encode_identifiers(PEOPLE.copy(), key)
    pd.testing.assert_frame_equal(a, b)
    c = encode_identifiers(PEOPLE, secrets.token_bytes(32))
    for name in a.columns:
        present = a[name].notna()
        assert present.any()
        assert not (a.loc[present, name] == c.loc[present, name]).any(), name


def test_never_contains_the_clear_values(key: bytes) -> None:
    out = encode_identifiers(PEOPLE, key)
    text = out.to_csv().upper()
    for value in CLEAR:
        assert value.upper() not in text
        assert value.upper() not in " ".join(out.columns).upper()
    blob = b"|".join(_cell_bytes(v) for col in out.columns for v in out[col])
    for value in CLEAR:
        for form in (value, value.upper(), value.lower()):
            assert form.encode() not in blob


def test_nulls_and_blanks_stay_null(key: bytes) -> None:
    out = encode_identifiers(PEOPLE, key)
    last = out.iloc[3]
    assert last.isna().all()  # None, "", "  ", sex "9" (not specified) are all missing
    assert out.iloc[0].notna().all()
    assert out[column("address")].iloc[2:].isna().all()


@pytest.mark.parametrize("variants", [
    ["Smith", " SMITH ", "smith", "S.mith"],
    ["O'Brien", "o brien", "OBRIEN", "O’Brien"],
    ["Émile", "EMILE", "emile"],
])
def test_name_variants_encode_equally(key: bytes, variants: list[str]) -> None:
    out = encode_identifiers(pd.DataFrame({"surname": variants}), key)
    assert out.nunique().max() == 1


def test_postcode_and_date_variants_encode_equally(key: bytes) -> None:
    out = encode_identifiers(pd.DataFrame({
        "postcode": ["LS1 4AB", "ls14ab", " ls1  4ab ", "LS1-4AB"],
        "date_of_birth": ["1956-04-09", "19560409", "09/04/1956", " 1956-04-09 "],
        "sex": ["1", "M", "male", " m "],
    }), key)
    assert out.nunique().max() == 1
    assert normalise_postcode("ls14ab") == "LS1 4AB"
    assert normalise_date("19560409") == "1956-04-09"
    assert normalise_name("Mary-Ann") == "MARYANN"


def test_date_swap_and_single_component_encodings(key: bytes) -> None:
    out = encode_identifiers(pd.DataFrame({
        "date_of_birth": ["1956-04-09", "1956-09-04", "1956-04-10", "1957-04-09", "1956-05-10"],
    }), key)
    exact, swap = out[column("date_of_birth")], out[column("date_of_birth", "swap")]
    ym, md, yd = (out[column("date_of_birth", p)] for p in ("ym", "md", "yd"))
    # day and month swapped: exact differs, the unordered (month, day) encoding agrees
    assert exact[0] != exact[1] and swap[0] == swap[1]
    # one component wrong: exactly one of the component pairs still agrees
    assert ym[0] == ym[2] and md[0] != md[2] and yd[0] != yd[2]
    assert md[0] == md[3] and ym[0] != ym[3] and yd[0] != yd[3]
    # two components wrong: none agrees
    assert ym[0] != ym[4] and md[0] != md[4] and yd[0] != yd[4] and swap[0] != swap[4]


def test_unparseable_date_is_compared_as_text(key: bytes) -> None:
    out = encode_identifiers(pd.DataFrame({"date_of_birth": ["unknown-ish", "UNKNOWN-ISH"]}),
                             key)
    assert out[column("date_of_birth")].nunique() == 1
    assert out[column("date_of_birth", "ym")].isna().all()


def test_bloom_filter_dice_tracks_similarity(key: bytes) -> None:
    spec = BLOOM["name"]
    bits = bloom_filters(["JONATHAN", "JONATHON", "JOHNATHAN", "MARGARET"],
                         subkey(key, "name", "bf"), spec)

    def dice(a: int, b: int) -> float:
        common = np.bitwise_count(bits[a] & bits[b]).sum()
        return 2 * common / (np.bitwise_count(bits[a]).sum() + np.bitwise_count(bits[b]).sum())

    assert dice(0, 1) > 0.6 and dice(0, 2) > 0.6
    assert dice(0, 3) < 0.35
    assert bits.shape == (4, spec.words)


def test_arrow_friendly_and_round_trips(key: bytes) -> None:
    out = encode_identifiers(PEOPLE, key)
    table = pa.Table.from_pandas(out, preserve_index=False)
    for f in table.schema:
        assert pa.types.is_int64(f.type) or pa.types.is_binary(f.type), f
    back = table.replace_schema_metadata(None).to_pandas()  # as if read from landed Parquet
    assert back[column("surname", "bf")].iloc[0] == out[column("surname", "bf")].iloc[0]
    # int64 with nulls becomes float64 in a plain to_pandas(): 53-bit hashes survive exactly
    floats = back[column("surname")]
    assert floats.dtype == np.float64
    assert int(floats.iloc[0]) == int(out[column("surname")].iloc[0])


def test_numbered_repeats_share_their_kind_domain(key: bytes) -> None:
    out = encode_identifiers(pd.DataFrame({"address": ["1 High St"], "address_2": ["1 HIGH ST"]}),
                             key)
    assert out[column("address")][0] == out[column("address_2")][0]


def test_short_key_refused() -> None:
    with pytest.raises(ValueError):
        encode_identifiers(PEOPLE, b"short")
