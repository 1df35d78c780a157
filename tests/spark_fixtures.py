"""Test helper: the Spark tests' shared session (tests/spark import `spark` from here: a
conftest.py of their own would shadow tests/conftest.py for `from conftest import ...`). One
`local[2]` session for the whole run, small (a 1 GB
driver, two shuffle partitions), made from Haven's settings like any other. Every test here
that needs it is skipped, saying why, when PySpark or a Java runtime is missing (and fails
with CI=true, where .ci/run installs both)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from governance.settings import Settings
from linkage.person_index import read_link_map
from pipeline.engines.spark_session import missing, spark_session

WHY_NOT = missing()
CANARY = "HAVEN_KEY_CANARY"


@pytest.fixture(scope="session", name="spark")
def spark_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local[2] Spark session (skips the test when PySpark or Java is missing)."""
    if WHY_NOT and os.environ.get("CI") == "true":  # as for PostgreSQL: never skipped in CI
        pytest.fail(f"CI=true but the Spark engine tests cannot run: {WHY_NOT}")
    if WHY_NOT:
        pytest.skip(f"Spark engine tests need PySpark and Java: {WHY_NOT}")
    home: Path = tmp_path_factory.mktemp("spark-home")
    settings = Settings(home=home, engine="spark", spark_master="local[2]", spark_conf={
        "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2",
        "spark.local.dir": str(home / "spark-local")})
    # A key in the environment as the session starts (as `haven` run with HAVEN_KEY_* has):
    # tests/spark/test_engine_settings checks no executor's worker holds it.
    os.environ[CANARY] = "b1:canary-not-a-key"
    try:
        session = spark_session(settings, "haven-tests")
    finally:
        os.environ.pop(CANARY, None)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def comparable_links(settings: Settings) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every landed row's person, as two homes landed from the same files compare: extract
    ids (each landing draws its own) are dropped, and a row linked to no one, whose person
    key hashes its extract id, is named by its source and row instead; with that renaming
    ({person key: name}) for other tables keyed by person."""
    links = read_link_map(settings)
    alone = links["person_id"].isna() & links["client_key"].isna()
    own = dict(zip(links.loc[alone, "person_key"],
                   "U:" + links.loc[alone, "source"] + ":" + links.loc[alone, "row"].astype(str),
                   strict=True))
    links["person_key"] = links["person_key"].map(lambda k: own.get(k, k))
    links = links.drop(columns=[c for c in links.columns if "extract" in c])
    return links.sort_values(list(links.columns)).reset_index(drop=True), own
