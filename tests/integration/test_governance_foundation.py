"""The foundation governance stands on: settings, the key provider, the data directory."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

import pytest

from governance import store
from governance.keys import Key, KeyError_, KeyProvider
from governance.policy_tables import add_months, policy_text, retention_date
from governance.settings import Settings


def test_settings_from_a_file_with_the_environment_winning(tmp_path: Path):
    file = tmp_path / "settings.json"
    file.write_text(json.dumps({"HOME": str(tmp_path / "a"), "batch_rows": 10}))
    settings = Settings.from_environ({"HAVEN_SETTINGS": str(file),
                                      "HAVEN_BATCH_ROWS": "20", "HAVEN_KEY_X": "k"})
    assert settings.home == (tmp_path / "a").resolve() and settings.batch_rows == 20
    assert settings.embedded and settings.key_env == {"HAVEN_KEY_X": "k"}
    moved = settings.with_(database_url="postgresql://h/db")
    assert not moved.embedded and moved.home == settings.home
    file.write_text("{not json")
    with pytest.raises(ValueError, match="could not be read"):
        Settings.from_environ({"HAVEN_SETTINGS": str(file)})


def test_a_key_file_is_private_and_old_keys_are_retired_explicitly(tmp_path: Path):
    keys = KeyProvider(tmp_path / "keys.json")
    first = keys.current("pseudonym")
    assert repr(first) == f"Key(key_id={first.key_id!r})"  # never the secret
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    second = keys.rotate("pseudonym")
    assert keys.get("pseudonym", first.key_id) == first
    with pytest.raises(KeyError_, match="active key cannot be retired"):
        keys.retire("pseudonym", second.key_id)
    keys.retire("pseudonym", first.key_id)
    with pytest.raises(KeyError_, match="no key with id"):
        KeyProvider(tmp_path / "keys.json").get("pseudonym", first.key_id)
    with pytest.raises(KeyError_, match="unknown key purpose"):
        keys.current("marketing")
    os.chmod(tmp_path / "keys.json", 0o644)
    with pytest.raises(KeyError_, match="must not be readable by others"):
        KeyProvider(tmp_path / "keys.json").current("vault")


@pytest.mark.parametrize("value, message", [
    (None, "must be set"), ("p1", "must be set"), ("p1:***", "not valid base64"),
    ("p1:" + base64.b64encode(b"short").decode(), "at least 32 bytes")])
def test_environment_keys_must_be_whole(tmp_path: Path, value: str | None, message: str):
    good = "x1:" + base64.b64encode(b"k" * 32).decode()
    environ = {f"HAVEN_KEY_{p.upper()}": good for p in ("pseudonym", "linkage", "vault",
                                                          "release")}
    if value is None:
        environ.pop("HAVEN_KEY_VAULT")
    else:
        environ["HAVEN_KEY_VAULT"] = value
    with pytest.raises(KeyError_, match=message):
        KeyProvider(tmp_path / "keys.json", environ).current("vault")
    assert not (tmp_path / "keys.json").exists()  # nothing written when keys come from env
    assert Key("k", b"s") != Key("k", b"t")


def test_interrupted_landings_leave_nothing_in_staging(tmp_path: Path):
    settings = Settings(home=tmp_path)
    assert store.clear_staging(settings) == 0
    for name in ("e1", "e2"):
        (settings.layout.staged(name)).mkdir(parents=True)
    assert store.clear_staging(settings) == 2 and not any(settings.layout.staging_dir.iterdir())


def test_retention_dates_and_the_shipped_tables(haven):
    assert policy_text("retention.csv", haven.engine) == policy_text("retention.csv")
    assert add_months(dt.date(2024, 1, 31), 1) == dt.date(2024, 2, 29)
    assert retention_date("apc", dt.date(2024, 3, 31), haven.engine) == dt.date(2027, 3, 31)
    with pytest.raises(ValueError, match="no row for source 'unknown'"):
        retention_date("unknown", dt.date(2024, 3, 31))


def test_the_access_policy_table_is_migrated_and_an_adapter_made_one_is_kept(tmp_path: Path):
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect, text

    from governance.db import alembic_config, engine_for, migrate

    engine = engine_for(Settings(home=tmp_path))
    with engine.begin() as connection:  # a database from before 0002: the adapter made it
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text("CREATE TABLE casbin_rule (id INTEGER PRIMARY KEY, "
                                "ptype VARCHAR(255), v0 VARCHAR(255), v1 VARCHAR(255), "
                                "v2 VARCHAR(255), v3 VARCHAR(255), v4 VARCHAR(255), "
                                "v5 VARCHAR(255), v6 VARCHAR(255))"))
        connection.execute(text("INSERT INTO casbin_rule (ptype, v0) VALUES ('g', 'kept')"))
    migrate(engine)
    with engine.connect() as connection:  # kept, with rules later migrations add (0003...)
        assert connection.execute(text("SELECT v0 FROM casbin_rule ORDER BY id")).scalars() \
            .all()[:2] == ["kept", "ig_lead"]
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() \
            == ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    fresh = engine_for(Settings(home=tmp_path / "fresh"))
    migrate(fresh)
    columns = {c["name"] for c in inspect(fresh).get_columns("casbin_rule")}
    assert columns == {"id", "ptype", *(f"v{i}" for i in range(7))}
    engine.dispose()
    fresh.dispose()


def test_the_pages_rules_migration_adds_each_rule_once_and_downgrades(tmp_path: Path):
    """A policy seeded before the pages gets their rules once, even where one was added by hand
    already, and a downgrade takes them out again (migration 0004)."""
    from alembic import command
    from sqlalchemy import text

    from governance.db import alembic_config, engine_for

    sign_in = ("p", "anonymous", "*", "session", "create", "*", "*", "any")
    engine = engine_for(Settings(home=tmp_path))
    config = alembic_config(engine)
    select_rules = text("SELECT ptype, v0, v1, v2, v3, v4, v5, v6 FROM casbin_rule")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.execute(text("INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4, v5, v6) "
                                "VALUES ('p', 'anonymous', '*', 'session', 'create', '*', '*', "
                                "'any')"))
        command.upgrade(config, "0004")
        rows = [tuple(r) for r in connection.execute(select_rules)]
        assert rows.count(sign_in) == 1
        assert ("p", "mdt_clinician", "*", "mdt_review", "create", "case_finding", "*",
                "own") in rows
        command.downgrade(config, "0003")
        assert sign_in not in [tuple(r) for r in connection.execute(select_rules)]
    engine.dispose()
