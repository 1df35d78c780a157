"""`haven users add|list|revoke` and `haven serve --migrate-only`."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.config import ApiConfig
from cli.main import main
from governance.schema import audit_log, tokens, users


@pytest.fixture
def environ(haven) -> dict[str, str]:
    settings = haven.settings
    return {"HAVEN_HOME": str(settings.home), "HAVEN_DATABASE_URL": settings.database_url,
            **settings.key_env}


def test_users_add_prints_the_token_once_and_stores_its_hash(haven, environ, capsys) -> None:
    assert main(["users", "add", "dr.mdt", "--org", "b86001", "--role", "mdt_clinician"],
                environ) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("hvn_") and len(token) > 40
    with haven.engine.connect() as connection:
        stored = connection.execute(select(tokens.c.token_hash)).scalars().all()
        user = connection.execute(select(users)).mappings().one()
        actions = connection.execute(select(audit_log.c.action)).scalars().all()
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]
    assert (user["org"], user["roles"]) == ("B86001", ["mdt_clinician"])
    assert "user.add" in actions
    client = TestClient(create_app(haven.settings, engine=haven.engine, keys=haven.keys,
                                   config=ApiConfig(token_cache_seconds=0)))
    me = client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["roles"] == ["mdt_clinician"]

    assert main(["users", "add", "dr.mdt", "--org", "B86001", "--role", "analyst"],
                environ) != 0
    assert main(["users", "add", "someone", "--org", "B86001", "--role", "wizard"],
                environ) != 0
    assert main(["users", "add", "someone", "--org", "not an ods", "--role", "analyst"],
                environ) != 0
    capsys.readouterr()
    assert main(["users", "list"], environ) == 0
    listed = capsys.readouterr().out
    assert "dr.mdt" in listed and "B86001" in listed and token not in listed

    assert main(["users", "revoke", "dr.mdt"], environ) == 0
    assert client.get("/whoami", headers={"Authorization": f"Bearer {token}"}).status_code \
        == 401
    assert main(["users", "revoke", "nobody"], environ) != 0
    assert main(["users", "add", "dr.mdt", "--org", "B86001", "--role", "mdt_clinician",
                 "--replace"], environ) == 0
    again = capsys.readouterr().out.strip().splitlines()[-1]
    assert client.get("/whoami", headers={"Authorization": f"Bearer {again}"}).status_code \
        == 200


def test_serve_migrate_only_seeds_the_access_policy(haven, environ, capsys) -> None:
    assert main(["serve", "--migrate-only"], environ) == 0
    assert "access rules in force" in capsys.readouterr().err
    assert main(["serve", "--migrate-only"], environ) == 0  # seeded once
    with haven.engine.connect() as connection:
        seeds = connection.execute(select(audit_log.c.action).where(
            audit_log.c.action == "access_policy.seed")).all()
    assert len(seeds) == 1
