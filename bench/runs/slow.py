"""New sessions behind a slow Authorization API (200 ms a call): all at once (the slow-API
run), and arriving all the time, each chatty (the chatty run)."""

from __future__ import annotations

from typing import Any

from bench.harness import CALL_LIMITS, Bench, worker_rate
from bench.workloads import chatty, workload


async def slow_api(
    b: Bench,
    sessions: int,
    per_session: int,
    tag: str = "slow",
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The worker on a backlog of new sessions (round robin), the API answering in 200 ms."""
    return await _slow_run(b, workload(sessions, per_session, "s"), sessions, tag, "slow", extra)


async def chatty_sessions(
    b: Bench, sessions: int, per_session: int, spread: int, tag: str = "chatty"
) -> dict[str, Any]:
    """The worker on a backlog of sessions that begin one after another, each with most of
    its messages while its validation is in flight (bench/workloads.py `chatty`)."""
    records = chatty(sessions, per_session, spread, "n")
    return await _slow_run(b, records, sessions, tag, "chatty", None)


async def _slow_run(
    b: Bench,
    records: list[tuple[bytes, bytes]],
    sessions: int,
    tag: str,
    name: str,
    extra: dict[str, str] | None,
) -> dict[str, Any]:
    t = b.topics(tag)
    await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
    b.api.calls.clear()
    b.api.default_delay_s = 0.2
    await b.produce(t["inbound"], records)
    per_topic: dict[str, int] = {}
    cpu_us: list[float] = []
    outputs = [t["allowed"], t["blocked"]]
    try:
        rate = await worker_rate(
            b,
            tag,
            len(records),
            outputs,
            len(records),
            len(records),
            CALL_LIMITS | (extra or {}),
            per_topic,
            cpu_us,
        )
    finally:
        b.api.default_delay_s = 0.0
    prefix = "" if name == "slow" else f"{name}_"
    return {
        f"{name}_msgs_per_s": rate,
        f"{prefix}calls": sum(b.api.calls.values()),
        f"{prefix}ideal_calls": sessions,
        f"{prefix}duplicate_calls": sum(max(0, c - 1) for c in b.api.calls.values()),
        # every token is valid: a block is a message the run could not let in (a full queue)
        f"{prefix}blocked": per_topic.get(t["blocked"], 0),
        f"{name}_cpu_us_per_msg": cpu_us[0],
    }
