"""Who may talk to a Haven Spark session's processes: only a holder of the application's
secret, over encrypted connections. Every Spark driver listens on a port, even in local mode;
without `spark.authenticate` anyone who reaches it has their messages handled by Spark's RPC
dispatcher (the attack below), and without `spark.network.crypto.enabled` broadcasts (a
landing's keys) and shuffled rows cross between a cluster's machines in clear; with SASL's
fall-back a client whose handshake fails retries over SASL, unencrypted by default."""

from __future__ import annotations

import fcntl
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from governance.settings import Settings
from pipeline.engines.spark_protections import (
    REQUIRED,
    SECRET,
    SERVED,
    SparkRefused,
    protected_conf,
    require_protections,
)
from pipeline.engines.spark_session import session, spark_conf

# Each network protection, with settings that would undo it.
NETWORK = {"spark.authenticate": ("false", "FALSE", "0"),
           "spark.network.crypto.enabled": ("false", "FALSE", "0"),
           "spark.network.crypto.saslFallback": ("true", "TRUE", "1"),
           "spark.network.crypto.cipher": ("AES/CTR/NoPadding", "aes/ctr/nopadding"),
           "spark.network.crypto.authEngineVersion": ("1", " 1")}


@pytest.mark.parametrize("key", NETWORK)
def test_haven_sets_authentication_and_network_encryption_and_refuses_undoing_them(
        tmp_path: Path, key: str) -> None:
    required = REQUIRED[key].value
    assert spark_conf(Settings(home=tmp_path))[key] == required
    assert spark_conf(Settings(home=tmp_path, spark_conf={key: required}))[key] == required
    for off in NETWORK[key]:
        settings = Settings(home=tmp_path, engine="spark", spark_conf={key: off})
        with pytest.raises(SparkRefused, match=f"sets {key} to a value other than"):
            spark_conf(settings)


class _Running:
    """A stand-in for a running session (a notebook's) started with the settings given."""

    def __init__(self, conf: dict[str, str]) -> None:
        self.sparkContext = self
        self.conf = conf

    def getConf(self) -> dict[str, str]:  # noqa: N802 - Spark's name
        return self.conf


@pytest.mark.parametrize("key", NETWORK)
def test_a_running_session_without_authentication_or_network_encryption_is_refused(
        key: str) -> None:
    protected = protected_conf()
    require_protections(_Running(protected))  # every protection on: accepted
    undone = NETWORK[key][0]  # set so, or not set at all (Spark's default is the same)
    for conf in ({**protected, key: undone}, {k: v for k, v in protected.items() if k != key}):
        with pytest.raises(SparkRefused, match=f"does not have {key}={REQUIRED[key].value}"):
            require_protections(_Running(conf))


def _rpc_reply(host: str, port: int, payload: bytes) -> bytes:
    """What a Spark RPC server answers a client that sends `payload` as an RPC request
    without authenticating first (Spark's frame: length, type 3, request id, body length)."""
    body = struct.pack(">qi", 42, len(payload)) + payload
    reply = b""
    with socket.create_connection((host, port), timeout=30) as connection:
        connection.sendall(struct.pack(">qb", 8 + 1 + len(body), 3) + body)
        while len(reply) < 4096:
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
            if len(reply) >= 8 and len(reply) >= struct.unpack(">q", reply[:8])[0]:
                break
    return reply


def test_an_unauthenticated_client_is_turned_away_at_the_driver_s_port(spark: Any) -> None:
    """The attack: connect to the driver's RPC port and send a request. Without
    authentication (tried by hand on Spark 4.x) Spark hands it to its dispatcher, which tries
    to decode it as a message to an endpoint (`RequestMessage`); with it, the request is
    refused before any decoding, as not the authentication handshake it expects (Spark's own,
    `AuthRpcHandler`; with SASL's fall-back on, SASL's)."""
    conf = spark.sparkContext.getConf()
    assert {key: conf.get(key) for key in REQUIRED} == protected_conf()
    reply = _rpc_reply(conf.get("spark.driver.host"), int(conf.get("spark.driver.port")),
                       b"not a handshake")
    assert b"RequestMessage" not in reply  # never reached the dispatcher
    assert reply == b"" or b"Sasl" in reply or b"auth" in reply.lower(), reply[:300]


@pytest.mark.parametrize("key", SERVED)
def test_settings_that_would_have_the_driver_serve_files_are_refused(tmp_path: Path,
                                                                     key: str) -> None:
    """A reviewer fetched a jar named in `spark.jars` from the driver's port with no
    handshake at all (a stream request: Spark 4.3 serves files before authentication)."""
    settings = Settings(home=tmp_path, engine="spark", spark_conf={key: "/tmp/added.jar"})
    with pytest.raises(SparkRefused, match=f"sets {key}: refused, because Spark's file server"):
        spark_conf(settings)


def test_the_shared_secret_is_never_a_setting_and_no_refusal_repeats_a_value(
        tmp_path: Path) -> None:
    """Settings reach the JVM's command line (`ps`); a refusal names the rule, not the value
    (a reviewer put a secret in the wrong setting and saw it printed)."""
    with pytest.raises(SparkRefused, match=f"sets {SECRET}: refused") as refused:
        spark_conf(Settings(home=tmp_path, spark_conf={SECRET: "s3cret-value"}))
    assert "s3cret-value" not in str(refused.value)
    for key in REQUIRED:
        with pytest.raises(SparkRefused) as refused:
            spark_conf(Settings(home=tmp_path, spark_conf={key: "s3cret-value"}))
        assert "s3cret-value" not in str(refused.value)


def _address(interface: tuple[int, str]) -> str | None:
    """The IPv4 address of a network interface (Linux's SIOCGIFADDR), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            found = fcntl.ioctl(probe.fileno(), 0x8915,
                                struct.pack("256s", interface[1][:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(found[20:24])


def test_a_local_master_s_driver_listens_on_loopback_alone(spark: Any, tmp_path: Path) -> None:
    assert spark_conf(Settings(home=tmp_path, spark_master="local[2]"))[
        "spark.driver.bindAddress"] == "127.0.0.1"
    assert "spark.driver.bindAddress" not in spark_conf(
        Settings(home=tmp_path, spark_master="yarn"))
    conf = spark.sparkContext.getConf()
    port = int(conf.get("spark.driver.port"))
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass  # listening, here
    outward = {a for a in map(_address, socket.if_nameindex()) if a and not a.startswith("127.")}
    if not outward:
        pytest.skip("this host has no address but loopback to try")
    for address in outward:
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=10).close()


def test_a_command_in_another_thread_uses_the_running_session_and_leaves_it(
        spark: Any, tmp_path: Path) -> None:
    """A reviewer ran two commands' sessions on two threads: the second thread found no
    session of its own (Spark's active session is per thread), was handed the first's, and
    stopped it under the first."""
    seen: list[Any] = []
    errors: list[BaseException] = []

    def command() -> None:
        try:
            with session(Settings(home=tmp_path, engine="spark")) as used:
                seen.append(used.sparkContext)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=command)
    worker.start()
    worker.join()
    assert not errors, errors
    assert seen == [spark.sparkContext]
    assert spark.sparkContext._jsc is not None  # still running
    assert spark.range(3).count() == 3


def test_a_running_session_that_serves_files_is_refused() -> None:
    """A reviewer had a jar served through `PYSPARK_SUBMIT_ARGS='--jars ...'` and through
    spark-defaults.conf, neither of them Haven's settings: the running session is checked."""
    for key in SERVED:
        with pytest.raises(SparkRefused, match=f"the running Spark session has {key}: refused"):
            require_protections(_Running({**protected_conf(), key: "/tmp/x.jar"}))


def test_a_local_master_s_driver_may_not_be_bound_elsewhere(tmp_path: Path) -> None:
    for key in ("spark.driver.bindAddress", "spark.driver.host"):
        with pytest.raises(SparkRefused, match=f"sets {key} for a local master: refused"):
            spark_conf(Settings(home=tmp_path, spark_master="local[2]",
                                spark_conf={key: "0.0.0.0"}))
    assert spark_conf(Settings(home=tmp_path, spark_master="yarn",
                               spark_conf={"spark.driver.host": "10.0.0.5"})
                      )["spark.driver.host"] == "10.0.0.5"
