"""Added latency at a steady rate, and refresh-ahead across interval boundaries."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.harness import Bench
from bench.workloads import event, workload
from worker.demo.broker import EmbeddedBroker, free_port


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
    ticks = delta(after, before, "secure_session_event_loop_lag_seconds")
    total = ticks[float("inf")]
    figures: dict[str, Any] = {
        "loop_ticks": total,
        "loop_late_10ms": total - ticks[0.01],
        "loop_lag_max_ms": 1000 * top_bound(ticks),
    }
    # own: arrival to the hand-over to the Kafka client; delivery: to the broker's answer
    for prefix, name in (
        ("own", "secure_session_decision_handover_seconds"),
        ("delivery", "secure_session_decision_seconds"),
    ):
        whole = delta(after, before, name)
        by_2s = [
            1000 * quantile(delta(later, earlier, name), 0.99)
            for earlier, later in itertools.pairwise(snapshots)
        ]
        figures |= {
            f"{prefix}_p50_ms": 1000 * quantile(whole, 0.5),
            f"{prefix}_p99_ms": 1000 * quantile(whole, 0.99),
            f"{prefix}_max_ms": 1000 * top_bound(whole),
            f"{prefix}_p99_by_2s_ms": [round(v, 1) for v in by_2s],
        }
    return run, decided, figures


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
