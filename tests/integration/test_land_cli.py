"""`haven land` from the command line: JSON receipts, exit status, --remove."""

from __future__ import annotations

import json

from cli.main import main
from factories import rows_for, write_extract


def environ(haven) -> dict[str, str]:
    return {"HAVEN_HOME": str(haven.settings.home),
            "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}


def test_land_json_prints_one_object_per_file_and_fails_on_refusal(haven, inbox, capsys):
    rows = rows_for("apc", 5)
    rows[1]["admission_date"] = "2024-02-30"
    write_extract(inbox, "apc", rows)
    write_extract(inbox, "ae", rows_for("ae", 5), manifest={"rows": 6})
    status = main(["land", str(inbox), "--json"], environ(haven))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1
    by_source = {line["source"]: line for line in lines}
    assert by_source["apc"]["status"] == "landed"
    assert by_source["apc"]["rejected_rows"] == [
        {"row": 2, "reason": "admission_date: not a date (YYYY-MM-DD)"}]
    assert by_source["apc"]["counts"]["landed"] == 4
    assert by_source["ae"]["status"] == "refused"
    assert by_source["ae"]["reason"] == "row count 5 does not match the manifest's 6"
    assert all(line["extract_id"] for line in lines)


def test_land_succeeds_with_zero_exit_and_a_summary(haven, inbox, capsys):
    write_extract(inbox, "op", rows_for("op", 3))
    assert main(["land", str(inbox)], environ(haven)) == 0
    out = capsys.readouterr().out
    assert "landed op.csv" in out and "1 landed, 0 refused, 0 duplicate" in out
    assert main(["land", str(inbox)], environ(haven)) == 0
    assert "duplicate" in capsys.readouterr().out


def test_land_remove_deletes_refused_inbound_files_too(haven, inbox):
    write_extract(inbox, "op", rows_for("op", 3), manifest={"sha256": "f" * 64})
    assert main(["land", str(inbox), "--remove"], environ(haven)) == 1
    assert list(inbox.iterdir()) == []


def test_land_missing_path_is_a_usage_error(haven, tmp_path):
    assert main(["land", str(tmp_path / "nothing")], environ(haven)) == 2
