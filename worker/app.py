"""`create_app(settings, …) -> faust.App`: topics, the session table, the agent, lifecycles."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from worker import faust_tuning, store
from worker.audit import Sealer, signing_key
from worker.config import Registry
from worker.events import configure_fingerprints
from worker.expiry import sweep
from worker.kafka import client_options, follow_config, partition_for
from worker.metrics import Metrics
from worker.outbox import Outbox
from worker.pipeline import Pipeline
from worker.settings import Settings
from worker.validators.auth import ConnectorAuth
from worker.validators.baas import BaasValidator
from worker.validators.calls import ConnectorCalls, TenantLimits
from worker.validators.circuit import CircuitBreaker
from worker.validators.guard import Allowed, EndpointGuard
from worker.validators.http import Http, new_transport
from worker.validators.introspection import IntrospectionValidator
from worker.validators.jwt import JwtValidator
from worker.vault import Vault

log = logging.getLogger(__name__)

KAFKA_LOST_AFTER_S = 2.5
"""No broker connection for this long is a lost connection (logged, metric 0)."""
LAG_EVERY_S = 5
"""How often the group's inbound lag is read (two requests to the broker)."""
GROUP_WAIT_NOTICE_S = 5.0
"""A rebalance longer than this is explained in the log (every 15 s)."""
GC_EVERY_S = 1.0
"""The garbage collector's pass runs at most this often (see `collect_garbage`)..."""
GC_MAX_SHARE = 0.05
"""...and takes at most this share of the time: after a pass of d seconds, the next one
comes d / GC_MAX_SHARE later at the soonest."""


async def collect_garbage(
    every_s: float = GC_EVERY_S,
    max_share: float = GC_MAX_SHARE,
    *,
    collect: Callable[[], Any] = gc.collect,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run the garbage collector on a clock, not every N allocations (until cancelled).

    Reference counting frees a decided message at once; the collector only finds cycles.
    Run by allocations, it walked the messages held for validations again and again
    while they waited (docs/performance.md, the chatty run). Here one full pass a second,
    at most 5% of the time, frees cycles within seconds. What exists when it starts
    (Faust, the modules, the configuration) is frozen out of every pass."""
    gc.freeze()
    gc.disable()
    try:
        while True:
            started = clock()
            collect()
            await sleep(max(every_s, (clock() - started) / max_share))
    finally:
        gc.enable()


def faust_settings(settings: Settings, partitions: int) -> dict[str, Any]:
    """Faust's settings for this worker: Kafka defaults unless the environment tunes them."""
    conf: dict[str, Any] = {
        "broker": [f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
        "store": f"{settings.store}://",
        "processing_guarantee": "at_least_once",
        "topic_partitions": partitions,
        "topic_replication_factor": settings.replication_factor,
        "table_standby_replicas": settings.standby_replicas,
        "datadir": str(settings.data_dir),
        "web_enabled": False,  # the worker serves /metrics and health itself (metrics.py)
        "consumer_auto_offset_reset": "earliest",
        "topic_allow_declare": settings.create_topics,
        "broker_client_id": settings.client_id,
        # records held for a validation are finished (not dropped) on rebalance and stop
        "stream_wait_empty": True,
        # Faust's livelock check: the drain loop feeds it (worker/faust_tuning.py)
        "stream_processing_timeout": settings.stall_warning_s,
        # Faust's check that a table partition's offset is not past the changelog's end
        # guards local files (RocksDB) against a topic recreated under them. The memory
        # store has none, and the check only fired where a broker reports end offsets
        # short of its last records (tansu: its last batch's base + 1), stopping the worker
        # at the next rebalance once a standby had read to the end
        "recovery_consistency_check": settings.store != "memory",
    }
    sec = settings.security
    if sec.sasl:
        conf["broker_credentials"] = faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password,
            ssl_context=sec.ssl_context(),
            mechanism=sec.sasl_mechanism,
        )
    elif sec.tls:
        conf["broker_credentials"] = faust.SSLCredentials(sec.ssl_context())
    k = settings.kafka
    if k.session_timeout_s is not None:
        conf["broker_session_timeout"] = k.session_timeout_s
    if k.heartbeat_interval_s is not None:
        conf["broker_heartbeat_interval"] = k.heartbeat_interval_s
    if k.rebalance_timeout_s is not None:
        conf["broker_rebalance_timeout"] = k.rebalance_timeout_s
    conf["producer_linger"] = k.producer_linger_ms / 1000
    conf["broker_max_poll_records"] = k.max_poll_records
    conf["producer_max_batch_size"] = k.producer_max_batch_size
    return conf


def _store_settings(settings: Settings) -> dict[str, Any]:
    """The table's store: the memory store loads its partitions itself (worker/store.py)."""
    if settings.store != "memory":
        return {}  # Faust's rocksdb store, from the app's `store` setting
    client = client_options(settings)
    source = settings.topics.inbound
    return {"store": f"{store.SCHEME}://local", "options": {"client": client, "source": source}}


def create_app(
    settings: Settings, *, partitions: Mapping[str, int], registry: Registry
) -> faust.App:
    """The worker's Faust app; `partitions`: the data topics' counts (kafka.ensure_topics)."""
    t = settings.topics
    if settings.fingerprint_key is not None:
        configure_fingerprints(settings.fingerprint_key)
    else:
        log.warning(
            "SECURE_SESSION_FINGERPRINT_KEY is not set: credential fingerprints in blocked and "
            "audit records are unkeyed, and a short credential (a PIN, a one-time code) can be "
            "guessed from them offline; set a key of at least 32 bytes (docs/threat-model.md)"
        )
    inbound_partitions = partitions[t.inbound]
    app = faust.App(settings.app_id, **faust_settings(settings, inbound_partitions))
    faust_tuning.install(app, fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms)
    raw = faust.Schema(  # type: ignore[var-annotated]
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    inbound = app.topic(t.inbound, schema=raw, partitions=inbound_partitions)
    # key: organization/bot/session; value: decide.SessionState.encode()
    sessions = app.Table(
        "sessions",
        default=None,
        partitions=inbound_partitions,
        key_type=bytes,
        value_type=bytes,
        **_store_settings(settings),
    )
    transport = new_transport(
        settings.max_concurrent_calls, public_only=not settings.allow_insecure_endpoints
    )
    http = Http(
        transport,
        retries=settings.http_retries,
        backoff_s=settings.http_backoff_s,
        connect_timeout_s=settings.http_connect_timeout_s,
        max_concurrent=settings.max_concurrent_calls,
        guard=EndpointGuard(
            allow_insecure=settings.allow_insecure_endpoints,
            allowlist=tuple(Allowed.parse(e) for e in settings.endpoint_allowlist),
        ),
    )
    vault = Vault(settings.secrets_dir, settings.environ)
    audit_key = signing_key(settings)
    breaker = CircuitBreaker(settings.circuit_failures, settings.circuit_cooldown_s)
    limits = TenantLimits(
        settings.max_calls_per_org, settings.max_calls_per_connector, settings.max_queued_calls
    )
    calls = ConnectorCalls(http, ConnectorAuth(http, vault), breaker, limits)

    def delivery_failed(exc: BaseException) -> None:
        # at least once: never let a commit pass a record that was not written
        log.critical("producing a decision failed: %r; stopping the worker", exc)
        app.loop.create_task(app.crash(exc))

    metrics = Metrics()
    outbox = Outbox(
        lambda: faust_tuning.kafka_producer(app), delivery_failed, on_delivered=metrics.delivered
    )
    faust_tuning.before_flush(app, outbox.flush)

    def send(
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
        since: float | None = None,
    ) -> None:
        count = partitions[topic]
        partition = None if key is None else partition_for(key, count)
        outbox.add(topic, partition, count, key, value, headers, since)

    def forget(key: bytes, partition: int | None) -> None:
        """Delete a session's state here, and on its changelog partition if this worker
        owns it (the owner of another partition may hold a newer state there)."""
        sessions.data.pop(key, None)
        if partition is None:  # a state of version 1: where it was loaded from, else its
            # session id's partition (where a bot keying by session id sends its records)
            partition_of = getattr(sessions.data, "partition_of", lambda _key: None)
            partition = partition_of(key)
            if partition is None:
                partition = partition_for(key.split(b"/", 2)[2], inbound_partitions)
        if TP(t.inbound, partition) in app.consumer.assignment():
            sessions.send_changelog(partition, key, None, value_serializer="raw")

    pipeline = Pipeline(
        registry=registry,
        baas=BaasValidator(calls, vault),
        introspection=IntrospectionValidator(calls, vault),
        jwt=JwtValidator(vault),
        table=sessions,
        reads=sessions.data,
        send=send,
        # the consumer's own ack: Faust's takes a lock and a Message (worker/faust_tuning.py)
        ack=lambda tp, offset: app.consumer.ack_inbound(tp, offset),  # type: ignore[attr-defined]
        topics=t,
        max_held=settings.max_held_messages,
        max_record_bytes=settings.kafka.max_record_bytes,
        metrics=metrics,
        run_as=lambda origin, fn, *args: faust_tuning.run_as_current(app, origin, fn, *args),
        forget=forget,
        sealer=None if audit_key is None else Sealer(audit_key),
    )
    pipeline.metrics.watch(
        circuits=breaker.open_states,
        lag=lambda: group_lag,
        bots=lambda: [(b.organization, b.name, b.secure) for b in list(registry.bots.values())],
    )
    config_ready = asyncio.Event()

    @app.task  # type: ignore[untyped-decorator]
    async def configuration() -> None:
        try:
            await follow_config(settings, registry, config_ready)
        finally:
            await transport.aclose()

    @app.task  # type: ignore[untyped-decorator]
    async def watch_event_loop() -> None:
        await pipeline.metrics.watch_loop()

    @app.task  # type: ignore[untyped-decorator]
    async def garbage_collection() -> None:
        await config_ready.wait()
        await collect_garbage()

    async def decide(tp: TP, record: ConsumerRecord[bytes, bytes]) -> None:
        if not config_ready.is_set():
            await config_ready.wait()
        await pipeline.submit(record.key, record.value, tp, record.offset, record)
        # back-pressure between records, never inside a decision (see worker/pipeline.py)
        if outbox.full:
            await outbox.room()

    def settle(partitions: set[TP] | None, why: str) -> Any:
        return pipeline.settle(partitions, settings.settle_grace_s, why)

    faust_tuning.route(app, inbound, decide, settle)

    @app.timer(settings.sweep_every_s)  # type: ignore[untyped-decorator]
    async def expire_idle_sessions() -> None:
        expired = await sweep(
            sessions.data,
            registry,
            int(time.time() * 1000),
            multiple=settings.expiry_multiple,
            minimum_s=settings.expiry_min_s,
            tombstone=forget,
        )
        if expired:
            log.info("expired %d idle sessions", expired)

    down_since: list[float] = []  # no connection since; and when that was said (lost)

    def watch_kafka() -> None:
        """Lost: no broker connection for KAFKA_LOST_AFTER_S in a row (a client opening and
        closing connections, as at a join, has none for a moment: that is not an outage)."""
        connected = faust_tuning.kafka_connected(app)
        if connected is None:
            return
        now = time.monotonic()
        if connected:
            pipeline.metrics.kafka_connected.set(1)
            if down_since and len(down_since) == 2:  # it was said to be lost
                log.warning("Kafka connection back after %.1f s", now - down_since[0])
            down_since.clear()
            return
        if not down_since:
            down_since.append(now)
        elif len(down_since) == 1 and now - down_since[0] >= KAFKA_LOST_AFTER_S:
            down_since.append(now)
            pipeline.metrics.kafka_connected.set(0)
            log.warning("Kafka connection lost: retrying; inbound messages wait in Kafka")

    group_lag: dict[int, int] = {}  # the group's inbound lag by partition (every LAG_EVERY_S)
    settling: list[float] = []  # since when the group has been rebalancing; last said at
    assigned: list[bool] = []  # once this worker was given its first assignment

    async def on_assigned(_app: Any, assigned_tps: Any = None, **_: Any) -> None:
        assigned[:] = [True]

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

    async def watch_group() -> None:
        # started by the CLI on the worker's loop: Faust starts its own tasks and timers only
        # once the group is joined, which is the wait to explain
        ticks = 0
        while not app.should_stop:
            await asyncio.sleep(1.0)
            group_wait_notice()
            watch_kafka()  # from the start: during a join too (Faust's timers wait for it)
            ticks += 1
            if ticks % LAG_EVERY_S == 1:
                lag = await faust_tuning.group_lag(app, t.inbound)
                if lag is not None:
                    group_lag.clear()
                    group_lag.update(lag)

    def group_wait_notice() -> None:
        """Say what a long join waits for: the log is otherwise silent after `(Re-)joining
        group`, for up to a session timeout (Kafka's default: 45 s)."""
        now = time.monotonic()
        if assigned and not app.rebalancing:
            if settling and now - settling[0] >= GROUP_WAIT_NOTICE_S:
                log.info(
                    "consumer group %s settled after %.0f s", settings.app_id, now - settling[0]
                )
            settling.clear()
            return
        if not settling:
            settling[:] = [now, 0.0]
        elif now - settling[0] >= GROUP_WAIT_NOTICE_S and now - settling[1] >= 15:
            settling[1] = now
            log.info(
                "waiting %.0f s for consumer group %s to settle: Kafka waits for every member "
                "to rejoin, and for one that stopped without leaving (killed) until its session "
                "timeout passes (%.0f s, KAFKA_SESSION_TIMEOUT_S); shorter on a test broker: "
                "docs/operations.md",
                now - settling[0],
                settings.app_id,
                app.conf.broker_session_timeout,
            )

    app.watch_group = watch_group  # type: ignore[attr-defined]
    app.pipeline = pipeline  # type: ignore[attr-defined]
    app.ready = config_ready.is_set  # type: ignore[attr-defined]
    return app
