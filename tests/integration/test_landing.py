"""Landing: contracts, per-row reasons, whole-file refusals, duplicates and receipts."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from factories import invalid_nhs, rows_for, write_extract, write_manifest
from governance import store
from governance.schema import audit_log, extracts, rejected_rows, vault
from linkage.landing.contracts import CONTRACTS
from linkage.landing.land import land_file, land_path

SOURCES = sorted(CONTRACTS)


def landed_table(haven, receipt):
    return pq.read_table(haven.settings.layout.rows(receipt.extract_id))


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_lands_pseudonymised(source, haven, landing, inbox):
    rows = rows_for(source, 30)
    path = write_extract(inbox, source, rows)
    receipt = land_file(landing, path)
    assert receipt.status == "landed", receipt.reason
    assert receipt.counts["landed"] == 30 and receipt.counts["rejected"] == 0
    table = landed_table(haven, receipt)
    assert table.num_rows == 30
    assert table.column("row").to_pylist() == list(range(1, 31))
    assert "nhs_number" not in table.column_names and "date_of_birth" not in table.column_names
    assert all(len(p) == 64 for p in table.column("person_id").to_pylist())
    text = table.to_pandas().to_csv()
    assert not any(r["nhs_number"] in text for r in rows)
    with haven.engine.connect() as connection:
        stored = connection.execute(select(extracts).where(
            extracts.c.extract_id == receipt.extract_id)).one()
        assert stored.status == "landed" and stored.retention_date is not None
        events = connection.execute(select(audit_log.c.action, audit_log.c.resource)).all()
    assert ("extract.land", f"extract/{receipt.extract_id}") in events


def test_rejected_rows_name_row_and_field_never_the_value(haven, landing, inbox):
    rows = rows_for("apc", 40)
    rows[2]["admission_date"] = "2024-13-40"
    rows[5]["admission_method"] = "99"
    rows[7]["sex"] = "M"
    rows[9]["date_of_birth"] = ""
    rows[11]["primary_diagnosis"] = "not a code"
    rows[13]["spell_id"] = rows[12]["spell_id"]
    rows[15]["gp_practice_code"] = "X" * 5000
    rows[17]["secondary_diagnoses"] = "E11;;I10"
    rows[19]["nhs_number"] = invalid_nhs(rows[19]["nhs_number"])
    rows[21]["nhs_number"] = ""
    path = write_extract(inbox, "apc", rows)
    receipt = land_file(landing, path)
    assert receipt.status == "landed"
    by_row = {r["row"]: r["reason"] for r in receipt.rejected_rows}
    assert by_row == {
        3: "admission_date: not a date (YYYY-MM-DD)",
        6: "admission_method: not one of the allowed codes",
        8: "sex: not one of the allowed codes",
        10: "date_of_birth: required but blank",
        12: "primary_diagnosis: not a valid ICD-10 code",
        14: "spell_id: duplicate of an earlier row",
        16: "gp_practice_code: longer than 64 characters",
        18: "secondary_diagnoses: not up to 20 ICD-10 codes separated by ';'",
    }
    assert receipt.counts["landed"] == 32
    assert receipt.counts["nhs_invalid"] == 1 and receipt.counts["nhs_missing"] == 1
    table = landed_table(haven, receipt).to_pandas().set_index("row")
    assert table.loc[20, "nhs_status"] == "invalid" and table.loc[20, "person_id"] is None
    assert table.loc[22, "nhs_status"] == "missing"
    with haven.engine.connect() as connection:
        stored = connection.execute(select(rejected_rows.c.row, rejected_rows.c.reason).where(
            rejected_rows.c.extract_id == receipt.extract_id)).all()
    assert dict(stored) == by_row
    assert "X" * 10 not in json.dumps(receipt.to_json())


def test_required_nhs_number_rejects_invalid_and_blank(landing, inbox):
    rows = rows_for("gp_events", 10)
    rows[0]["nhs_number"] = invalid_nhs(rows[0]["nhs_number"])
    rows[1]["nhs_number"] = ""
    rows[2]["nhs_number"] = "999 " + rows[2]["nhs_number"][3:6] + "-" + rows[2]["nhs_number"][6:]
    receipt = land_file(landing, write_extract(inbox, "gp_events", rows))
    assert {r["row"]: r["reason"] for r in receipt.rejected_rows} == {
        1: "nhs_number: fails the modulus-11 check", 2: "nhs_number: required but blank"}
    assert receipt.counts["landed"] == 8


def test_social_care_without_consent_is_dropped_and_counted(haven, landing, inbox):
    rows = rows_for("social_care", 20)
    for i in (1, 4, 9):
        rows[i]["consent"] = "N"
    receipt = land_file(landing, write_extract(inbox, "social_care", rows, sender="E08000035"))
    assert receipt.counts["dropped_no_consent"] == 3 and receipt.counts["landed"] == 17
    table = landed_table(haven, receipt)
    assert sorted(set(range(1, 21)) - set(table.column("row").to_pylist())) == [2, 5, 10]
    assert "consent" not in table.column_names and "forename" not in table.column_names
    assert any(name.startswith("lk_") for name in table.column_names)


@pytest.mark.parametrize("case, expected", [
    ("missing_column", "missing columns for source apc: admission_method"),
    ("empty_file", "the file is empty: no header row"),
    ("no_header", "missing columns for source apc"),
    ("not_utf8", "the file is not valid UTF-8 (line 4)"),
    ("quote_over_line", "line 3: a quoted value runs over the line's end"),
    ("long_line", "line 2 runs over 1 MiB without a line feed"),
    ("compressed", "not valid UTF-8"),
    ("compressed_body", "the file is not valid UTF-8"),
    ("checksum", "sha256 does not match the manifest"),
    ("row_count", "row count 12 does not match the manifest's 13"),
    ("unknown_source", "manifest field source: unknown source 'xyz'"),
    ("mostly_bad", "rows failed the contract for apc: the file is refused whole"),
])
def test_bad_files_are_refused_whole(case, expected, haven, landing, inbox):
    rows = rows_for("apc", 12)
    columns = None
    manifest: dict = {}
    raw = None
    if case == "missing_column":
        columns = [c for c in CONTRACTS["apc"].names if c != "admission_method"]
    elif case == "empty_file":
        raw = b""
    elif case == "no_header":
        body = "\n".join(",".join(r.values()) for r in rows) + "\n"
        raw = body.encode()
    elif case == "quote_over_line":
        path = write_extract(inbox, "apc", rows)
        lines = path.read_bytes().split(b"\n")
        lines[2] = lines[2].replace(b"RR8", b'"RR8', 1)  # opens a quote the next line closes
        lines[3] = lines[3].replace(b"RR8", b'RR8"', 1)
        raw = b"\n".join(lines)
    elif case == "long_line":
        path = write_extract(inbox, "apc", rows)
        lines = path.read_bytes().split(b"\n")
        lines[1] = lines[1].replace(b"RR8", b"R" * (1 << 20), 1)
        raw = b"\n".join(lines)
    elif case == "compressed":  # gzip's bytes: said to be not UTF-8, not quoted values
        import gzip

        path = write_extract(inbox, "apc", rows * 50)
        raw = gzip.compress(path.read_bytes())
    elif case == "compressed_body":  # a text header, then gzip's bytes
        path = write_extract(inbox, "apc", rows)
        header = path.read_bytes().split(b"\n")[0]
        raw = header + b"\n" + _binary_lines_with_open_quotes()
    elif case == "not_utf8":
        path = write_extract(inbox, "apc", rows)
        lines = path.read_bytes().split(b"\n")
        lines[3] = lines[3].replace(b"RR8", b"R\xff8")
        raw = b"\n".join(lines)
    elif case == "checksum":
        manifest = {"sha256": "0" * 64}
    elif case == "row_count":
        manifest = {"rows": 13}
    elif case == "unknown_source":
        manifest = {"source": "xyz"}
    elif case == "mostly_bad":
        for r in rows[:8]:
            r["admission_date"] = "yesterday"
    path = write_extract(inbox, "apc", rows, columns=columns, manifest=manifest, raw=raw)
    if raw is not None:
        write_manifest(path, "apc", len(rows), overrides=manifest)
    receipt = land_file(landing, path)
    assert receipt.status == "refused"
    assert expected in receipt.reason
    assert store.landed_folders(haven.settings) == []
    with haven.engine.connect() as connection:
        statuses = connection.scalars(select(extracts.c.status)).all()
        assert connection.scalar(select(vault.c.person_id)) is None
    assert statuses == ["refused"]


def test_missing_manifest_is_refused(landing, inbox):
    path = write_extract(inbox, "apc", rows_for("apc", 3))
    path.with_name(path.name + ".manifest.json").unlink()
    receipt = land_file(landing, path)
    assert receipt.status == "refused" and "no manifest" in receipt.reason


def test_extra_columns_are_ignored_and_reported(haven, landing, inbox):
    rows = [dict(r, free_text="call me on 07700 900123") for r in rows_for("op", 5)]
    path = write_extract(inbox, "op", rows, columns=[*CONTRACTS["op"].names, "free_text"])
    receipt = land_file(landing, path)
    assert receipt.status == "landed" and receipt.ignored_columns == ["free_text"]
    assert "free_text" not in landed_table(haven, receipt).column_names


def test_unsplittable_row_is_rejected_by_number(landing, inbox):
    rows = rows_for("op", 6)
    path = write_extract(inbox, "op", rows)
    lines = path.read_text().splitlines()
    lines[4] = lines[4] + ",extra,fields"
    path.write_text("\n".join(lines) + "\n")
    write_manifest(path, "op", 6)
    receipt = land_file(landing, path)
    assert receipt.status == "landed"
    assert receipt.rejected_rows == [
        {"row": 4, "reason": "row could not be split into the header's columns"}]
    assert receipt.counts["landed"] == 5


def test_same_file_twice_is_a_duplicate(haven, landing, inbox):
    path = write_extract(inbox, "ae", rows_for("ae", 8))
    first = land_file(landing, path)
    second = land_file(landing, path)
    assert second.status == "duplicate" and second.extract_id == first.extract_id
    assert store.landed_folders(haven.settings) == [first.extract_id]


def test_parquet_extract_lands_like_csv(haven, landing, inbox):
    import pyarrow as pa

    rows = rows_for("gp_medications", 12)
    rows[3]["issue_date"] = "2024/01/10"
    table = pa.Table.from_pylist(rows)
    path = inbox / "meds.parquet"
    pq.write_table(table, path)
    write_manifest(path, "gp_medications", 12)
    receipt = land_file(landing, path)
    assert receipt.status == "landed"
    assert receipt.rejected_rows == [{"row": 4, "reason": "issue_date: not a date (YYYY-MM-DD)"}]


def test_identifier_columns_keep_leading_zeros(haven, landing, inbox):
    rows = rows_for("community", 3)
    rows[0]["contact_id"], rows[1]["contact_id"] = "007", "7"
    receipt = land_file(landing, write_extract(inbox, "community", rows))
    keys = landed_table(haven, receipt).column("record_key").to_pylist()
    assert keys[0] != keys[1]


def test_folder_lands_each_file_and_remove_deletes_inbound(haven, landing, inbox):
    write_extract(inbox, "apc", rows_for("apc", 4))
    write_extract(inbox, "deaths", rows_for("deaths", 4))
    receipts = land_path(landing, inbox, remove=True)
    assert sorted(r.status for r in receipts) == ["landed", "landed"]
    assert list(inbox.iterdir()) == []


def _binary_lines_with_open_quotes() -> bytes:
    """Bytes that are not text, whose "lines" a line check would find quotes open in first:
    the refusal must still say the file is not UTF-8."""
    return b'"\xff\xfe,1\n' * 5
