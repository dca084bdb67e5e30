"""What every run shares: the broker, the reference API, workers as subprocesses, and
timing by output timestamps."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.decide import SessionState
from worker.demo.authapi import AuthorizationAPI, RunningAPI
from worker.demo.broker import stop_process

API_KEY = "bench-api-key"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


CALL_LIMITS = {
    "SECURE_SESSION_MAX_CALLS_PER_ORG": "200",
    "SECURE_SESSION_MAX_CALLS_PER_CONNECTOR": "200",
    "SECURE_SESSION_MAX_QUEUED_CALLS": "100000",
}
"""Runs with a slow API: calls bounded by the worker's concurrency (200) only, as an operator
with one organization sets them. With the defaults (25 per organization, 1,000 queued) the
new sessions of a backlog overflow the queue and are blocked `authorization_unavailable`
without a call: another workload than the one measured."""

PARTITIONS = env_int("BENCH_PARTITIONS", 8)
"""Partitions of every topic the bench creates."""


@dataclass
class Bench:
    bootstrap: str
    embedded: bool
    api: AuthorizationAPI
    server: RunningAPI
    tmp: Path
    results: dict[str, Any] = field(default_factory=dict)
    broker_pid: int | None = None
    """The embedded broker's process, whose CPU the scale-out run reports."""
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # ------------------------------------------------------------------ helpers

    def topics(self, tag: str) -> dict[str, str]:
        return {
            k: f"bench.{tag}.{k}"
            for k in ("inbound", "allowed", "blocked", "audit", "bots", "connectors")
        }

    async def create(self, names: list[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
        finally:
            await admin.close()

    def start_worker(
        self,
        tag: str,
        interval: float,
        app_id: str | None = None,
        extra: dict[str, str] | None = None,
        refresh_ahead: float | None = None,
    ) -> subprocess.Popen[bytes]:
        topics = self.topics(tag)
        config = self.tmp / f"{tag}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "bots": [
                        {
                            "Name": "bench",
                            "Organization": "acme",
                            "SecureSession": True,
                            "SecureSessionConfig": {
                                "Type": "baas",
                                "ValidationInterval": interval,
                                "ApiAlias": "api",
                            }
                            | ({"RefreshAhead": refresh_ahead} if refresh_ahead else {}),
                        }
                    ],
                    "connectors": [
                        {
                            "Alias": "api",
                            "Organization": "acme",
                            "Method": "POST",
                            "Endpoint": self.server.url,
                            "TimeoutSeconds": 5,
                            "Headers": {"Authorization": API_KEY},
                            "RequestMapping": {
                                "t": {
                                    "type": "requestBody",
                                    "requestBodyPath": "$.token",
                                    "inputPath": "$.token",
                                }
                            },
                        }
                    ],
                }
            )
        )
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SECURE_SESSION_CONFIG": str(config),
            "SECURE_SESSION_APP_ID": app_id or f"bench-{tag}",
            "SECURE_SESSION_DATA_DIR": str(self.tmp / f"data-{tag}"),
            "SECURE_SESSION_LOG_LEVEL": "info",
            "SECURE_SESSION_MAX_CONCURRENT_CALLS": "200",
            "SECURE_SESSION_MAX_HELD_MESSAGES": "50000",
            "SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS": "1",
            "SECURE_SESSION_WEB_ENABLED": "0",
            **{f"SECURE_SESSION_TOPIC_{k.upper()}": v for k, v in topics.items()},
        }
        if self.embedded:
            env |= {
                "KAFKA_SESSION_TIMEOUT_S": "2",
                "KAFKA_HEARTBEAT_INTERVAL_S": "0.3",
                "KAFKA_REBALANCE_TIMEOUT_S": "2",
            }
            env.setdefault("KAFKA_FETCH_MAX_WAIT_MS", "10")
        env |= extra or {}
        log = self.tmp / f"worker-{tag}-{len(self.workers)}.log"
        with log.open("wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker"],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        proc.log = log  # type: ignore[attr-defined]
        proc.started = time.monotonic()  # type: ignore[attr-defined]
        self.workers.append(proc)
        deadline = time.monotonic() + 300
        while b"configuration ready" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        proc.ready_s = time.monotonic() - proc.started  # type: ignore[attr-defined]
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc, 60)
        self.workers.remove(proc)

    async def produce(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=5, max_batch_size=256 * 1024
        )
        await producer.start()
        try:
            for i in range(0, len(records), 5000):
                await asyncio.gather(
                    *[producer.send(topic, v, key=k) for k, v in records[i : i + 5000]]
                )
            await producer.flush()
        finally:
            await producer.stop()

    async def drain(
        self,
        topics: list[str],
        count: int,
        timeout: float = 600,
        on: Callable[[Any], None] | None = None,
        ready: asyncio.Event | None = None,
    ) -> tuple[float, float]:
        """Read `count` records; (time of the first, time of the last) by the wall clock.

        `ready` is set once the consumer has its partitions and positions: a latency run
        starts sending then, so its first messages do not wait for this consumer to start.
        """
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=env_int("BENCH_FETCH_MAX_WAIT_MS", 5),
            max_poll_records=5000,
        )
        await consumer.start()
        if ready is not None:
            for tp in consumer.assignment():
                await consumer.position(tp)
            ready.set()
        seen, first, last = 0, 0.0, 0.0
        deadline = time.monotonic() + timeout
        try:
            while seen < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {seen} of {count} records after {timeout} s")
                batch = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for msgs in batch.values():
                    if msgs and not first:
                        first = now
                    seen += len(msgs)
                    if on is not None:
                        for m in msgs:
                            on(m)
                if batch:
                    last = now
        finally:
            await consumer.stop()
        return first, last


async def exact_end_offsets(b: Bench, changelog: str) -> None:
    """A last batch of one record in every partition of a table's changelog: tansu's end
    offsets are then exact (docs/operations.md), as Faust's recovery needs them to be."""
    value = SessionState(int(time.time() * 1000), True, "sha256:0", "filler").encode()
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap)
    await producer.start()
    try:
        for p in range(PARTITIONS):
            await producer.send_and_wait(
                changelog, value, key=f"acme/bench/filler-{p}".encode(), partition=p
            )
    finally:
        await producer.stop()


async def committed(b: Bench, group: str, topic: str) -> int:
    """Records of `topic` the consumer group has committed (sum of its offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=b.bootstrap, group_id=group)
    await consumer.start()  # not subscribed: it does not join the group, only asks
    try:
        done = 0
        for p in range(PARTITIONS):
            done += await consumer.committed(TopicPartition(topic, p)) or 0
        return done
    finally:
        await consumer.stop()


async def decision_span(
    b: Bench,
    outputs: list[str],
    output_total: int,
    since_ms: float,
    expected: int,
    per_topic: dict[str, int] | None = None,
) -> float:
    """Seconds from the first to the last of the `expected` decisions made since `since_ms`,
    by their output records' timestamps (set when the worker decided them); reads all
    `output_total` records of `outputs` and checks that exactly `expected` are that new.
    `per_topic`, if given, gets how many of them each output topic has."""
    stamps: list[int] = []
    counts = per_topic if per_topic is not None else {}

    def stamp(m: Any) -> None:
        if m.timestamp >= since_ms:
            stamps.append(m.timestamp)
            counts[m.topic] = counts.get(m.topic, 0) + 1

    await b.drain(outputs, output_total, on=stamp)
    assert len(stamps) == expected, f"{len(stamps)} decisions for {expected} records"
    return (max(stamps) - min(stamps)) / 1000


async def worker_rate(
    b: Bench,
    tag: str,
    inbound_total: int,
    outputs: list[str],
    output_total: int,
    expected: int,
    extra: dict[str, str] | None = None,
    per_topic: dict[str, int] | None = None,
    cpu_us: list[float] | None = None,
) -> float:
    """Start a worker on a backlog of `tag`'s inbound topic; its msg/s from the timestamps
    of its first and last output records (set when it appended them). Nothing else runs
    meanwhile: the bench waits on the group's committed offsets, then reads the outputs,
    so the load generator and the reader do not compete with the worker for the cores,
    as nothing competes with the bare loop. `cpu_us`, if given, gets the worker's CPU
    time per message from when it was ready to when it had committed the backlog."""
    since_ms = time.time() * 1000
    worker = b.start_worker(tag, interval=3600, extra=extra)
    cpu_at_start = cpu_seconds(worker.pid)
    profiler = None
    if os.environ.get("BENCH_PROFILE") and tag.startswith(os.environ.get("BENCH_PROFILE_TAG", "")):
        # py-spy raw stacks of the worker
        profiler = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(worker.pid),
                "--format",
                "raw",
                "--rate",
                "200",
            ]
            + ["-o", os.environ.pop("BENCH_PROFILE")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 900
        while await committed(b, f"bench-{tag}", b.topics(tag)["inbound"]) < inbound_total:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the worker did not finish: {worker.log}")  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
        if cpu_us is not None:
            cpu_us.append((cpu_seconds(worker.pid) - cpu_at_start) / expected * 1e6)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        b.stop_worker(worker)
    span = await decision_span(b, outputs, output_total, since_ms, expected, per_topic)
    return expected / span


async def group_members(b: Bench, group: str) -> tuple[str, int]:
    """The consumer group's state and member count (DescribeGroups)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        _error, _id, state, _ptype, _protocol, members = response.groups[0][:6]
        return state, len(members)
    finally:
        await admin.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def read_to_end(b: Bench, topic: str, count: int) -> float:
    """Seconds a plain aiokafka consumer takes to read `count` records of `topic`: the
    broker's share of a table recovery (Faust's recovery reads the same records)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=b.bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    started = time.monotonic()
    seen = 0
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(msgs) for msgs in batch.values())
        return time.monotonic() - started
    finally:
        await consumer.stop()
