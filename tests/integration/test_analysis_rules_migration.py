"""Migration 0007: the analyses' access rules added once to a policy seeded before them (and
taken out on downgrade)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from governance.settings import Settings

RULES = text("SELECT ptype, v0, v1, v2, v3, v4, v5, v6 FROM casbin_rule")
TABLE_RULE = ("p", "analyst", "*", "analysis_table", "read", "commissioning", "*", "any")
COST_CHANGE = ("p", "super_user", "*", "unit_costs", "update", "commissioning", "*", "any")


def test_migration_0007_adds_the_analyses_rules_once(tmp_path: Path) -> None:
    from alembic import command

    from governance.db import alembic_config, engine_for

    for seeded in (False, True):
        engine = engine_for(Settings(home=tmp_path / f"seeded-{seeded}"))
        config = alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0006")
            if seeded:  # a policy seeded before 0007, one of its rules added by hand already
                connection.execute(text(
                    "INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4, v5, v6) VALUES "
                    "('p', 'analyst', '*', 'analysis_table', 'read', 'commissioning', '*', "
                    "'any')"))
            command.upgrade(config, "0007")
            found = [tuple(r) for r in connection.execute(RULES)]
            assert found.count(TABLE_RULE) == (1 if seeded else 0)
            assert (COST_CHANGE in found) is seeded
            command.downgrade(config, "0006")
            found = [tuple(r) for r in connection.execute(RULES)]
            assert TABLE_RULE not in found and COST_CHANGE not in found
        engine.dispose()
