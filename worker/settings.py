"""Worker settings: one frozen object, read once from the environment by the entry point."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from worker.errors import SettingsError
from worker.vault import check_ref

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names (the defaults of docs/contract.md)."""

    inbound: str = "bot.messages.inbound"
    allowed: str = "bot.messages.allowed"
    blocked: str = "bot.messages.blocked"
    audit: str = "secure-session.audit"
    bots: str = "secure-session.bots"
    connectors: str = "secure-session.connectors"
    revocations: str = "secure-session.revocations"


@dataclass(frozen=True, slots=True)
class KafkaTuning:
    """Client timings; `None` keeps the Faust / aiokafka default (right for Apache Kafka).

    Tests and dev mode set short group timings and one-record producer batches for tansu
    (see docs/operations.md, "Running on tansu").
    """

    session_timeout_s: float | None = None
    heartbeat_interval_s: float | None = None
    rebalance_timeout_s: float | None = None
    producer_max_batch_size: int = 262_144
    """Bytes a producer batch may hold (Faust's default is 16,384): on a backlog a partition
    sends one batch per round trip, and 16 KB held the worker back (docs/performance.md)."""
    producer_linger_ms: int = 5
    """How long the producer waits to fill a batch (Kafka 4's default; fewer, larger requests)."""
    fetch_max_wait_ms: int = 500
    """How long a fetch may wait for data (Kafka's default; Faust alone would use 1500)."""
    max_poll_records: int = 5000
    """Records the consumer hands over at a time: aiokafka unpacks them in one go, and
    unbounded that is a whole fetch (up to 4 MB a partition), stalling the event loop."""
    max_record_bytes: int = 1_000_000
    """The largest record the worker writes (key and value): under Kafka's default
    `message.max.bytes` (1,048,588) with room for headers. A larger decision record is cut
    (blocked: the event not echoed) or, for an allowed record, blocked `invalid_event`."""


def _fingerprint_key(env: Mapping[str, str], r: _Reader) -> bytes | None:
    """SECURE_SESSION_FINGERPRINT_KEY (the value) or SECURE_SESSION_FINGERPRINT_KEY_FILE."""
    for name in ("SECURE_SESSION_FINGERPRINT_KEY", "SECURE_SESSION_FINGERPRINT_KEY_FILE"):
        raw = env.get(name, "")
        r.seen.append((name, raw, "environment") if raw else (name, "", "default"))
    value = env.get("SECURE_SESSION_FINGERPRINT_KEY")
    name = "SECURE_SESSION_FINGERPRINT_KEY"
    if value is None and (path := env.get("SECURE_SESSION_FINGERPRINT_KEY_FILE")):
        name = "SECURE_SESSION_FINGERPRINT_KEY_FILE"
        try:
            value = Path(path).read_text(encoding="utf-8").rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(name, f"cannot be read ({exc.__class__.__name__})") from None
    if value is None:
        return None
    if len(value.encode()) < 32:
        raise SettingsError(name, "must be at least 32 bytes (the value is not shown)")
    return value.encode()


PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How the worker's Kafka clients authenticate and encrypt (Kafka's own option names).

    TLS (`SSL`, `SASL_SSL`) verifies the broker against `ssl_cafile` (or the system's CAs);
    `ssl_certfile` + `ssl_keyfile` add a client certificate (mutual TLS).
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the broker connection (None without TLS)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=None if self.ssl_cafile is None else str(self.ssl_cafile)
        )
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            context.load_cert_chain(
                str(self.ssl_certfile),
                None if self.ssl_keyfile is None else str(self.ssl_keyfile),
                self.ssl_key_password,
            )
        return context

    def client_options(self) -> dict[str, object]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        options: dict[str, object] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the worker reads from its environment."""

    bootstrap_servers: str = "localhost:9092"
    app_id: str = "secure-session"
    topics: Topics = field(default_factory=Topics)
    config_file: Path | None = None
    secrets_dir: Path | None = None
    allow_insecure_endpoints: bool = False
    endpoint_allowlist: tuple[str, ...] = ()
    """`scheme://host[:port]` entries connectors may call (empty: any public https host)."""
    partitions: int = 8
    replication_factor: int = 1
    standby_replicas: int = 1
    """Warm copies of each session-table partition kept on other workers (Faust's default)."""
    data_dir: Path = Path("secure-session-data")
    web_enabled: bool = True
    web_port: int = 6066
    web_host: str = "0.0.0.0"  # noqa: S104 - every interface: a container's port mapping
    """Address the metrics and health server listens on (127.0.0.1: this host only)."""
    max_held_messages: int = 10_000
    max_concurrent_calls: int = 100
    fingerprint_key: bytes | None = None
    """Keys the fingerprints of credentials in blocked and audit records and in the session
    state (HMAC-SHA256); None: an unkeyed default (warned about at start)."""
    max_calls_per_org: int = 25
    """Calls one organization may have in flight: a slow or flooded API of one tenant holds
    at most this many of `max_concurrent_calls`."""
    max_calls_per_connector: int = 25
    max_queued_calls: int = 1000
    """Calls that may wait for a connector's slot; beyond, a call is `unavailable` at once."""
    http_retries: int = 2
    http_backoff_s: float = 0.2
    http_connect_timeout_s: float = 2.0
    circuit_failures: int = 5
    """Calls in a row without an answer after which a connector's circuit opens."""
    circuit_cooldown_s: float = 10.0
    log_level: str = "info"
    store: str = "memory"
    """Session table store: `memory`, or `rocksdb` (on disk in data_dir; needs rocksdict)."""
    expiry_multiple: float = 2.0
    expiry_min_s: float = 60.0
    sweep_every_s: float = 60.0
    shutdown_deadline_s: float = 8.0
    """SIGTERM to exit, whatever is in flight: validations still running after half of it
    are abandoned (their records left for the next owner), and at the deadline the process
    exits. Kept under the group's rebalance timeout (Faust's default: 60 s)."""
    stall_warning_s: float = 300.0
    """A partition with records waiting that hands none over for this long is logged as
    stalled (Faust's `stream_processing_timeout`, fed by the worker's intake)."""
    audit_key_ref: str | None = None
    """The vault reference of the key that chains and signs audit events (None: unsigned)."""
    audit_verify_key_refs: tuple[str, ...] = ()
    """Earlier keys `audit verify` still accepts (key rotation); the worker never signs
    with them."""
    client_id: str = "secure-session"
    """The Kafka client id the broker sees (`KAFKA_CLIENT_ID`; Faust alone says faust-0.15.3)."""
    origins: tuple[tuple[str, str, str], ...] = field(default=(), compare=False, repr=False)
    """Where each setting came from (`secure-session config show`)."""
    kafka: KafkaTuning = field(default_factory=KafkaTuning)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    create_topics: bool = True
    """Create missing topics at start; when off, a missing topic stops the worker with a list."""
    log_format: str = "text"
    """`text` (one readable line) or `json` (one object a line, with session/bot/partition)."""
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The environment the settings were read from (secrets may come from it)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: `os.environ`); raise SettingsError on bad values."""
        env = dict(os.environ if env is None else env)
        d = cls()
        r = _Reader(env)
        t = d.topics
        return cls(
            bootstrap_servers=r.get("KAFKA_BOOTSTRAP_SERVERS", str, d.bootstrap_servers),
            app_id=r.get("SECURE_SESSION_APP_ID", str, d.app_id),
            topics=Topics(
                inbound=r.get("SECURE_SESSION_TOPIC_INBOUND", str, t.inbound),
                allowed=r.get("SECURE_SESSION_TOPIC_ALLOWED", str, t.allowed),
                blocked=r.get("SECURE_SESSION_TOPIC_BLOCKED", str, t.blocked),
                audit=r.get("SECURE_SESSION_TOPIC_AUDIT", str, t.audit),
                bots=r.get("SECURE_SESSION_TOPIC_BOTS", str, t.bots),
                connectors=r.get("SECURE_SESSION_TOPIC_CONNECTORS", str, t.connectors),
                revocations=r.get("SECURE_SESSION_TOPIC_REVOCATIONS", str, t.revocations),
            ),
            config_file=r.get("SECURE_SESSION_CONFIG", Path, None),
            secrets_dir=r.get("SECURE_SESSION_SECRETS_DIR", Path, None),
            allow_insecure_endpoints=r.get("SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS", _bool, False),
            endpoint_allowlist=r.get("SECURE_SESSION_ENDPOINT_ALLOWLIST", _allowlist, ()),
            partitions=r.get("SECURE_SESSION_PARTITIONS", _positive(int), d.partitions),
            replication_factor=r.get(
                "SECURE_SESSION_REPLICATION_FACTOR", _positive(int), d.replication_factor
            ),
            standby_replicas=r.get(
                "SECURE_SESSION_STANDBY_REPLICAS", _non_negative(int), d.standby_replicas
            ),
            data_dir=r.get("SECURE_SESSION_DATA_DIR", Path, d.data_dir),
            web_enabled=r.get("SECURE_SESSION_WEB_ENABLED", _bool, d.web_enabled),
            web_port=r.get("SECURE_SESSION_WEB_PORT", _positive(int), d.web_port),
            web_host=r.get("SECURE_SESSION_WEB_HOST", str, d.web_host),
            max_held_messages=r.get(
                "SECURE_SESSION_MAX_HELD_MESSAGES", _positive(int), d.max_held_messages
            ),
            max_concurrent_calls=r.get(
                "SECURE_SESSION_MAX_CONCURRENT_CALLS", _positive(int), d.max_concurrent_calls
            ),
            fingerprint_key=_fingerprint_key(env, r),
            max_calls_per_org=r.get(
                "SECURE_SESSION_MAX_CALLS_PER_ORG", _positive(int), d.max_calls_per_org
            ),
            max_calls_per_connector=r.get(
                "SECURE_SESSION_MAX_CALLS_PER_CONNECTOR", _positive(int), d.max_calls_per_connector
            ),
            max_queued_calls=r.get(
                "SECURE_SESSION_MAX_QUEUED_CALLS", _positive(int), d.max_queued_calls
            ),
            http_retries=r.get("SECURE_SESSION_HTTP_RETRIES", _non_negative(int), d.http_retries),
            http_backoff_s=r.get(
                "SECURE_SESSION_HTTP_BACKOFF_S", _non_negative(float), d.http_backoff_s
            ),
            http_connect_timeout_s=r.get(
                "SECURE_SESSION_HTTP_CONNECT_TIMEOUT_S", _positive(float), d.http_connect_timeout_s
            ),
            circuit_failures=r.get(
                "SECURE_SESSION_CIRCUIT_FAILURES", _positive(int), d.circuit_failures
            ),
            circuit_cooldown_s=r.get(
                "SECURE_SESSION_CIRCUIT_COOLDOWN_S", _non_negative(float), d.circuit_cooldown_s
            ),
            log_level=r.get("SECURE_SESSION_LOG_LEVEL", _one_of(*LOG_LEVELS), d.log_level),
            log_format=r.get("SECURE_SESSION_LOG_FORMAT", _one_of("text", "json"), d.log_format),
            create_topics=r.get("SECURE_SESSION_CREATE_TOPICS", _bool, d.create_topics),
            store=r.get("SECURE_SESSION_STORE", _one_of("memory", "rocksdb"), d.store),
            expiry_multiple=r.get(
                "SECURE_SESSION_EXPIRY_MULTIPLE", _positive(float), d.expiry_multiple
            ),
            expiry_min_s=r.get("SECURE_SESSION_EXPIRY_MIN_S", _non_negative(float), d.expiry_min_s),
            sweep_every_s=r.get("SECURE_SESSION_SWEEP_EVERY_S", _positive(float), d.sweep_every_s),
            shutdown_deadline_s=r.get(
                "SECURE_SESSION_SHUTDOWN_DEADLINE_S", _positive(float), d.shutdown_deadline_s
            ),
            stall_warning_s=r.get(
                "SECURE_SESSION_STALL_WARNING_S", _positive(float), d.stall_warning_s
            ),
            kafka=KafkaTuning(
                session_timeout_s=r.get("KAFKA_SESSION_TIMEOUT_S", _positive(float), None),
                heartbeat_interval_s=r.get("KAFKA_HEARTBEAT_INTERVAL_S", _positive(float), None),
                rebalance_timeout_s=r.get("KAFKA_REBALANCE_TIMEOUT_S", _positive(float), None),
                producer_max_batch_size=r.get(
                    "KAFKA_PRODUCER_MAX_BATCH_SIZE", _positive(int), 262_144
                ),
                fetch_max_wait_ms=r.get("KAFKA_FETCH_MAX_WAIT_MS", _positive(int), 500),
                max_record_bytes=r.get("KAFKA_MAX_RECORD_BYTES", _positive(int), 1_000_000),
                producer_linger_ms=r.get("KAFKA_PRODUCER_LINGER_MS", _non_negative(int), 5),
                max_poll_records=r.get("KAFKA_MAX_POLL_RECORDS", _positive(int), 5000),
            ),
            security=_security(r),
            client_id=r.get("KAFKA_CLIENT_ID", str, d.client_id),
            audit_key_ref=r.get("SECURE_SESSION_AUDIT_KEY_REF", _vault_ref, None),
            audit_verify_key_refs=r.get(
                "SECURE_SESSION_AUDIT_VERIFY_KEY_REFS", _vault_refs, d.audit_verify_key_refs
            ),
            environ=env,
            origins=tuple(r.seen),  # last: every read above is in it
        )

    @property
    def settle_grace_s(self) -> float:
        """How long records taken may still be decided once their partitions are revoked or
        the worker stops: half the shutdown deadline, and at a rebalance at most half the
        group's rebalance timeout (the group waits for this member meanwhile)."""
        grace = self.shutdown_deadline_s / 2
        rebalance = self.kafka.rebalance_timeout_s
        return grace if rebalance is None else min(grace, rebalance / 2)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.seen: list[tuple[str, str, str]] = []
        """(variable, value as text, "environment" or "default"), in reading order."""

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(name, "").strip()
        self.seen.append(
            (name, raw, "environment")
            if raw
            else (name, "" if default is None else str(default), "default")
        )
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise SettingsError(name, f"{raw!r} is not valid: {exc}") from exc


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if value <= 0:  # type: ignore[operator]
            raise ValueError("must be greater than 0")
        return value

    return parse


def _non_negative(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if value < 0:  # type: ignore[operator]
            raise ValueError("must not be negative")
        return value

    return parse


def _one_of(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ValueError("no such file")
    return path


def _security(r: _Reader) -> KafkaSecurity:
    protocol = r.get("KAFKA_SECURITY_PROTOCOL", _one_of(*PROTOCOLS, upper=True), "PLAINTEXT")
    password = r.get("KAFKA_SASL_PASSWORD", str, None)
    password_file = r.get("KAFKA_SASL_PASSWORD_FILE", _file, None)
    if password_file is not None:
        password = password_file.read_text().rstrip("\n")
    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=r.get("KAFKA_SASL_MECHANISM", _one_of(*MECHANISMS, upper=True), "PLAIN"),
        sasl_username=r.get("KAFKA_SASL_USERNAME", str, None),
        sasl_password=password,
        ssl_cafile=r.get("KAFKA_SSL_CAFILE", _file, None),
        ssl_certfile=r.get("KAFKA_SSL_CERTFILE", _file, None),
        ssl_keyfile=r.get("KAFKA_SSL_KEYFILE", _file, None),
        ssl_key_password=r.get("KAFKA_SSL_KEY_PASSWORD", str, None),
        ssl_check_hostname=r.get("KAFKA_SSL_CHECK_HOSTNAME", _bool, True),
    )
    if security.sasl and not (security.sasl_username and security.sasl_password):
        missing = "KAFKA_SASL_USERNAME" if not security.sasl_username else "KAFKA_SASL_PASSWORD"
        raise SettingsError(missing, f"required when KAFKA_SECURITY_PROTOCOL is {protocol}")
    if security.ssl_keyfile is not None and security.ssl_certfile is None:
        raise SettingsError("KAFKA_SSL_CERTFILE", "required with KAFKA_SSL_KEYFILE (mutual TLS)")
    try:
        security.ssl_context()  # unreadable PEM files are refused at start, not at connect
    except (ssl.SSLError, OSError) as exc:
        # the reason only: a wrong key password must not end up in a log line
        raise SettingsError(
            "KAFKA_SSL_*",
            f"TLS files not usable: {exc.__class__.__name__}: "
            f"{getattr(exc, 'reason', None) or exc.strerror or 'invalid'}",
        ) from None
    return security


def _vault_ref(raw: str) -> str:
    why = check_ref(raw)
    if why is not None:
        raise ValueError(why)
    return raw


def _vault_refs(raw: str) -> tuple[str, ...]:
    return tuple(_vault_ref(part.strip()) for part in raw.split(",") if part.strip())


def _allowlist(raw: str) -> tuple[str, ...]:
    from worker.validators.guard import Allowed

    entries = tuple(e.strip() for e in raw.split(",") if e.strip())
    for entry in entries:
        Allowed.parse(entry)  # ValueError names the entry
    return entries
