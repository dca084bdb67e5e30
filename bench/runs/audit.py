"""What the signed audit chain costs: `BENCH_ONLY=audit make bench`, and part of `make bench`.

The worker without and with `SECURE_SESSION_AUDIT_KEY_REF`, in alternating runs on the
same workloads: the cached path (sessions validated before, a backlog) and the slow API
(new sessions behind a 200 ms API, one call per 50 messages, 200 calls at a time). Each
pair runs back to back, first one then the other in turn, and the ratio reported is the
median of the pairs' ratios (signed / unsigned): the machine's drift between pairs
cancels. In-process, what one signed event costs (seal + its state's encoding).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.harness import CALL_LIMITS, Bench, committed, exact_end_offsets, worker_rate
from bench.runs.slow import slow_api
from bench.workloads import workload
from worker.audit import START, Sealer
from worker.decide import Chain, SessionState
from worker.events import Who, audit_event

KEY_REF = "srn:vault::bench:secret:audit-key"


def _signed_env(b: Bench) -> dict[str, str]:
    secrets = b.tmp / "secrets" / "bench"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "audit-key").write_text("bench audit key: 0123456789abcdef0123456789\n")
    return {
        "SECURE_SESSION_SECRETS_DIR": str(b.tmp / "secrets"),
        "SECURE_SESSION_AUDIT_KEY_REF": KEY_REF,
    }


def seal_cost_us(n: int = 20_000) -> float:
    """µs of CPU to seal one validation event and encode the state that carries its chain."""
    sealer = Sealer(b"k" * 32)
    validation = {
        "type": "baas",
        "connector": "api",
        "httpStatus": 200,
        "latencyMs": 201.3,
        "attempts": 1,
        "tokenFingerprint": "sha256:0123456789abcdef",
    }
    state = SessionState(1_764_600_000_000, True, "sha256:0123456789abcdef", "user-1", None, 3)
    movers = tuple((3, n, n, "ab" * 32) for n in range(4))
    started = time.process_time()
    for i in range(n):
        doc = audit_event(
            "validation",
            Who("acme", "bench", f"s{i}", f"m{i}"),
            i,
            "allowed",
            "validated",
            None,
            validation,
        )
        _raw, link = sealer.seal(doc, START)
        SessionState(
            state.validated_at_ms,
            True,
            state.fingerprint,
            None,
            None,
            3,
            Chain(link.seq, link.digest, movers),
        ).encode()
    return (time.process_time() - started) / n * 1e6


async def audit_cost(
    b: Bench, sessions: int, messages: int, slow_sessions: int, slow_per_session: int, rounds: int
) -> dict[str, Any]:
    limits = CALL_LIMITS  # every session validated once (bench/harness.py)
    variants = {"plain": limits, "signed": limits | _signed_env(b)}
    totals: dict[str, int] = {}
    for name, extra in variants.items():  # every session validated once, per variant
        tag = f"audit-{name}"
        t = b.topics(tag)
        await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
        worker = b.start_worker(tag, interval=3600, extra=extra)
        try:
            await b.produce(t["inbound"], workload(sessions, 1, "c"))
            await b.drain([t["allowed"]], sessions)
            while await committed(b, f"bench-{tag}", t["inbound"]) < sessions:
                await asyncio.sleep(0.5)
        finally:
            b.stop_worker(worker)
        await exact_end_offsets(b, f"bench-{tag}-sessions-changelog")
        totals[name] = sessions
    cached: dict[str, list[float]] = {n: [] for n in variants}
    slow: dict[str, list[float]] = {n: [] for n in variants}
    calls: dict[str, list[int]] = {n: [] for n in variants}
    for r in range(rounds):
        # each pair back to back, in turn first (a broker that slows as it fills favours
        # whichever runs first)
        order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
        for name, extra in order:
            tag = f"audit-{name}"
            t = b.topics(tag)
            records = workload(sessions, messages // sessions, "c")
            await b.produce(t["inbound"], records)
            totals[name] += len(records)
            cached[name].append(
                await worker_rate(
                    b, tag, totals[name], [t["allowed"]], totals[name], len(records), extra
                )
            )
        for name, extra in order:
            run = await slow_api(
                b, slow_sessions, slow_per_session, f"audit-slow-{name}-{r}", extra
            )
            slow[name].append(run["slow_msgs_per_s"])
            calls[name].append(run["calls"])
        print(
            f"  round {r + 1}: cached {cached['plain'][-1]:,.0f} / {cached['signed'][-1]:,.0f} "
            f"msg/s, slow API {slow['plain'][-1]:,.0f} / {slow['signed'][-1]:,.0f} msg/s "
            "(unsigned / signed)",
            flush=True,
        )

    def ratio(runs: dict[str, list[float]]) -> float:
        return statistics.median(s / p for p, s in zip(runs["plain"], runs["signed"], strict=True))

    return {
        "audit_cached_ratio": ratio(cached),
        "audit_slow_ratio": ratio(slow),
        "audit_cached_rounds": {n: [round(v) for v in runs] for n, runs in cached.items()},
        "audit_slow_rounds": {n: [round(v) for v in runs] for n, runs in slow.items()},
        "audit_slow_calls": calls,  # one per session: every session validated, none blocked
        "audit_seal_us": seal_cost_us(),
    }
