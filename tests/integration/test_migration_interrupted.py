"""A process killed while it migrates the schema leaves no half-made schema behind.

SQLite's Python driver runs CREATE TABLE outside any transaction unless one is begun
explicitly, so a first start killed part-way once left some tables and no record of the
migration: every later start then failed on "table already exists" (CI caught it, as a landing
killed at start-up). The migrations are now one transaction on both backends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from conftest import key_environment
from governance.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

KILL_AT_STATEMENT = """
import os, sys
from pathlib import Path
from sqlalchemy import event
import governance.db as db
from governance.settings import Settings

make = db.engine_for
after = int(sys.argv[3])
seen = []

def engine_for(settings):
    engine = make(settings)

    @event.listens_for(engine, "after_cursor_execute")
    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(("CREATE", "ALTER", "INSERT")):
            seen.append(statement)
            if len(seen) == after:
                os._exit(9)  # as a SIGKILL would: no rollback, no clean-up
    return engine

db.engine_for = engine_for
db.open_database(Settings(home=Path(sys.argv[1]), database_url=sys.argv[2]))
print(len(seen))
"""


def _migrate_killed_after(home: Path, url: str, statements: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_AT_STATEMENT, str(home), url,
                           str(statements)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def _tables(settings: Settings) -> set[str]:
    from governance.db import engine_for

    engine = engine_for(settings)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_a_first_start_killed_while_migrating_leaves_no_tables_and_the_next_start_works(
        tmp_path: Path, backend: str, fraction: float) -> None:
    from governance.db import open_database

    # How many statements a whole migration runs (a kill after the last one never fires).
    whole = _migrate_killed_after(tmp_path / "whole", backend, 10**9)
    assert whole.returncode == 0, whole.stderr[-2000:]
    total = int(whole.stdout.split()[-1])
    assert total > 20
    if backend:  # the same PostgreSQL database: start again from an empty one
        settings = Settings(home=tmp_path / "whole", database_url=backend)
        engine = open_database(settings)
        expected = set(inspect(engine).get_table_names())
        with engine.begin() as connection:
            for table in expected:
                connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}" CASCADE')
        engine.dispose()
    else:
        expected = _tables(Settings(home=tmp_path / "whole"))

    home = tmp_path / "killed"
    killed = _migrate_killed_after(home, backend, max(1, int(total * fraction)))
    assert killed.returncode == 9
    settings = Settings(home=home, database_url=backend, key_env=key_environment())
    assert _tables(settings) == set(), "a killed migration left part of a schema"

    engine = open_database(settings)  # the next start migrates from nothing, and works
    try:
        assert set(inspect(engine).get_table_names()) == expected
    finally:
        engine.dispose()


def test_first_starts_at_once_migrate_one_after_the_other(tmp_path: Path, backend: str) -> None:
    from governance.db import open_database

    starts = [subprocess.Popen([sys.executable, "-c", KILL_AT_STATEMENT, str(tmp_path / "home"),
                                backend, str(10**9)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
              for _ in range(4)]
    results = [(start.wait(timeout=120), *start.communicate()) for start in starts]
    assert [code for code, _, _ in results] == [0] * 4, [err[-800:] for _, _, err in results]
    # One of them made the schema; the others found it made and ran no statement.
    assert sorted(int(out.split()[-1]) > 0 for _, out, _ in results) == [False] * 3 + [True]
    open_database(Settings(home=tmp_path / "home", database_url=backend)).dispose()
