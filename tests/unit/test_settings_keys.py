"""Settings from the environment, the key provider, the data directory and policy tables."""

from __future__ import annotations

import base64
import json
import os
from datetime import date
from pathlib import Path

import pytest

from governance import store
from governance.keys import KeyError_, KeyProvider
from governance.layout import ROWS_FILE
from governance.policy_tables import add_months, read_table, retention_date
from governance.settings import Settings


def test_settings_from_environment_and_file(tmp_path: Path):
    file = tmp_path / "settings.json"
    file.write_text(json.dumps({"home": str(tmp_path / "a"), "batch_rows": 5000}))
    settings = Settings.from_environ({"HAVEN_SETTINGS": str(file),
                                      "HAVEN_DATABASE_URL": "postgresql://u@h/db",
                                      "HAVEN_KEY_VAULT": "x", "OTHER": "y"})
    assert settings.home == (tmp_path / "a").resolve()
    assert settings.batch_rows == 5000 and not settings.embedded
    assert settings.db_url == "postgresql://u@h/db" and settings.key_env == {"HAVEN_KEY_VAULT": "x"}
    local = Settings.from_environ({"HAVEN_HOME": str(tmp_path / "b")})
    assert local.embedded and local.db_url.endswith("b/haven.db")
    assert local.layout.extracts_dir.parent == local.home
    assert local.with_(batch_rows=7).batch_rows == 7


def test_duckdb_memory_limit_is_a_size_or_refused(tmp_path: Path):
    home = {"HAVEN_HOME": str(tmp_path)}
    assert Settings.from_environ(home).duckdb_memory == "1GB"
    assert Settings.from_environ({**home, "HAVEN_DUCKDB_MEMORY": "512MB"}).duckdb_memory == "512MB"
    for bad in ("lots", "0GB", "1GB; DROP TABLE x", "-1GB"):
        with pytest.raises(ValueError, match="HAVEN_DUCKDB_MEMORY must be a size"):
            Settings.from_environ({**home, "HAVEN_DUCKDB_MEMORY": bad})


def test_unreadable_settings_file_is_named(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json could not be read"):
        Settings.from_environ({"HAVEN_SETTINGS": str(bad)})


def test_key_file_is_created_0600_and_reused(tmp_path: Path):
    path = tmp_path / "keys.json"
    first = KeyProvider(path).current("pseudonym")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = KeyProvider(path).current("pseudonym")
    assert again == first and "secret" not in repr(first)
    assert KeyProvider(path).current("vault").secret != first.secret


def test_key_file_readable_by_others_is_refused(tmp_path: Path):
    path = tmp_path / "keys.json"
    KeyProvider(path).current("linkage")
    os.chmod(path, 0o644)
    with pytest.raises(KeyError_, match="must not be readable by others"):
        KeyProvider(path).current("linkage")


def test_rotation_keeps_old_keys_until_retired(tmp_path: Path):
    keys = KeyProvider(tmp_path / "keys.json")
    old = keys.current("pseudonym")
    new = keys.rotate("pseudonym")
    assert new.key_id != old.key_id and keys.get("pseudonym", old.key_id) == old
    reread = KeyProvider(tmp_path / "keys.json")
    assert reread.current("pseudonym") == new
    with pytest.raises(KeyError_, match="active key cannot be retired"):
        reread.retire("pseudonym", new.key_id)
    reread.retire("pseudonym", old.key_id)
    with pytest.raises(KeyError_, match="no key with id"):
        reread.get("pseudonym", old.key_id)


def test_keys_from_environment(tmp_path: Path):
    secret = base64.b64encode(os.urandom(32)).decode()
    env = {f"HAVEN_KEY_{p}": f"e1:{secret}" for p in ("PSEUDONYM", "LINKAGE", "VAULT", "RELEASE")}
    keys = KeyProvider(tmp_path / "unused.json", env)
    assert keys.from_environment and keys.current("vault").key_id == "e1"
    assert not (tmp_path / "unused.json").exists()
    with pytest.raises(KeyError_, match="rotate them where they are kept"):
        keys.rotate("vault")
    with pytest.raises(KeyError_, match="unknown key purpose"):
        keys.current("nothing")
    for value, message in (("nocolon", "must be set as"), ("k:!!!", "not valid base64"),
                           ("k:" + base64.b64encode(b"short").decode(), "at least 32 bytes")):
        with pytest.raises(KeyError_, match=message) as caught:
            KeyProvider(tmp_path / "x.json", {**env, "HAVEN_KEY_VAULT": value}).current("vault")
        assert secret not in str(caught.value)


def test_data_directory_publish_and_recovery(tmp_path: Path):
    settings = Settings(home=tmp_path / "home")
    assert store.landed_folders(settings) == [] and store.clear_staging(settings) == 0
    staged = settings.layout.staged("x1")
    staged.mkdir(parents=True)
    (staged / ROWS_FILE).write_bytes(b"rows")
    store.publish(settings, "x1")
    assert store.landed_folders(settings) == ["x1"] and settings.layout.rows("x1").exists()
    settings.layout.staged("x2").mkdir(parents=True)
    assert store.clear_staging(settings) == 1
    with store.data_lock(settings):
        assert (settings.home / "data.lock").exists()


def test_retention_dates_from_the_policy_table():
    assert {row["source"] for row in read_table("retention.csv")} >= {"apc", "social_care",
                                                                     "audit", "derived"}
    assert retention_date("apc", date(2026, 3, 31)) == date(2029, 3, 31)
    assert retention_date("social_care", date(2024, 2, 29)) == date(2026, 2, 28)
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    with pytest.raises(ValueError, match="no row for source"):
        retention_date("nothing", date(2026, 1, 1))


def test_settings_never_print_their_keys_or_database_password(tmp_path: Path):
    """A reviewer found `repr(settings)` printed every `HAVEN_KEY_*` value: an error message or
    a log line that shows the settings would have carried the keys."""
    settings = Settings.from_environ({
        "HAVEN_HOME": str(tmp_path), "HAVEN_KEY_VAULT": "b1:c2VjcmV0LXZhdWx0LWtleQ==",
        "HAVEN_DATABASE_URL": "postgresql+psycopg://haven:pa55word@db/haven",
        "HAVEN_SPARK_CONF_SECRET": "spark.authenticate.secret=sh4red-s3cret"})
    shown = repr(settings) + str(settings)
    assert settings.key_env and "pa55word" in settings.db_url
    assert settings.spark_conf["spark.authenticate.secret"] == "sh4red-s3cret"
    assert "c2VjcmV0" not in shown and "pa55word" not in shown and "sh4red" not in shown
    assert str(tmp_path) in shown  # still says which home it is
