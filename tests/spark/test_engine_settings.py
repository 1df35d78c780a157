"""The execution engine setting (governance.settings): HAVEN_ENGINE, HAVEN_SPARK_MASTER and
HAVEN_SPARK_CONF_* read from the environment (or the settings file) and passed in. No Spark
needed: these run everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governance.settings import Settings, spark_setting


def test_embedded_is_the_default_with_local_two_cores(tmp_path: Path) -> None:
    settings = Settings.from_environ({"HAVEN_HOME": str(tmp_path)})
    assert settings.engine == "embedded"
    assert settings.spark_master == "local[2]"
    assert dict(settings.spark_conf) == {}


def test_spark_engine_master_and_configuration_are_passed_through(tmp_path: Path) -> None:
    settings = Settings.from_environ({
        "HAVEN_HOME": str(tmp_path), "HAVEN_ENGINE": "spark",
        "HAVEN_SPARK_MASTER": "spark://cluster:7077",
        "HAVEN_SPARK_CONF_SPARK_DRIVER_MEMORY": "1g",
        "HAVEN_SPARK_CONF_OVERHEAD": "spark.executor.memoryOverhead=512m",
        "SPARK_CONF_IGNORED": "x"})
    assert settings.engine == "spark"
    assert settings.spark_master == "spark://cluster:7077"
    assert dict(settings.spark_conf) == {"spark.driver.memory": "1g",
                                         "spark.executor.memoryOverhead": "512m"}


def test_the_settings_file_can_choose_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"engine": "spark", "spark_master": "local[1]"}))
    settings = Settings.from_environ({"HAVEN_HOME": str(tmp_path), "HAVEN_SETTINGS": str(path)})
    assert (settings.engine, settings.spark_master) == ("spark", "local[1]")


def test_an_unknown_engine_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError,
                       match="HAVEN_ENGINE must be one of embedded, spark, not 'flink'"):
        Settings.from_environ({"HAVEN_HOME": str(tmp_path), "HAVEN_ENGINE": "flink"})


def test_a_spark_key_with_capitals_is_given_whole_in_the_value() -> None:
    assert spark_setting("HAVEN_SPARK_CONF_X", "spark.sql.shuffle.partitions=4") == (
        "spark.sql.shuffle.partitions", "4")
    assert spark_setting("HAVEN_SPARK_CONF_SPARK_UI_ENABLED", "false") == (
        "spark.ui.enabled", "false")


def test_keys_are_withheld_from_the_environment_spark_starts_in_then_put_back() -> None:
    from pipeline.engines.spark_session import keys_withheld

    environ = {"HAVEN_KEY_VAULT": "b1:v", "HAVEN_KEY_LINKAGE": "b1:l", "PATH": "/bin",
               "HAVEN_HOME": "/h"}
    with keys_withheld(environ):
        assert environ == {"PATH": "/bin", "HAVEN_HOME": "/h"}
    assert environ["HAVEN_KEY_VAULT"] == "b1:v" and len(environ) == 4
    with pytest.raises(RuntimeError), keys_withheld(environ):
        raise RuntimeError("the JVM did not start")
    assert environ["HAVEN_KEY_LINKAGE"] == "b1:l"  # put back however the start ends


def test_a_stage_error_is_not_replaced_by_a_failed_stop(tmp_path: Path, monkeypatch) -> None:
    """A JVM that died mid-stage cannot be stopped either: the stage's own error is raised
    (a 1M-person score on Spark reported only the failed stop)."""
    from pipeline.engines import spark_session as module

    class Dead:
        def stop(self) -> None:
            raise RuntimeError("SparkSession does not exist in the JVM")

    monkeypatch.setattr(module, "missing", lambda: "not wanted here")
    monkeypatch.setattr(module, "spark_session", lambda *_a: Dead())
    settings = Settings.from_environ({"HAVEN_HOME": str(tmp_path)})
    with pytest.raises(MemoryError, match="driver"), module.session(settings):
        raise MemoryError("driver out of memory")
    with pytest.raises(RuntimeError, match="does not exist"), module.session(settings):
        pass  # the stage ended well: a failed stop is still said


def test_the_command_line_says_why_the_spark_engine_is_refused_without_a_trace(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    (tmp_path / "inbox").mkdir()
    status = main(["land", str(tmp_path / "inbox")], {
        "HAVEN_HOME": str(tmp_path / "home"), "HAVEN_ENGINE": "spark",
        "HAVEN_SPARK_CONF_SPARK_IO_ENCRYPTION_ENABLED": "false"})
    err = capsys.readouterr().err
    assert status == 2
    assert ("haven: HAVEN_SPARK_CONF sets spark.io.encryption.enabled to a value other "
            "than true: refused") in err
    assert "Traceback" not in err
