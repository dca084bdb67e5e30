"""The cached path: every session validated before, a backlog; rounds beside the peers."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from bench.harness import Bench, committed, exact_end_offsets, worker_rate
from bench.peers.bare import bare_loop
from bench.peers.quix import quix_rate
from bench.runs.slow import chatty_sessions
from bench.workloads import workload


async def cached_path(
    b: Bench,
    sessions: int,
    messages: int,
    rounds: int,
    chatty: tuple[int, int, int] | None,
    peers: bool = True,
) -> dict[str, Any]:
    """Rounds of (the bare loop on a backlog, Quix Streams stateless and stateful on the
    same, the worker on the same, every session validated by a worker before; and, with
    `chatty` = (sessions, per session, spread), the chatty run): medians and the median
    of the rounds' ratios. Without `peers`, the worker's runs only."""
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
    total, bare, cached = sessions, [], []
    chatty_runs: list[dict[str, Any]] = []
    cpu_us: list[float] = []
    quix: dict[bool, list[float]] = {False: [], True: []}
    for n in range(rounds):
        if peers:
            bare.append(await bare_loop(b, workload(sessions, messages // sessions, "b"), str(n)))
            for stateful in (False, True):
                peer = workload(sessions, messages // sessions, "q")
                quix[stateful].append(await quix_rate(b, peer, str(n), stateful))
        records = workload(sessions, messages // sessions, "c")
        await b.produce(t["inbound"], records)
        total += len(records)
        calls = sum(b.api.calls.values())
        cached.append(
            await worker_rate(
                b, "cached", total, [t["allowed"]], total, len(records), cpu_us=cpu_us
            )
        )
        assert sum(b.api.calls.values()) == calls, "the cached path made calls"
        line = (
            f"  round {n + 1}: worker {cached[-1]:,.0f} msg/s ({cpu_us[-1]:.0f} µs CPU a message)"
        )
        if peers:
            line += (
                f" ({cached[-1] / quix[True][-1]:.2f} of Quix Streams stateful, "
                f"{cached[-1] / bare[-1]:.2f} of bare); bare {bare[-1]:,.0f} msg/s, Quix "
                f"Streams stateless {quix[False][-1]:,.0f} / stateful {quix[True][-1]:,.0f}"
            )
        if chatty is not None:
            run = await chatty_sessions(b, *chatty, tag=f"chatty{n}")
            chatty_runs.append(run)
            line += (
                f"; chatty new sessions {run['chatty_msgs_per_s']:,.0f} msg/s "
                f"({run['chatty_msgs_per_s'] / cached[-1]:.2f} of cached, "
                f"{run['chatty_cpu_us_per_msg']:.0f} µs CPU a message), "
                f"{run['chatty_duplicate_calls']} duplicate calls, {run['chatty_blocked']} blocked"
            )
        print(line, flush=True)
    found: dict[str, Any] = {
        "cached_msgs_per_s": statistics.median(cached),
        "cached_rounds": [round(v) for v in cached],
        "cached_cpu_us_per_msg": statistics.median(cpu_us),
    }
    if chatty_runs:
        rates = [run["chatty_msgs_per_s"] for run in chatty_runs]
        found |= {
            "chatty_msgs_per_s": statistics.median(rates),
            "chatty_ratio": statistics.median(c / r for c, r in zip(rates, cached, strict=True)),
            "chatty_rounds": [round(v) for v in rates],
            "chatty_cpu_us_per_msg": statistics.median(
                run["chatty_cpu_us_per_msg"] for run in chatty_runs
            ),
            "chatty_calls": [run["chatty_calls"] for run in chatty_runs],
            "chatty_ideal_calls": chatty_runs[0]["chatty_ideal_calls"],
            "chatty_duplicate_calls": max(run["chatty_duplicate_calls"] for run in chatty_runs),
            "chatty_blocked": max(run["chatty_blocked"] for run in chatty_runs),
        }
    if not peers:
        return found
    return found | {
        "bare_msgs_per_s": statistics.median(bare),
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
    }
