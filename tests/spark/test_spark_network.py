"""Who may talk to a Haven Spark session's processes: only a holder of the application's
secret, over encrypted connections. Every Spark driver listens on a port, even in local mode;
without `spark.authenticate` anyone who reaches it has their messages handled by Spark's RPC
dispatcher (the attack below), and without `spark.network.crypto.enabled` broadcasts (a
landing's keys) and shuffled rows cross between a cluster's machines in clear; with SASL's
fall-back a client whose handshake fails retries over SASL, unencrypted by default."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from governance.settings import Settings
from pipeline.engines.spark_session import (
    REQUIRED,
    SparkRefused,
    protected_conf,
    require_protections,
    spark_conf,
)

# Each network protection, with settings that would undo it.
NETWORK = {"spark.authenticate": ("false", "FALSE", "0"),
           "spark.network.crypto.enabled": ("false", "FALSE", "0"),
           "spark.network.crypto.saslFallback": ("true", "TRUE", "1")}


@pytest.mark.parametrize("key", NETWORK)
def test_haven_sets_authentication_and_network_encryption_and_refuses_undoing_them(
        tmp_path: Path, key: str) -> None:
    required = REQUIRED[key].value
    assert spark_conf(Settings(home=tmp_path))[key] == required
    assert spark_conf(Settings(home=tmp_path, spark_conf={key: required}))[key] == required
    for off in NETWORK[key]:
        settings = Settings(home=tmp_path, engine="spark", spark_conf={key: off})
        with pytest.raises(SparkRefused, match=f"sets {key}={off}: refused"):
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
        with pytest.raises(SparkRefused, match=f"has {key}={undone}.*start the session with "
                                               f"{key}={REQUIRED[key].value}"):
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
