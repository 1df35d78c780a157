"""Migration 0006: the incidents table, and the emergency planning roles' rules added once to a
policy seeded before them (and taken out again on downgrade)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from governance.settings import Settings


def test_migration_0006_makes_the_table_and_the_roles_rules_once(tmp_path: Path) -> None:
    from alembic import command

    from governance.db import alembic_config, engine_for

    rules = text("SELECT ptype, v0, v1, v2, v3, v4, v5, v6 FROM casbin_rule")
    list_rule = ("p", "responder", "*", "incident_reidentify", "create", "emergency_planning",
                 "*", "any")
    role = ("g", "planner", "authenticated", "*", None, None, None, None)
    for seeded in (False, True):
        engine = engine_for(Settings(home=tmp_path / f"seeded-{seeded}"))
        config = alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0005")
            if seeded:  # a policy seeded before 0006, one of its rules added by hand already
                connection.execute(text(
                    "INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4, v5, v6) VALUES "
                    "('p', 'responder', '*', 'incident_reidentify', 'create', "
                    "'emergency_planning', '*', 'any')"))
            command.upgrade(config, "0006")
            found = [tuple(r) for r in connection.execute(rules)]
            assert found.count(list_rule) == (1 if seeded else 0)
            assert (role in found) is seeded
            connection.execute(text("SELECT count(*) FROM incidents"))
            command.downgrade(config, "0005")
            assert list_rule not in [tuple(r) for r in connection.execute(rules)]
            assert "incidents" not in {r[0] for r in connection.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'table'"))}
        engine.dispose()
