"""The benchmark: `make bench` (or `python -m bench.run`).

Runs against the embedded broker (or KAFKA_BOOTSTRAP_SERVERS) with the reference
Authorization API as the fake API (latency set per run), the worker as users run it (a
subprocess), and prints one table. Every ratio compares figures of the same run.
Figures go to bench/results.json and a chart to bench/results.png.

Sizes come from the environment (defaults in brackets):
  BENCH_MESSAGES [100000]         messages of the cached-path and bare-loop runs
  BENCH_SCALE_MESSAGES [300000]   messages of each scale-out run (1, 2, 3 workers)
  BENCH_SESSIONS [1000]           sessions of the cached-path run
  BENCH_ROUNDS [3]                rounds of (bare loop, Quix Streams stateless and stateful,
                                  cached path): medians are reported
  BENCH_SLOW_SESSIONS [10000]     sessions of the slow-API run (200 ms a call)
  BENCH_SLOW_PER_SESSION [100]    messages per session there (1 call per this many)
  BENCH_LATENCY_SECONDS [10]      duration of each steady-rate latency run
  BENCH_PARTITIONS [8]            partitions of each topic
  BENCH_STATE_SESSIONS [1000000]  sessions in the table for the memory / restart run
  BENCH_AUDIT_ROUNDS [3]          pairs (unsigned, signed) of the audit-chain cost runs
  BENCH_AUDIT_SLOW_SESSIONS [4000], BENCH_AUDIT_SLOW_PER_SESSION [50]   their slow-API run
`BENCH_ONLY=cached|slow|calls|latency|scale|state|refresh|audit` runs one part.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.decide import SessionState
from worker.demo.authapi import AuthorizationAPI, RunningAPI
from worker.demo.broker import EmbeddedBroker, free_port, stop_process
from worker.settings import Settings

HERE = Path(__file__).parent
API_KEY = "bench-api-key"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


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


def event(session: str, n: int, token: str, sent: float | None = None) -> bytes:
    payload: dict[str, Any] = {"text": "x" * 120}
    if sent is not None:
        payload["sent"] = sent
    return orjson.dumps(
        {
            "id": f"{session}-{n}",
            "organization": "acme",
            "bot": "bench",
            "sessionId": session,
            "type": "message",
            "payload": payload,
            "context": {"token": token},
        }
    )


def workload(sessions: int, per_session: int, prefix: str) -> list[tuple[bytes, bytes]]:
    """Messages interleaved across sessions (round robin), keyed by session."""
    return [
        (f"{prefix}{s}".encode(), event(f"{prefix}{s}", n, f"tok-{prefix}{s}"))
        for n in range(per_session)
        for s in range(sessions)
    ]


# ---------------------------------------------------------------------- the runs


async def bare_loop(b: Bench, records: list[tuple[bytes, bytes]], tag: str) -> float:
    """The bare aiokafka consume-decode-produce loop, on the same records (a backlog)."""
    src, dst = f"bench.bare{tag}.in", f"bench.bare{tag}.out"
    await b.create([src, dst])
    await b.produce(src, records)
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=b.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    # batches as large as the worker's, which reads the same variable: like with like
    batch = Settings.from_env(os.environ).kafka.producer_max_batch_size
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=5, max_batch_size=batch)
    await consumer.start()
    await producer.start()
    state: dict[bytes, int] = {}
    seen, started = 0, 0.0
    try:
        while seen < len(records):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch and not started:
                started = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    doc = orjson.loads(m.value)
                    state[m.key] = state.get(m.key, 0) + 1
                    if doc["type"] == "message":
                        await producer.send(
                            dst, m.value, key=m.key, headers=[("secure-session-reason", b"cached")]
                        )
                    seen += 1
        await producer.flush()
        return len(records) / (time.monotonic() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def quix_rate(
    b: Bench, records: list[tuple[bytes, bytes]], tag: str, stateful: bool
) -> float:
    """Quix Streams (bench/peers/quix.py, its own process) on the same records (a backlog);
    its rate from its output records' timestamps, as the worker's."""
    kind = "stateful" if stateful else "stateless"
    src, dst = f"bench.quix-{kind}{tag}.in", f"bench.quix-{kind}{tag}.out"
    admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
    await admin.start()
    try:  # tansu reports only configs set at creation, and Quix copies this one
        week = {"retention.ms": str(7 * 24 * 3600 * 1000)}
        await admin.create_topics(
            [NewTopic(src, PARTITIONS, 1, topic_configs=week), NewTopic(dst, PARTITIONS, 1)]
        )
    finally:
        await admin.close()
    await b.produce(src, records)
    since_ms = time.time() * 1000
    command = [sys.executable, "-m", "bench.peers.quix", "--bootstrap", b.bootstrap]
    command += ["--input", src, "--output", dst, "--count", str(len(records))]
    command += ["--group", f"bench-quix-{kind}{tag}", "--state-dir", str(b.tmp / f"quix{tag}")]
    command += ["--stateful"] if stateful else []
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"Quix Streams failed: {done.stderr.decode()[-2000:]}")
    return len(records) / await decision_span(b, [dst], len(records), since_ms, len(records))


async def exact_end_offsets(b: Bench, changelog: str) -> None:
    """A last batch of one record in every partition of a table's changelog: tansu's end
    offsets are then exact (BROKER.md), as Faust's recovery needs them to be."""
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
    b: Bench, outputs: list[str], output_total: int, since_ms: float, expected: int
) -> float:
    """Seconds from the first to the last of the `expected` decisions made since `since_ms`,
    by their output records' timestamps (set when the worker decided them); reads all
    `output_total` records of `outputs` and checks that exactly `expected` are that new."""
    stamps: list[int] = []

    def stamp(m: Any) -> None:
        if m.timestamp >= since_ms:
            stamps.append(m.timestamp)

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
) -> float:
    """Start a worker on a backlog of `tag`'s inbound topic; its msg/s from the timestamps
    of its first and last output records (set when it appended them). Nothing else runs
    meanwhile: the bench waits on the group's committed offsets, then reads the outputs,
    so the load generator and the reader do not compete with the worker for the cores,
    as nothing competes with the bare loop."""
    since_ms = time.time() * 1000
    worker = b.start_worker(tag, interval=3600, extra=extra)
    profiler = None
    if os.environ.get("BENCH_PROFILE"):  # py-spy raw stacks of the worker
        profiler = subprocess.Popen(
            ["py-spy", "record", "--pid", str(worker.pid), "--format", "raw", "--rate", "200"]
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
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        b.stop_worker(worker)
    return expected / await decision_span(b, outputs, output_total, since_ms, expected)


async def cached_path(b: Bench, sessions: int, messages: int, rounds: int) -> dict[str, Any]:
    """Rounds of (the bare loop on a backlog, the worker on the same backlog, every session
    validated by a worker before): medians and the median of the rounds' ratios."""
    t = b.topics("cached")
    await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
    worker = b.start_worker("cached", interval=3600)
    try:
        await b.produce(t["inbound"], workload(sessions, 1, "c"))  # validate every session
        await b.drain([t["allowed"]], sessions)
        while await committed(b, "bench-cached", t["inbound"]) < sessions:
            await asyncio.sleep(0.5)
    finally:
        b.stop_worker(worker)
    await exact_end_offsets(b, "bench-cached-sessions-changelog")
    calls = sum(b.api.calls.values())
    total, bare, cached = sessions, [], []
    quix: dict[bool, list[float]] = {False: [], True: []}
    for n in range(rounds):
        bare.append(await bare_loop(b, workload(sessions, messages // sessions, "b"), str(n)))
        for stateful in (False, True):
            peer = workload(sessions, messages // sessions, "q")
            quix[stateful].append(await quix_rate(b, peer, str(n), stateful))
        records = workload(sessions, messages // sessions, "c")
        await b.produce(t["inbound"], records)
        total += len(records)
        cached.append(await worker_rate(b, "cached", total, [t["allowed"]], total, len(records)))
        print(
            f"  round {n + 1}: bare {bare[-1]:,.0f} msg/s, Quix Streams stateless "
            f"{quix[False][-1]:,.0f} / stateful {quix[True][-1]:,.0f} msg/s, worker "
            f"{cached[-1]:,.0f} msg/s",
            flush=True,
        )
    assert sum(b.api.calls.values()) == calls, "the cached path made calls"
    return {
        "bare_msgs_per_s": statistics.median(bare),
        "cached_msgs_per_s": statistics.median(cached),
        "cached_ratio": statistics.median(c / r for c, r in zip(cached, bare, strict=True)),
        "quix_stateless_msgs_per_s": statistics.median(quix[False]),
        "quix_stateful_msgs_per_s": statistics.median(quix[True]),
        "quix_stateful_to_bare": statistics.median(
            q / r for q, r in zip(quix[True], bare, strict=True)
        ),
        # the worker's cached path / Quix Streams stateful, round by round (target >= 1)
        "quix_ratio": statistics.median(c / q for c, q in zip(cached, quix[True], strict=True)),
        "quix_stateless_rounds": [round(v) for v in quix[False]],
        "quix_stateful_rounds": [round(v) for v in quix[True]],
        "bare_rounds": [round(v) for v in bare],
        "cached_rounds": [round(v) for v in cached],
    }


SCALE_TIMING = {
    "KAFKA_SESSION_TIMEOUT_S": "20",
    "KAFKA_HEARTBEAT_INTERVAL_S": "1",
    "KAFKA_REBALANCE_TIMEOUT_S": "20",
}
"""Group timing of the scale-out run: members stopped (SIGSTOP) while the backlog is produced
must stay in the group, and tansu holds the first JoinGroup ~10 s, so all members join one
generation."""


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


async def scale_out(b: Bench, workers: int, sessions: int, messages: int) -> dict[str, float]:
    """Cached-path throughput with `workers` processes in one consumer group, on a backlog.

    The workers join one group and validate every session; then they are stopped
    (SIGSTOP) while the backlog is produced and resumed (SIGCONT) together, so the load
    generator never competes with them for the cores, as in the cached-path run. The rate
    comes from the timestamps of the first and last output records after the resume;
    with it, the cores the workers and the embedded broker used meanwhile (their CPU time
    over that span).
    """
    tag = f"scale{workers}"
    t = b.topics(tag)
    group = f"bench-{tag}"
    await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
    extra = SCALE_TIMING if b.embedded else {}
    procs = [b.start_worker(tag, interval=3600, extra=extra) for _ in range(workers)]
    try:
        deadline = time.monotonic() + 120
        while await group_members(b, group) != ("Stable", workers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the group did not settle with {workers} members")
            await asyncio.sleep(0.5)
        await b.produce(t["inbound"], workload(sessions, 1, "c"))
        await b.drain([t["allowed"]], sessions)
        records = workload(sessions, messages // sessions, "c")
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        cpu = sum(cpu_seconds(p.pid) for p in procs)
        broker_cpu = cpu_seconds(b.broker_pid) if b.broker_pid else 0.0
        try:
            await b.produce(t["inbound"], records)
            resumed_ms = time.time() * 1000
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGCONT)
        total = sessions + len(records)
        deadline = time.monotonic() + 900
        while await committed(b, group, t["inbound"]) < total:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the workers did not finish: {[p.log for p in procs]}")  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu
        broker_cpu = (cpu_seconds(b.broker_pid) - broker_cpu) if b.broker_pid else 0.0
        members = await group_members(b, group)
        assert members == ("Stable", workers), f"the group lost a member: {members}"
    finally:
        for proc in procs:
            b.stop_worker(proc)
    span_s = await decision_span(b, [t["allowed"]], total, resumed_ms, len(records))
    return {
        f"scale_{workers}_workers_msgs_per_s": len(records) / span_s,
        f"scale_{workers}_workers_cores": cpu / span_s,
        f"scale_{workers}_broker_cores": broker_cpu / span_s,
    }


async def call_cpu(b: Bench) -> dict[str, Any]:
    """CPU per call of the worker's HTTP client and of httpx's own (bench/calls.py), in a
    process of their own, so that the API's CPU (here) is not counted."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.calls",
        b.server.url,
        API_KEY,
        "tok-c0",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"bench.calls failed ({proc.returncode})")
    figures: dict[str, Any] = json.loads(out)
    return figures


async def slow_api(
    b: Bench,
    sessions: int,
    per_session: int,
    tag: str = "slow",
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The worker on a backlog of new sessions, the API answering in 200 ms."""
    t = b.topics(tag)
    await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
    b.api.calls.clear()
    b.api.default_delay_s = 0.2
    records = workload(sessions, per_session, "s")
    await b.produce(t["inbound"], records)
    try:
        rate = await worker_rate(
            b, tag, len(records), [t["allowed"], t["blocked"]], len(records), len(records), extra
        )
    finally:
        b.api.default_delay_s = 0.0
    calls = sum(b.api.calls.values())
    return {
        "slow_msgs_per_s": rate,
        "calls": calls,
        "ideal_calls": sessions,
        "duplicate_calls": sum(max(0, c - 1) for c in b.api.calls.values()),
    }


@dataclass
class Latency:
    """Latency samples of a steady-rate run: (seconds since the run began, milliseconds)."""

    samples: list[tuple[float, float]]

    def pct(self, q: float, within: tuple[float, float] = (0, float("inf"))) -> float:
        ms = sorted(v for at, v in self.samples if within[0] <= at < within[1])
        return ms[min(len(ms) - 1, int(len(ms) * q))]

    def windows(self, width: float) -> list[float]:
        """p99 of each `width`-second window: on tansu it grows as the broker fills."""
        end = max(at for at, _ in self.samples)
        return [self.pct(0.99, (w * width, (w + 1) * width)) for w in range(int(end // width) + 1)]


async def steady_load(
    b: Bench,
    topic: str,
    sink: str,
    rate: float,
    seconds: float,
    sessions: int,
    skip: int = 0,
    started: asyncio.Event | None = None,
) -> tuple[Latency, Latency]:
    """Send `rate` messages a second to `topic` and time each one to its arrival in `sink`
    (the allowed topic, or `topic` itself for the broker alone); `skip`: records already
    in `sink`; `started` is set when the first is sent. Also: send to the sink record's
    timestamp (through the worker: when it decided, as the outbox stamps a record when it
    takes it)."""
    total = int(rate * seconds)
    samples: list[tuple[float, float]] = []
    stamped: list[tuple[float, float]] = []
    began = 0.0

    def measure(m: Any) -> None:
        sent = orjson.loads(m.value)["payload"].get("sent")
        if sent is not None:
            samples.append((sent - began, (time.time() - sent) * 1000))
            stamped.append((sent - began, m.timestamp - sent * 1000))

    async def send() -> None:
        nonlocal began
        producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=0)
        await producer.start()
        await producer.partitions_for(topic)  # its metadata: not timed either
        await ready.wait()  # the consumer is in place: its start is not timed
        try:
            start, began = time.monotonic(), time.time()
            if started is not None:
                started.set()
            for n in range(total):
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                s = f"l{n % sessions}"
                await producer.send(topic, event(s, n + 1, f"tok-{s}", time.time()), key=s.encode())
            await producer.flush()
        finally:
            await producer.stop()

    ready = asyncio.Event()
    sender = asyncio.create_task(send())
    await b.drain([sink], skip + total, on=measure, ready=ready)
    await sender
    return Latency(samples), Latency(stamped)


async def latency(
    b: Bench,
    rate: float,
    seconds: float,
    tag: str,
    interval: float = 3600,
    refresh_ahead: float | None = None,
) -> tuple[Latency, Latency, dict[str, Any]]:
    """Added latency (produce inbound to consume allowed) at a steady rate, cached path
    (with `interval` short, across its boundaries); and how late the worker's event loop
    ran meanwhile (its lag histogram, scraped)."""
    t = b.topics(tag)
    await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
    sessions = 500
    port = free_port()
    worker = b.start_worker(
        tag,
        interval=interval,
        extra={"SECURE_SESSION_WEB_ENABLED": "1", "SECURE_SESSION_WEB_PORT": str(port)},
        refresh_ahead=refresh_ahead,
    )
    # one client, made before the load: making one takes 30-40 ms, which would hold up the
    # load and the reader in this event loop
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await b.produce(t["inbound"], workload(sessions, 1, "l"))
            await b.drain([t["allowed"]], sessions)
            # settle: in its first seconds after start-up the worker pauses once (~100 ms,
            # measured): not the steady state this run measures
            await asyncio.sleep(3)
            started = asyncio.Event()
            scrapes = asyncio.create_task(every_2s(client, started, seconds))
            try:
                run, decided = await steady_load(
                    b, t["inbound"], t["allowed"], rate, seconds, sessions, sessions, started
                )
                snapshots = await scrapes
            finally:
                scrapes.cancel()  # if the load failed before it started
            after = await histograms(client)
    finally:
        b.stop_worker(worker)
    before = snapshots[0]
    own_by_2s = [
        1000 * quantile(delta(later, earlier, "secure_session_decision_seconds"), 0.99)
        for earlier, later in itertools.pairwise(snapshots)
    ]
    ticks = delta(after, before, "secure_session_event_loop_lag_seconds")
    total = ticks[float("inf")]
    own = delta(after, before, "secure_session_decision_seconds")
    return (
        run,
        decided,
        {
            "loop_ticks": total,
            "loop_late_10ms": total - ticks[0.01],
            "loop_lag_max_ms": 1000 * top_bound(ticks),
            "own_p50_ms": 1000 * quantile(own, 0.5),
            "own_p99_ms": 1000 * quantile(own, 0.99),
            "own_max_ms": 1000 * top_bound(own),
            "own_p99_by_2s_ms": [round(v, 1) for v in own_by_2s],
        },
    )


async def every_2s(
    client: httpx.AsyncClient, started: asyncio.Event, seconds: float
) -> list[dict[str, dict[float, float]]]:
    """The worker's histograms when the load starts and after every 2 s of it."""
    await started.wait()
    begin = time.monotonic()
    snapshots = [await histograms(client)]
    for at in range(2, int(seconds) + 1, 2):
        await asyncio.sleep(max(0.0, begin + at - time.monotonic()))
        snapshots.append(await histograms(client))
    return snapshots


async def histograms(client: httpx.AsyncClient) -> dict[str, dict[float, float]]:
    """The worker's histograms (`/metrics`): by name, cumulative counts by bucket bound."""
    text = (await client.get("/metrics")).text
    found: dict[str, dict[float, float]] = {}
    for name, le, n in re.findall(r'^(\w+)_bucket\{le="([^"]+)"\} (\S+)', text, re.M):
        found.setdefault(name, {})[float(le)] = float(n)
    return found


def delta(
    after: dict[str, dict[float, float]], before: dict[str, dict[float, float]], name: str
) -> dict[float, float]:
    """What histogram `name` counted between two scrapes, by bucket bound."""
    return {le: n - before.get(name, {}).get(le, 0) for le, n in after[name].items()}


def top_bound(buckets: dict[float, float]) -> float:
    """The lowest bucket bound that holds every count: the maximum, to a bucket."""
    return min(bound for bound, n in buckets.items() if n == buckets[float("inf")])


def quantile(buckets: dict[float, float], q: float) -> float:
    """As Prometheus' histogram_quantile: linear within the bucket the quantile falls in."""
    bounds = sorted(buckets)
    rank, lower, below = q * buckets[float("inf")], 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1)
        lower, below = bound, buckets[bound]
    return lower


async def refresh_ahead(b: Bench, seconds: float = 12) -> dict[str, Any]:
    """Active sessions across interval boundaries: 500 sessions at 1,000 msg/s for
    `seconds`, a 4 s interval, the API answering in 20 ms (500 calls at a boundary, 25 at
    a time: SECURE_SESSION_MAX_CALLS_PER_ORG); the worker's own decision time (p99) and
    the calls made, without and with RefreshAhead 0.5."""
    found: dict[str, Any] = {}
    b.api.default_delay_s = 0.02
    try:
        for name, f in (("interval", None), ("refresh", 0.5)):
            b.api.calls.clear()
            async with fresh_broker(b):
                _, _, lag = await latency(b, 1000, seconds, f"ra{uuid.uuid4().hex[:6]}", 4, f)
            found[f"{name}_own_p99_ms"] = lag["own_p99_ms"]
            found[f"{name}_calls"] = sum(b.api.calls.values())
    finally:
        b.api.default_delay_s = 0.0
    # at most one call per session per f x interval, besides each session's first
    found["refresh_max_calls"] = 500 * (1 + int((seconds + 4) / 2))
    return found


@contextlib.asynccontextmanager
async def fresh_broker(b: Bench) -> AsyncIterator[None]:
    """A broker of its own for a latency run (embedded mode): tansu's in-memory log answers
    fetches slower as it fills (docs/performance.md), so earlier runs would skew it."""
    if not b.embedded:
        yield
        return
    broker, saved = EmbeddedBroker().start(), b.bootstrap
    b.bootstrap = broker.bootstrap
    try:
        yield
    finally:
        b.bootstrap = saved
        broker.stop()


async def latency_figures(b: Bench, rate: float, seconds: float, name: str) -> dict[str, Any]:
    """p50, p99 and p99 by 2-second window of `name` ("hop": no worker) at `rate` msg/s;
    through the worker also up to its decision (the inbound hop and the worker)."""

    def figures(prefix: str, run: Latency) -> dict[str, Any]:
        return {
            f"{prefix}p50_ms": run.pct(0.5),
            f"{prefix}p99_ms": run.pct(0.99),
            f"{prefix}p99_by_2s_ms": [round(v, 1) for v in run.windows(2)],
        }

    async with fresh_broker(b):
        if name == "hop":
            return figures("hop_", (await hop_latency(b, rate, seconds))[0])
        run, decided, lag = await latency(b, rate, seconds, f"lat{uuid.uuid4().hex[:6]}")
    prefix = "" if name == "worker" else f"{name}_"
    return (
        figures(prefix, run)
        | figures(f"{prefix}decided_", decided)
        | {f"{prefix}{k}": v for k, v in lag.items()}
    )


async def hop_latency(b: Bench, rate: float, seconds: float) -> tuple[Latency, Latency]:
    """The same steady load straight from producer to consumer, no worker: the broker's share."""
    topic = f"bench.hop.{uuid.uuid4().hex[:6]}"
    await b.create([topic])
    return await steady_load(b, topic, topic, rate, seconds, 500)


async def state_at_scale(b: Bench, sessions: int) -> dict[str, Any]:
    """RSS per tracked session and the time to be ready with them in the table."""
    tag, app_id = "state", f"bench-state-{uuid.uuid4().hex[:6]}"
    t = b.topics(tag)
    await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
    empty = b.start_worker(tag, interval=3600, app_id=app_id)  # creates the changelog topic
    await asyncio.sleep(2)
    base_rss = rss_bytes(empty.pid)
    b.stop_worker(empty)
    now_ms = int(time.time() * 1000)
    value = SessionState(now_ms, True, "sha256:0123456789abcdef", "user-0000000").encode()
    changelog = f"{app_id}-sessions-changelog"
    records = [(f"acme/bench/session-{i:08d}".encode(), value) for i in range(sessions)]
    started = time.monotonic()
    await b.produce(changelog, records)
    await exact_end_offsets(b, changelog)
    produce_s = time.monotonic() - started
    read_s = await read_to_end(b, changelog, sessions + PARTITIONS)
    worker = b.start_worker(tag, interval=3600, app_id=app_id)
    ready_s = worker.ready_s  # type: ignore[attr-defined]
    await asyncio.sleep(1)
    full_rss = rss_bytes(worker.pid)
    b.stop_worker(worker)
    # on disk (RocksDB): the first start loads the changelog, a restart reads local state
    disk = {"SECURE_SESSION_STORE": "rocksdb"}
    first = b.start_worker(tag, interval=3600, app_id=app_id, extra=disk)
    first_s = first.ready_s  # type: ignore[attr-defined]
    b.stop_worker(first)
    again = b.start_worker(tag, interval=3600, app_id=app_id, extra=disk)
    again_s = again.ready_s  # type: ignore[attr-defined]
    disk_rss = rss_bytes(again.pid)
    b.stop_worker(again)
    return {
        "restart_ready_rocksdb_s": round(again_s, 1),
        "first_load_rocksdb_s": round(first_s, 1),
        "rss_rocksdb_mb": round(disk_rss / 2**20, 1),
        "state_sessions": sessions,
        "rss_bytes_per_session": round((full_rss - base_rss) / sessions, 1),
        "restart_ready_s": round(ready_s, 1),
        "rss_empty_mb": round(base_rss / 2**20, 1),
        "rss_full_mb": round(full_rss / 2**20, 1),
        "changelog_produce_s": round(produce_s, 1),
        "changelog_read_s": round(read_s, 1),
    }


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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------------- report


def table(r: dict[str, Any]) -> str:
    rows = [
        ("bare aiokafka loop", f"{r['bare_msgs_per_s']:,.0f} msg/s", "1.00"),
        (
            "worker, cached path",
            f"{r['cached_msgs_per_s']:,.0f} msg/s",
            f"{r['cached_ratio']:.2f} of bare (target >= 0.5)",
        ),
        (
            "Quix Streams 3.28, stateless / stateful",
            f"{r.get('quix_stateless_msgs_per_s', 0):,.0f} / "
            f"{r.get('quix_stateful_msgs_per_s', 0):,.0f} msg/s",
            f"stateful {r.get('quix_stateful_to_bare', 0):.2f} of bare; the worker's cached "
            f"path is {r.get('quix_ratio', 0):.2f} of it (target >= 1)",
        ),
        (
            "worker, slow API (200 ms)",
            f"{r['slow_msgs_per_s']:,.0f} msg/s",
            f"{r['slow_ratio']:.2f} of cached (target >= 0.5)",
        ),
        (
            "signed audit chain, cached path",
            f"{r.get('audit_cached_ratio', 0):.3f} of unsigned",
            "median of back-to-back pairs (target >= 0.95); cached allows are not audited",
        ),
        (
            "signed audit chain, slow API (1 call per 50)",
            f"{r.get('audit_slow_ratio', 0):.3f} of unsigned",
            f"median of back-to-back pairs (target >= 0.95); "
            f"{r.get('audit_seal_us', 0):.1f} µs of CPU per signed event",
        ),
        (
            "CPU per HTTP call (200 at once)",
            f"{r['call_cpu_worker_ms']:.2f} ms",
            f"{r['call_cpu_ratio']:.2f} of httpx's own transport ({r['call_cpu_httpx_ms']:.2f} ms)",
        ),
        (
            "calls / ideal / duplicates",
            f"{r['calls']} / {r['ideal_calls']}",
            f"{r['duplicate_calls']} duplicates (target 0)",
        ),
        (
            "latency at 2,000 msg/s",
            f"p50 {r['p50_ms']:.1f} ms",
            f"p99 {r['p99_ms']:.1f} ms (target < 20)",
        ),
        (
            "same load, send to the worker's decision",
            f"p50 {r.get('decided_p50_ms', 0):.1f} ms",
            f"p99 {r.get('decided_p99_ms', 0):.1f} ms (the inbound hop and the worker)",
        ),
        (
            "same load, in the worker: arrival to delivery",
            f"p50 {r.get('own_p50_ms', 0):.1f} ms",
            f"p99 {r.get('own_p99_ms', 0):.1f} ms, all within {r.get('own_max_ms', 0):g} ms "
            "(its secure_session_decision_seconds); p99 by 2 s: "
            + " / ".join(f"{v:.1f}" for v in r.get("own_p99_by_2s_ms", [])),
        ),
        (
            "same load, the worker's event loop",
            f"{r.get('loop_late_10ms', 0):.0f} of {r.get('loop_ticks', 0):.0f} ticks",
            f"late by > 10 ms (a tick every 50 ms); none by more than "
            f"{r.get('loop_lag_max_ms', 0):.0f} ms",
        ),
        (
            "same load, producer to consumer, no worker",
            f"p50 {r.get('hop_p50_ms', 0):.1f} ms",
            f"p99 {r.get('hop_p99_ms', 0):.1f} ms (the broker and load generator's share)",
        ),
        (
            f"latency at half of peak ({r['half_peak_rate']:,.0f} msg/s)",
            f"p50 {r['half_peak_p50_ms']:.1f} ms",
            f"p99 {r['half_peak_p99_ms']:.1f} ms",
        ),
    ]
    if "scale_1_workers_msgs_per_s" in r:
        rows.append(
            (
                "scale-out, cached path, 1 / 2 / 3 workers",
                " / ".join(f"{r[f'scale_{n}_workers_msgs_per_s']:,.0f}" for n in (1, 2, 3))
                + " msg/s",
                "one group, on a backlog; cores used by the workers "
                + " / ".join(f"{r.get(f'scale_{n}_workers_cores', 0):.2f}" for n in (1, 2, 3))
                + ", by the broker "
                + " / ".join(f"{r.get(f'scale_{n}_broker_cores', 0):.2f}" for n in (1, 2, 3))
                + f" (of {os.cpu_count()})",
            )
        )
    if "rss_bytes_per_session" in r:
        rows += [
            (
                f"RSS per session at {r['state_sessions']:,}",
                f"{r['rss_bytes_per_session']:,.0f} B",
                f"{r['rss_full_mb']:,.0f} MB in all",
            ),
            (
                "ready after restart, memory store",
                f"{r['restart_ready_s']:.1f} s",
                "loads its partitions with a plain consumer (target < 60 s), which reads "
                "the changelog alone in "
                f"{r.get('changelog_read_s', 0):.1f} s",
            ),
            (
                "ready after restart, RocksDB store",
                f"{r['restart_ready_rocksdb_s']:.1f} s",
                f"local state; first load {r['first_load_rocksdb_s']:.0f} s",
            ),
        ]
    width = max(len(a) for a, _, _ in rows)
    lines = [f"| {'run':<{width}} | figure | comparison |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {a:<{width}} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = [n for n in (1, 2, 3) if f"scale_{n}_workers_msgs_per_s" in r]
    fig, axes = plt.subplots(1, 3 if scale else 2, figsize=(15 if scale else 10, 4))
    left, right = axes[0], axes[1]
    names = ["bare loop", "cached path", "slow API"]
    values = [r["bare_msgs_per_s"], r["cached_msgs_per_s"], r["slow_msgs_per_s"]]
    left.bar(names, values, color=["#999999", "#2a7ab0", "#e08a1e"])
    left.set_ylabel("messages / s")
    left.set_title("Throughput (same run)")
    labels = ["2,000 msg/s", f"{r['half_peak_rate']:,.0f} msg/s"]
    x = range(len(labels))
    right.bar([i - 0.2 for i in x], [r["p50_ms"], r["half_peak_p50_ms"]], 0.4, label="p50")
    right.bar([i + 0.2 for i in x], [r["p99_ms"], r["half_peak_p99_ms"]], 0.4, label="p99")
    right.axhline(20, color="red", linestyle="--", linewidth=1, label="p99 target")
    right.set_xticks(list(x), labels)
    right.set_ylabel("added latency, ms")
    right.set_title("Latency, cached path")
    right.legend()
    if scale:
        ax = axes[2]
        ax.bar(
            [f"{n} worker{'s' if n > 1 else ''}" for n in scale],
            [r[f"scale_{n}_workers_msgs_per_s"] for n in scale],
            color="#2a7ab0",
        )
        for i, n in enumerate(scale):
            cores = r.get(f"scale_{n}_workers_cores", 0) + r.get(f"scale_{n}_broker_cores", 0)
            ax.annotate(
                f"{cores:.1f} cores",
                (i, r[f"scale_{n}_workers_msgs_per_s"]),
                ha="center",
                va="bottom",
            )
        ax.set_ylabel("messages / s")
        ax.set_title(f"Scale-out, cached path ({os.cpu_count()} cores: workers + broker)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def audit_figures(b: Bench) -> dict[str, Any]:
    from bench.audit_cost import audit_cost

    return await audit_cost(
        b,
        env_int("BENCH_SESSIONS", 1000),
        env_int("BENCH_MESSAGES", 100_000),
        env_int("BENCH_AUDIT_SLOW_SESSIONS", 4000),
        env_int("BENCH_AUDIT_SLOW_PER_SESSION", 50),
        env_int("BENCH_AUDIT_ROUNDS", 3),
    )


async def main() -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if bootstrap else EmbeddedBroker().start()
    api = AuthorizationAPI(api_key=API_KEY)
    server = await RunningAPI(api).start()
    bench = Bench(
        broker.bootstrap if broker else str(bootstrap),
        broker is not None,
        api,
        server,
        Path(tempfile.mkdtemp(prefix="secure-session-bench-")),
        broker_pid=broker.process.pid if broker and broker.process else None,
    )
    for n in range(env_int("BENCH_SLOW_SESSIONS", 10_000)):
        api.tokens[f"tok-s{n}"] = f"user-{n}"
    for n in range(env_int("BENCH_SESSIONS", 1000)):
        api.tokens[f"tok-c{n}"] = f"user-{n}"
    for n in range(500):
        api.tokens[f"tok-l{n}"] = f"user-{n}"
    r = bench.results
    try:
        if os.environ.get("BENCH_ONLY") == "state":
            print(json.dumps(await state_at_scale(bench, env_int("BENCH_STATE_SESSIONS", 10**6))))
            return
        if os.environ.get("BENCH_ONLY") == "scale":
            for n in (1, 2, 3):
                print(
                    json.dumps(
                        await scale_out(bench, n, 1000, env_int("BENCH_SCALE_MESSAGES", 300_000))
                    ),
                    flush=True,
                )
            return
        if os.environ.get("BENCH_ONLY") == "calls":
            print(json.dumps(await call_cpu(bench)))
            return
        if os.environ.get("BENCH_ONLY") == "slow":
            slow = await slow_api(
                bench,
                env_int("BENCH_SLOW_SESSIONS", 10_000),
                env_int("BENCH_SLOW_PER_SESSION", 100),
            )
            print(json.dumps(slow))
            return
        if os.environ.get("BENCH_ONLY") == "audit":
            print(json.dumps(await audit_figures(bench)))
            return
        if os.environ.get("BENCH_ONLY") == "refresh":
            print(json.dumps(await refresh_ahead(bench)))
            return
        if os.environ.get("BENCH_ONLY") == "latency":
            seconds = env_int("BENCH_LATENCY_SECONDS", 10)
            r |= await latency_figures(bench, 2000, seconds, "hop")
            r |= await latency_figures(bench, 2000, seconds, "worker")
            print(
                f"at 2,000 msg/s: broker hop p50 {r['hop_p50_ms']:.1f} ms, p99 "
                f"{r['hop_p99_ms']:.1f} ms; through the worker p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms; to its decision p50 {r['decided_p50_ms']:.1f} ms, "
                f"p99 {r['decided_p99_ms']:.1f} ms; p99 by 2 s: hop {r['hop_p99_by_2s_ms']}, "
                f"worker {r['p99_by_2s_ms']}, to decision {r['decided_p99_by_2s_ms']}; "
                f"in the worker, arrival to delivery p50 {r['own_p50_ms']:.1f} ms, p99 "
                f"{r['own_p99_ms']:.1f} ms, all within {r['own_max_ms']:g} ms, p99 by 2 s "
                f"{r['own_p99_by_2s_ms']}; "
                f"the worker's loop late by > 10 ms in {r['loop_late_10ms']:.0f} of "
                f"{r['loop_ticks']:.0f} ticks, never by more than {r['loop_lag_max_ms']:.0f} ms"
            )
            return
        messages = env_int("BENCH_MESSAGES", 100_000)
        sessions = env_int("BENCH_SESSIONS", 1000)
        print("bare loop and cached path...", flush=True)
        r |= await cached_path(bench, sessions, messages, env_int("BENCH_ROUNDS", 3))
        if os.environ.get("BENCH_ONLY") == "cached":
            print(
                f"bare {r['bare_msgs_per_s']:,.0f} msg/s, cached {r['cached_msgs_per_s']:,.0f}"
                f" msg/s, ratio {r['cached_ratio']:.2f}; Quix Streams stateful "
                f"{r['quix_stateful_msgs_per_s']:,.0f} msg/s, worker / Quix {r['quix_ratio']:.2f}"
            )
            return
        print("slow API...", flush=True)
        r |= await slow_api(
            bench, env_int("BENCH_SLOW_SESSIONS", 10_000), env_int("BENCH_SLOW_PER_SESSION", 100)
        )
        r["slow_ratio"] = r["slow_msgs_per_s"] / r["cached_msgs_per_s"]
        print("the signed audit chain's cost...", flush=True)
        r |= await audit_figures(bench)
        print("CPU per HTTP call...", flush=True)
        r |= await call_cpu(bench)
        seconds = env_int("BENCH_LATENCY_SECONDS", 10)
        print("latency at 2,000 msg/s...", flush=True)
        r |= await latency_figures(bench, 2000, seconds, "hop")
        r |= await latency_figures(bench, 2000, seconds, "worker")
        r["half_peak_rate"] = round(r["cached_msgs_per_s"] / 2)
        print(f"latency at {r['half_peak_rate']} msg/s...", flush=True)
        r |= await latency_figures(bench, r["half_peak_rate"], seconds, "half_peak")
        for n in (1, 2, 3):
            print(f"scale-out, {n} worker(s)...", flush=True)
            r |= await scale_out(bench, n, sessions, env_int("BENCH_SCALE_MESSAGES", 300_000))
        state_sessions = env_int("BENCH_STATE_SESSIONS", 1_000_000)
        if state_sessions:
            print(f"{state_sessions:,} sessions in the table...", flush=True)
            r |= await state_at_scale(bench, state_sessions)
    finally:
        for proc in list(bench.workers):
            bench.stop_worker(proc)
        await server.stop()
        if broker is not None:
            broker.stop()
    r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    r["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    r["broker"] = "external" if broker is None else "tansu (embedded)"
    (HERE / "results.json").write_text(json.dumps(r, indent=2) + "\n")
    chart(r, HERE / "results.png")
    print()
    print(table(r))
    print(f"\nwritten: {HERE / 'results.json'}, {HERE / 'results.png'}")


if __name__ == "__main__":
    asyncio.run(main())
