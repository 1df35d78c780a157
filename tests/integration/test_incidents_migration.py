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


def test_migration_0008_adds_organisations_and_approval_failing_closed(tmp_path: Path) -> None:
    """Migration 0008 (red-team F3): incidents declared before it keep their rows; an IG
    lead's counts as approved by that IG lead when declared, an admin's is left pending, and
    none names an organisation (no responder may act on it); downgrade drops the columns."""
    from alembic import command

    from governance.db import alembic_config, engine_for

    engine = engine_for(Settings(home=tmp_path / "home"))
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
        for incident_id, by, role in (("INC-1", "ivy", "ig_lead"), ("INC-2", "ada", "admin")):
            connection.execute(text(
                "INSERT INTO incidents (incident_id, reason, sectors, declared_by, "
                "declared_role, declared_at, expires_at) VALUES (:i, 'flood response', "
                "'[\"LS1 1\"]', :by, :role, '2025-01-01 10:00:00', '2025-01-03 10:00:00')"),
                {"i": incident_id, "by": by, "role": role})
        command.upgrade(config, "0008")
        found = {r[0]: r[1:] for r in connection.execute(text(
            "SELECT incident_id, approved_by, approved_at IS NOT NULL, organisations "
            "FROM incidents ORDER BY incident_id"))}
        assert found == {"INC-1": ("ivy", 1, None), "INC-2": (None, 0, None)}
        command.downgrade(config, "0007")
        columns = {r[1] for r in connection.execute(text("PRAGMA table_info(incidents)"))}
        assert "approved_by" not in columns and "organisations" not in columns
        assert connection.execute(text("SELECT count(*) FROM incidents")).scalar() == 2
    engine.dispose()
