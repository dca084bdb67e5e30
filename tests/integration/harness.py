"""Drives real workers (subprocesses) through real topics, with a real Authorization API.

Everything asynchronous (the API server, Kafka clients, the output collector) runs on
one event loop in a background thread; tests are plain functions that wait on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.conftest import Broker
from worker.demo.authapi import AuthorizationAPI, RunningAPI
from worker.demo.broker import stop_process

T = TypeVar("T")
SCHEMAS = Path(__file__).parents[2] / "schemas"
AUDIT_KEY = "audit-key-for-tests-0123456789abcdef-xyz"
API_KEY = "test-api-key-7f3a9c"  # must never show up in outputs or logs


def _schema(name: str) -> jsonschema.protocols.Validator:
    data = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return jsonschema.Draft202012Validator(data)


@dataclass
class Out:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    doc: dict[str, Any] | None = None

    @property
    def header_reason(self) -> str:
        return self.headers["secure-session-reason"].decode()


@dataclass
class Harness:
    broker: Broker
    tmp: Path
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    api: AuthorizationAPI = field(default_factory=lambda: AuthorizationAPI(api_key=API_KEY))
    outputs: list[Out] = field(default_factory=list)
    schema_errors: list[str] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    collector_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.topics = {
            k: f"{k}.{self.name}"
            for k in ("inbound", "allowed", "blocked", "audit", "bots", "connectors", "revocations")
        }
        self.app_id = f"ss-test-{self.name}"
        self.secrets = self.tmp / "secrets"
        (self.secrets / "acme").mkdir(parents=True)
        (self.secrets / "acme" / "api-key").write_text(API_KEY + "\n")
        self.logs: list[Path] = []
        self.workers_by_start: list[subprocess.Popen[bytes]] = []  # beside `logs`
        self._validators = {"blocked": _schema("blocked-record"), "audit": _schema("audit-event")}

    # ------------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_async(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the harness loop; returns at once."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def start(self) -> Harness:
        self.server = self.run(RunningAPI(self.api).start())
        self.producer = self.run(self._producer())
        self.run(self._create_topics())
        self._collector = asyncio.run_coroutine_threadsafe(self._collect(), self.loop)
        return self

    async def _producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=0)
        await producer.start()
        return producer

    async def _create_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(self.topics[k], 4, 1) for k in ("inbound", "allowed", "blocked", "audit")]
            )
        finally:
            await admin.close()

    async def write_states(
        self,
        con: dict[str, Any],
        sessions: int,
        bot: str = "secure",
        flush_every: int = 2000,
    ) -> None:
        """A valid state for sessions s0 .. s<sessions - 1> (tokens tok-<n>) of `bot`, in
        their partitions of the table's changelog, in the worker's format, before any
        worker starts, in batches as a busy worker writes them (on tansu a partition's end
        offset is then its last batch's base offset + 1, short of its last records);
        flushed every `flush_every` records."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from worker.config import parse_connector
        from worker.decide import SessionState
        from worker.events import DEFAULT_FINGERPRINT_KEY, configure_fingerprints, parse_inbound
        from worker.kafka import partition_for
        from worker.validators.baas import BaasValidator

        topic = f"{self.app_id}-sessions-changelog"
        partitions = int(self.env()["SECURE_SESSION_PARTITIONS"])
        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
            )
        finally:
            await admin.close()
        connector_ = parse_connector(con, "write_states")
        configure_fingerprints(self.env()["SECURE_SESSION_FINGERPRINT_KEY"].encode())
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=5)
        await producer.start()
        try:
            now_ms = int(time.time() * 1000)
            futures = []
            for s in range(sessions):
                doc = event(f"s{s}", "m0", f"tok-{s}", bot=bot)
                call = BaasValidator.prepare(None, connector_, parse_inbound(orjson.dumps(doc)))  # type: ignore[arg-type]
                partition = partition_for(f"s{s}".encode(), partitions)
                state = SessionState(now_ms, True, call.fingerprint, None, None, partition)
                futures.append(
                    await producer.send(
                        topic, state.encode(), key=f"acme/{bot}/s{s}".encode(), partition=partition
                    )
                )
                if len(futures) >= flush_every:
                    await asyncio.gather(*futures)
                    futures.clear()
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
            configure_fingerprints(DEFAULT_FINGERPRINT_KEY)

    async def _collect(self) -> None:
        names = {self.topics[k]: k for k in ("allowed", "blocked", "audit")}
        while True:
            consumer = AIOKafkaConsumer(
                *names,
                bootstrap_servers=self.broker.bootstrap,
                auto_offset_reset="earliest",
                group_id=None,
                metadata_max_age_ms=1000,
            )
            try:
                await consumer.start()
                break
            except KafkaError as exc:  # the broker is away (fault tests): try again
                self.collector_errors.append(repr(exc))
                await consumer.stop()
                await asyncio.sleep(0.5)
        try:
            while True:
                try:
                    batch = await consumer.getmany(timeout_ms=100)
                except KafkaError as exc:  # the broker went away (fault tests): read on
                    self.collector_errors.append(repr(exc))
                    await asyncio.sleep(0.2)
                    continue
                for tp, msgs in batch.items():
                    kind = names[tp.topic]
                    for m in msgs:
                        out = Out(kind, m.key, m.value, {k: v for k, v in m.headers})
                        if kind != "allowed":
                            out.doc = orjson.loads(m.value)
                            for err in self._validators[kind].iter_errors(out.doc):
                                self.schema_errors.append(f"{kind}: {err.message}")
                        self.outputs.append(out)
        finally:
            await consumer.stop()

    def stop(self) -> None:
        try:
            for proc in self.workers:
                stop_process(proc)
            if hasattr(self, "_collector"):
                self._collector.cancel()
                time.sleep(0.3)  # let the collector's consumer stop
            if hasattr(self, "producer"):
                self.run(self.producer.stop())
            if hasattr(self, "server"):
                self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    def assert_clean(self, secrets: tuple[str, ...] = ()) -> None:
        """After a run: records match their schemas, no worker logged a traceback, and no
        secret (the API key, plus `secrets`) is in a log or a blocked / audit record."""
        assert not self.schema_errors, self.schema_errors[:5]
        logs = [log.read_text(errors="replace") for log in self.logs]
        assert not [text for text in logs if "Traceback" in text], "a worker logged a traceback"
        # allowed records carry the inbound bytes unchanged (the contract); nothing else may
        texts = logs + [
            o.value.decode(errors="replace") for o in self.outputs if o.topic != "allowed"
        ]
        for secret in (API_KEY, AUDIT_KEY, *secrets):
            assert not [t for t in texts if secret in t], "a secret or token leaked"
        # every blocked message has its audit event (give the collector a moment to read them)
        deadline = time.monotonic() + 5
        while True:
            audited = {
                (a["sessionId"], a["messageId"]) for a in self.audits() if a["kind"] == "blocked"
            }
            blocked = [o.doc for o in list(self.outputs) if o.topic == "blocked" and o.doc]
            missing = [
                (b["sessionId"], b["messageId"])
                for b in blocked
                if (b["sessionId"], b["messageId"]) not in audited
            ]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not missing, f"blocked without an audit event: {missing[:5]}"

    # ------------------------------------------------------------------ config and workers

    def write_config(self, bots: list[dict[str, Any]], connectors: list[dict[str, Any]]) -> Path:
        path = self.tmp / f"config-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump({"bots": bots, "connectors": connectors}))
        return path

    def env(self, config: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_SESSION")}
        env |= self.broker.client_env()
        env |= {f"SECURE_SESSION_TOPIC_{k.upper()}": v for k, v in self.topics.items()}
        env |= {
            "SECURE_SESSION_APP_ID": self.app_id,
            "SECURE_SESSION_SECRETS_DIR": str(self.secrets),
            "SECURE_SESSION_FINGERPRINT_KEY": "test-fingerprint-key-0123456789abcdef",
            "SECURE_SESSION_DATA_DIR": str(self.tmp / "data"),
            "SECURE_SESSION_WEB_ENABLED": "0",
            "SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS": "1",
            "SECURE_SESSION_HTTP_BACKOFF_S": "0.05",
            "SECURE_SESSION_PARTITIONS": "4",
        }
        if config is not None:
            env["SECURE_SESSION_CONFIG"] = str(config)
        return env | self.extra_env

    def sign_audit(self, name: str = "audit-key", key: str = AUDIT_KEY) -> str:
        """Workers and tools of this harness sign audit events with `key` (in the vault as
        srn:vault::ops:secret:<name>); returns the reference."""
        (self.secrets / "ops").mkdir(exist_ok=True)
        (self.secrets / "ops" / name).write_text(key + "\n")
        ref = f"srn:vault::ops:secret:{name}"
        self.extra_env["SECURE_SESSION_AUDIT_KEY_REF"] = ref
        return ref

    def start_worker(
        self, config: Path | None, timeout: float = 60, *, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        """A worker process; with `wait`, once it has read its configuration."""
        log = self.tmp / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker"],
                env=self.env(config),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(proc)
        self.workers_by_start.append(proc)
        if not wait:
            return proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(
                    f"worker exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                )
            if b"configuration ready" in log.read_bytes():
                return proc
            time.sleep(0.1)
        raise AssertionError(f"worker not ready in {timeout} s:\n{log.read_text()[-3000:]}")

    def wait_logged(
        self, text: bytes, workers: Iterable[int], times: int = 1, timeout: float = 90
    ) -> None:
        """Until each of these workers (by start order) has logged `text` `times` times;
        fails at once, with its log, if one exits."""
        deadline = time.monotonic() + timeout
        for n in workers:
            while self.logs[n].read_bytes().count(text) < times:
                if self.workers_by_start[n].poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"worker {n} did not log {text!r} {times}x in {timeout} s:\n"
                        + self.logs[n].read_text()[-3000:]
                    )
                time.sleep(0.2)

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc)
        self.workers.remove(proc)

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`secure-session ARGS` as a user runs it, with this harness's environment."""
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env(config),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # ------------------------------------------------------------------ traffic

    def send(self, *events: dict[str, Any] | bytes, key: bytes | None | str = "session") -> None:
        async def go() -> None:
            for ev in events:
                value = ev if isinstance(ev, bytes) else orjson.dumps(ev)
                k = key
                if k == "session":
                    k = ev["sessionId"].encode() if isinstance(ev, dict) else None
                await self.producer.send(self.topics["inbound"], value, key=k)
            await self.producer.flush()

        self.run(go())

    def decisions(self, session: str) -> list[Out]:
        """Allowed and blocked records of one session, in output order."""
        key = session.encode()
        return [o for o in list(self.outputs) if o.topic != "audit" and o.key == key]

    def audits(self, session: str | None = None) -> list[dict[str, Any]]:
        return [
            o.doc
            for o in list(self.outputs)
            if o.topic == "audit"
            and o.doc is not None
            and (session is None or o.doc.get("sessionId") == session)
        ]

    def wait_decisions(self, session: str, count: int, timeout: float = 30) -> list[Out]:
        return self.wait(lambda: self.decisions(session), count, timeout, f"session {session}")

    def wait(self, get: Callable[[], list[T]], count: int, timeout: float, what: str) -> list[T]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = get()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{what}: {len(get())} of {count} records after {timeout} s")


def event(
    session: str,
    msg_id: str,
    token: str | None = None,
    bot: str = "secure",
    org: str = "acme",
    **extra: Any,
) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "id": msg_id,
        "organization": org,
        "bot": bot,
        "sessionId": session,
        "type": "message",
        "payload": {"text": "hi"},
        "context": {},
    }
    if token is not None:
        ev["context"]["secureTokenForUser"] = token
    ev.update(extra)
    return ev


def reason(out: Out) -> str:
    """The decision's reason, from headers (allowed) or the record (blocked)."""
    if out.topic == "allowed":
        return out.header_reason
    assert out.doc is not None
    return str(out.doc["reason"])
