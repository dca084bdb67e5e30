"""Scale-out: 1, 2, 3 workers in one group on a backlog."""

from __future__ import annotations

import asyncio
import signal
import time

from bench.harness import Bench, committed, cpu_seconds, decision_span, group_members
from bench.workloads import workload

SCALE_TIMING = {
    "KAFKA_SESSION_TIMEOUT_S": "20",
    "KAFKA_HEARTBEAT_INTERVAL_S": "1",
    "KAFKA_REBALANCE_TIMEOUT_S": "20",
}
"""Group timing of the scale-out run: members stopped (SIGSTOP) while the backlog is produced
must stay in the group, and tansu holds the first JoinGroup ~10 s, so all members join one
generation."""


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
