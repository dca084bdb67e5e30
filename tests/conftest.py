"""One broker per test run: tansu on a free loopback port, or KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.demo.broker import EmbeddedBroker


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    embedded: bool

    def client_env(self) -> dict[str, str]:
        """Worker settings for this broker: short group timings (on Kafka, its minimum
        session timeout, 6 s: a killed member leaves the group sooner than the default 45)."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}
        if not self.embedded:
            env |= {
                "KAFKA_SESSION_TIMEOUT_S": "6",
                "KAFKA_HEARTBEAT_INTERVAL_S": "1",
                "KAFKA_REBALANCE_TIMEOUT_S": "20",
            }
        else:
            env |= {
                "KAFKA_SESSION_TIMEOUT_S": "2",
                "KAFKA_HEARTBEAT_INTERVAL_S": "0.3",
                "KAFKA_REBALANCE_TIMEOUT_S": "2",
                # tansu reports end offsets right only for one-record batches (table recovery)
                "KAFKA_PRODUCER_MAX_BATCH_SIZE": "16",
                # tansu holds a fetch for most of its wait, even when data arrives
                "KAFKA_FETCH_MAX_WAIT_MS": "10",
            }
        return env


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Broker(external, embedded=False)
        return
    embedded = EmbeddedBroker().start()
    try:
        yield Broker(embedded.bootstrap, embedded=True)
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for localhost (CA, server and client at once) and its key."""
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return d
