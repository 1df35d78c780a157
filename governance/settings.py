"""Haven's settings, read once from the environment (or a settings file) and passed explicitly.

Nothing in Haven reads the environment deep inside: the command line and the app factory build
a `Settings` and hand it down, so every path can be tested without patching globals.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from governance.layout import Layout

ENGINES = ("embedded", "spark")
MEMORY = re.compile(r"^[1-9][0-9]*(\.[0-9]+)?\s*(KB|MB|GB|TB)$", re.IGNORECASE)
SPARK_CONF = "HAVEN_SPARK_CONF_"


@dataclass(frozen=True)
class Settings:
    """Where Haven keeps its data and which database holds the relational part.

    Args:
        home: the data directory (`HAVEN_HOME`); the embedded default keeps everything here.
        database_url: SQLAlchemy URL (`HAVEN_DATABASE_URL`); blank means SQLite under `home`.
        key_env: key material passed as environment variables (`HAVEN_KEY_*`), if any.
        batch_rows: rows per landing batch: memory is bounded by a batch, not by a file.
        engine: where the stages run (`HAVEN_ENGINE`): `embedded` (this process, the default)
            or `spark` (pipeline.engines; governance stays in this process's database).
        spark_master: the Spark master URL (`HAVEN_SPARK_MASTER`, default `local[2]`).
        spark_conf: Spark configuration passed through (`HAVEN_SPARK_CONF_*`; `spark_setting`).
        duckdb_memory: how much memory a stage's DuckDB may hold before it spills to the data
            directory (`HAVEN_DUCKDB_MEMORY`, e.g. `1GB`): bounds scoring's working copy.
    """

    home: Path
    database_url: str = field(default="", repr=False)  # may hold a password: never printed
    key_env: Mapping[str, str] = field(default_factory=dict, repr=False)  # never printed
    batch_rows: int = 200_000
    engine: str = "embedded"
    spark_master: str = "local[2]"
    # may hold spark.authenticate.secret (a standalone cluster's shared secret): never printed
    spark_conf: Mapping[str, str] = field(default_factory=dict, repr=False)
    duckdb_memory: str = "1GB"

    @property
    def db_url(self) -> str:
        """The database URL in force: PostgreSQL when configured, else SQLite under home."""
        return self.database_url or f"sqlite:///{self.layout.database_file}"

    @property
    def embedded(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def layout(self) -> Layout:
        """Every path under the data directory (governance.layout)."""
        return Layout(self.home)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from `HAVEN_*` variables, then an optional `HAVEN_SETTINGS` JSON file.

        Environment variables win over the file, so a deployment can override one value.
        """
        values: dict[str, str] = {}
        settings_file = environ.get("HAVEN_SETTINGS")
        if settings_file:
            path = Path(settings_file)
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"settings file {path} could not be read: {exc}") from exc
            values.update({str(k).lower(): str(v) for k, v in loaded.items()})
        for name in ("home", "database_url", "batch_rows", "duckdb_memory"):
            env_name = f"HAVEN_{name.upper()}"
            if environ.get(env_name):
                values[name] = environ[env_name]
        home = Path(values.get("home") or Path(environ.get("PWD", os.getcwd())) / "haven-home")
        key_env = {k: v for k, v in environ.items() if k.startswith("HAVEN_KEY_")}
        engine = environ.get("HAVEN_ENGINE", values.get("engine", "embedded")) or "embedded"
        if engine not in ENGINES:
            raise ValueError(f"HAVEN_ENGINE must be one of {', '.join(ENGINES)}, not {engine!r}")
        duckdb_memory = values.get("duckdb_memory", "1GB").strip()
        if not MEMORY.match(duckdb_memory):
            raise ValueError(f"HAVEN_DUCKDB_MEMORY must be a size such as 1GB or 512MB, "
                             f"not {duckdb_memory!r}")
        spark_conf = dict(spark_setting(k, v) for k, v in environ.items()
                          if k.startswith(SPARK_CONF))
        return cls(
            home=home.expanduser().resolve(),
            database_url=values.get("database_url", ""),
            key_env=key_env,
            batch_rows=int(values.get("batch_rows", 200_000)),
            engine=engine,
            spark_master=environ.get("HAVEN_SPARK_MASTER") or values.get("spark_master")
            or "local[2]",
            spark_conf=spark_conf,
            duckdb_memory=duckdb_memory,
        )


def spark_setting(name: str, value: str) -> tuple[str, str]:
    """One `HAVEN_SPARK_CONF_*` variable as a Spark (key, value).

    `HAVEN_SPARK_CONF_SPARK_DRIVER_MEMORY=1g` is `spark.driver.memory=1g` (the name lowered,
    `_` for `.`); a key with capitals is given whole in the value instead:
    `HAVEN_SPARK_CONF_OVERHEAD=spark.executor.memoryOverhead=512m`.
    """
    if value.startswith("spark.") and "=" in value:
        key, _, given = value.partition("=")
        return key, given
    return name[len(SPARK_CONF):].lower().replace("_", "."), value
