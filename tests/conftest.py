"""Shared fixtures: a fresh Haven (data directory, database, keys) on each storage backend.

PostgreSQL tests need HAVEN_TEST_POSTGRES_URL (an admin URL; `.ci/run` sets it). Without it they
are skipped on a laptop, but never in CI: with CI=true a missing server fails the run.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from longest_first import scheduler
from sqlalchemy import Engine, create_engine, inspect, text
from threadpoolctl import threadpool_limits

from governance.db import engine_for, open_database
from governance.keys import KeyProvider
from governance.settings import Settings
from linkage.landing.land import LandingContext
from pipeline.context import Context as Haven

POSTGRES_URL = os.environ.get("HAVEN_TEST_POSTGRES_URL", "")
KINDS = ("unit", "integration", "api", "acceptance", "security", "browser")

# One OpenMP (and BLAS) thread per test process. `make test` runs two processes on two cores;
# gradient boosting's OpenMP threads then spin against the other process and fit four to
# ten times slower, and fit the same model whatever their number. Set here, on import, it
# reaches OpenMP when scikit-learn first loads it, every xdist worker (started after this
# file is read) and every process a test starts (the CLI, Spark's Python workers);
# `one_thread_each` below limits the libraries already loaded. Arrow's CPU pool reads it too
# (one thread; its results do not depend on that). A value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_thread_each() -> Iterator[None]:
    """BLAS loaded before OMP_NUM_THREADS was set (by numpy, on pandas' import) limited to
    the same number of threads."""
    first = os.environ["OMP_NUM_THREADS"].split(",")[0].strip()
    with threadpool_limits(int(first) if first.isdigit() else None):
        yield


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile` (as `make test` runs): each file whole to one worker, as ever, the
    longest files first (tests/longest_first.py)."""
    return scheduler(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kind (its folder) and `postgres` where it runs on PostgreSQL,
    so `pytest -m unit` or `-m "not postgres"` selects by kind."""
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("backend") == "postgres"
        if on_postgres or "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker("postgres")


def key_environment() -> dict[str, str]:
    """Fresh random keys for one test, passed the way a deployment would pass them."""
    return {
        f"HAVEN_KEY_{p.upper()}": f"{p[0]}t1:" + base64.b64encode(secrets.token_bytes(32)).decode()
        for p in ("pseudonym", "linkage", "vault", "release")
    }


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    if not POSTGRES_URL:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but HAVEN_TEST_POSTGRES_URL is not set: PostgreSQL tests must run")
        pytest.skip("no PostgreSQL (set HAVEN_TEST_POSTGRES_URL)")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_admin(postgres_admin_url: str) -> Iterator[Engine]:
    """One engine on the admin database for the whole process: each test's CREATE and DROP
    DATABASE reuse its connection rather than open (and authenticate) two of their own."""
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    yield admin
    admin.dispose()


@pytest.fixture(scope="session")
def migrated_postgres(postgres_admin_url: str, postgres_admin: Engine,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The name of a PostgreSQL database migrated to the newest schema (`open_database`, as
    every command starts), made once per test process, never connected to afterwards: the
    template `postgres_url` copies for a test that uses `haven`."""
    name = f"haven_template_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres_admin_url.rpartition("/")
    settings = Settings(home=tmp_path_factory.mktemp("migrated-postgres"),
                        database_url=f"{base}/{name}")
    try:
        open_database(settings).dispose()
        yield name
    finally:
        with postgres_admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


# The URLs `postgres_url` made as copies of `migrated_postgres` (already at the newest schema).
MIGRATED: set[str] = set()


@pytest.fixture
def postgres_url(postgres_admin_url: str, postgres_admin: Engine,
                 request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards: empty, or, for a test
    that uses `haven`, a copy of `migrated_postgres` (what `haven`'s first use of its
    database would make of an empty one, without alembic's tenth of a second each time)."""
    name = f"haven_test_{uuid.uuid4().hex[:12]}"
    migrated = "haven" in request.fixturenames
    template = f' TEMPLATE "{request.getfixturevalue("migrated_postgres")}"' if migrated else ""
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"{template}'))
    base, _, _ = postgres_admin_url.rpartition("/")
    url = f"{base}/{name}"
    if migrated:
        MIGRATED.add(url)
    try:
        yield url
    finally:
        MIGRATED.discard(url)
        with postgres_admin.connect() as connection:
            # Our own connections left open by the test; not a superuser's (an autovacuum
            # worker on the new database, which DROP DATABASE itself stops): terminating one
            # of those is refused and failed the test in teardown.
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND usename = current_user"))
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backends every governance and landing test runs on."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return ""


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database file migrated to the newest schema (`open_database`), made once per
    test process: `haven` on SQLite starts from a copy of it."""
    settings = Settings(home=tmp_path_factory.mktemp("migrated-sqlite") / "home")
    open_database(settings).dispose()
    database = settings.layout.database_file
    left = [p.name for p in database.parent.iterdir() if p != database]
    assert not left, f"a closed SQLite database left {left}: copy it whole"
    return database


@pytest.fixture
def haven(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[Haven]:
    """A fresh Haven: its own data directory, database and random keys. The database is
    already migrated (a copy of `migrated_sqlite`, or, on PostgreSQL, of `migrated_postgres`
    made by `postgres_url`), as its first use would leave it; migrating an empty database is
    tested in tests/integration (test_migration_interrupted, test_*_migration). Being a copy
    made at the newest migration, it is opened as `open_database` opens one, without asking
    alembic again whether it is (its scripts read anew each time: 30 ms)."""
    settings = Settings(home=tmp_path / "home", database_url=backend,
                        key_env=key_environment(), batch_rows=1000)
    if settings.embedded:
        settings.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"),
                        settings.layout.database_file)
    migrated = settings.embedded or backend in MIGRATED
    handle = Haven(settings, engine=engine_for(settings) if migrated else None)
    yield handle
    handle.close()


@pytest.fixture
def local_keys(tmp_path: Path) -> KeyProvider:
    """Keys in a key file of their own and no database: for tests of keyed values alone, which
    need not run once per storage backend."""
    return KeyProvider(tmp_path / "local-keys.json")


@pytest.fixture
def landing(haven: Haven) -> LandingContext:
    return LandingContext(haven.settings, haven.engine, haven.keys, haven.actor)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def unguard_audit(connection, dialect: str) -> None:
    """Lift the append-only guard, as an attacker with direct database access could."""
    if dialect == "sqlite":
        connection.execute(text("DROP TRIGGER IF EXISTS audit_log_no_update"))
        connection.execute(text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
    else:
        connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))


def everything_kept(haven: Haven) -> str:
    """Every value Haven keeps, as text: each table's rows and each file's content."""
    parts = []
    with haven.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            parts += [repr(tuple(row)) for row in connection.execute(
                text(f'SELECT * FROM "{table}"'))]
    for path in sorted(haven.settings.home.rglob("*")):
        if not path.is_file() or path.suffix in (".db", ".db-wal", ".db-shm", ".lock"):
            continue  # the database is read above, through SQL
        try:
            parts.append(pd.read_parquet(path).to_csv())
        except ValueError:  # not Parquet (or a stand-in file): its bytes as text
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)
