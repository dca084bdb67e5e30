"""Settings from the environment: Kafka TLS / SASL / mutual TLS, refused early when unusable."""

from __future__ import annotations

import asyncio
import gc
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.app import collect_garbage, faust_settings
from worker.errors import SettingsError
from worker.kafka import client_options
from worker.settings import Settings


def test_plaintext_by_default() -> None:
    s = Settings.from_env({})
    assert client_options(s) == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert "broker_credentials" not in faust_settings(s, 8)


@pytest.mark.parametrize(
    ("variable", "faust_key", "default", "value", "refused"),
    [
        ("SECURE_SESSION_STANDBY_REPLICAS", "table_standby_replicas", 1, 0, "-1"),
        # the consumer hands over bounded batches (docs/performance.md)
        ("KAFKA_MAX_POLL_RECORDS", "broker_max_poll_records", 5000, 500, "0"),
        # a partition sends one batch per round trip on a backlog (docs/performance.md)
        ("KAFKA_PRODUCER_MAX_BATCH_SIZE", "producer_max_batch_size", 262_144, 16, "0"),
    ],
)
def test_a_setting_reaches_faust(
    variable: str, faust_key: str, default: int, value: int, refused: str
) -> None:
    assert faust_settings(Settings.from_env({}), 8)[faust_key] == default
    s = Settings.from_env({variable: str(value)})
    assert faust_settings(s, 8)[faust_key] == value
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: refused})


def test_sasl_scram_over_tls() -> None:
    s = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SASL_USERNAME": "svc-secure-session",
            "KAFKA_SASL_PASSWORD": "pa55-w0rd-never-logged",
        }
    )
    options = client_options(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc-secure-session"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname
    creds = faust_settings(s, 8)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert "pa55-w0rd" not in repr(s) + repr(creds)


def test_sasl_password_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    s = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"),
        }
    )
    assert client_options(s)["sasl_plain_password"] == "from-file"
    assert "ssl_context" not in client_options(s)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"},
            "KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_unusable_settings_are_refused_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert err.value.variable == variable


def test_unreadable_pem_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(SettingsError, match="TLS files not usable"):
        Settings.from_env(
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(tmp_path / "ca.pem")}
        )


def test_mutual_tls_presents_the_client_certificate(pki: Path) -> None:
    """A TLS server that requires a client certificate sees the worker's client connect."""
    s = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(pki / "cert.pem"),
            "KAFKA_SSL_CERTFILE": str(pki / "cert.pem"),
            "KAFKA_SSL_KEYFILE": str(pki / "key.pem"),
        }
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "cert.pem"))
    server_tls.load_cert_chain(str(pki / "cert.pem"), str(pki / "key.pem"))
    server_tls.verify_mode = ssl.CERT_REQUIRED
    seen: list[object] = []

    async def main() -> None:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peercert")
            request = await reader.read(4)  # the length of the client's first Kafka request
            seen.append((peer["subject"], len(request)))
            writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        options = client_options(s) | {"bootstrap_servers": f"localhost:{port}"}
        producer = AIOKafkaProducer(**options, request_timeout_ms=2000)
        try:
            with pytest.raises(KafkaError):
                await producer.start()
        finally:
            await producer.stop()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert seen
    subject, request_bytes = seen[0]  # type: ignore[misc]
    assert subject == ((("commonName", "localhost"),),)
    assert request_bytes == 4


def test_listen_addresses_are_settings_and_the_demo_api_stays_on_loopback() -> None:
    from worker.cli import demo_api

    assert Settings.from_env({"SECURE_SESSION_WEB_HOST": "127.0.0.1"}).web_host == "127.0.0.1"
    assert Settings.from_env({}).web_host == "0.0.0.0"  # noqa: S104 - containers
    host = next(p for p in demo_api.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_the_kafka_client_id_is_a_setting_and_the_start_line_says_it() -> None:
    from worker.cli import summary

    settings = Settings.from_env(
        {"KAFKA_CLIENT_ID": "acme-gate", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    )
    assert faust_settings(settings, 4)["broker_client_id"] == "acme-gate"
    assert faust_settings(Settings.from_env({}), 4)["broker_client_id"] == "secure-session"
    line = summary(settings, None)
    assert line.startswith("Kafka k:9092 (PLAINTEXT), group secure-session, client id acme-gate;")
    assert "store memory" in line and "in=bot.messages.inbound" in line


def test_faust_checks_table_offsets_against_the_changelog_only_for_rocksdb() -> None:
    """The memory store has no local files for Faust's recovery consistency check to guard,
    and on tansu the check stopped workers (tests/integration/test_restart_and_config.py)."""
    import inspect

    import faust
    import faust.tables.recovery

    for store, checked in (("memory", False), ("rocksdb", True)):
        conf = faust_settings(Settings.from_env({"SECURE_SESSION_STORE": store}), 8)
        assert conf["recovery_consistency_check"] is checked
        app = faust.App("test-consistency", **{**conf, "store": "memory://"})
        assert app.conf.recovery_consistency_check is checked
    # and its recovery still reads it (an upgrade that drops it fails here, by name)
    assert "conf.recovery_consistency_check" in inspect.getsource(faust.tables.recovery)


async def test_the_collector_runs_on_a_clock_and_takes_at_most_its_share() -> None:
    """Automatic collection is off while it runs; a pass every second, and after a long
    pass (200 ms) the next one comes 20 times its length later; on, again, when it ends."""
    now = [0.0]
    lengths = iter([0.01, 0.2, 0.01])
    sleeps: list[float] = []

    def collect() -> None:
        assert not gc.isenabled()
        now[0] += next(lengths)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == 3:
            raise asyncio.CancelledError

    try:
        with pytest.raises(asyncio.CancelledError):
            await collect_garbage(collect=collect, clock=lambda: now[0], sleep=sleep)
    finally:
        gc.unfreeze()
    assert sleeps == [1.0, pytest.approx(4.0), 1.0]
    assert gc.isenabled()
