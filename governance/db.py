"""Database engine and migrations: SQLite under the data directory, or PostgreSQL, by one URL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text

from governance.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x68617665  # PostgreSQL advisory lock held while migrating ("have")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI callback
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def engine_for(settings: Settings) -> Engine:
    """An engine for the configured database; SQLite gets WAL and a busy timeout."""
    url = settings.db_url
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection_engine"] = engine
    return config


def _at_head(engine: Engine, config: Config) -> bool:
    """Whether the schema is already at the newest migration (a read, no lock taken)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    return set(current) == set(ScriptDirectory.from_config(config).get_heads())


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest migration (idempotent), all or nothing.

    The whole upgrade is one transaction. SQLite's Python driver runs DDL outside any
    transaction unless one is begun by hand, so a start killed part-way once left half a
    schema that no later start could migrate. The write lock is taken before alembic reads
    the version (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock): two first starts at
    once migrate one after the other, and the second finds nothing to do.
    """
    config = alembic_config(engine)
    if _at_head(engine, config):
        return
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(settings: Settings) -> Engine:
    """Engine with the schema migrated: what every command and the app start from."""
    engine = engine_for(settings)
    migrate(engine)
    return engine
