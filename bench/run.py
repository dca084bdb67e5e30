"""The benchmark: `make bench` (or `python -m bench.run`).

Runs against the embedded broker (or KAFKA_BOOTSTRAP_SERVERS) with the reference
Authorization API as the fake API (latency set per run), the worker as users run it (a
subprocess), and prints one table. Every ratio compares figures of the same run.
Figures go to bench/results.json and a chart to bench/results.png.

  bench/harness.py    the broker, the API, workers as subprocesses, timing by outputs
  bench/workloads.py  the inbound events
  bench/peers/        the baselines: the bare aiokafka loop, Quix Streams
  bench/runs/         one module per run
  bench/report.py     the table and the chart

Sizes come from the environment (defaults in brackets):
  BENCH_MESSAGES [100000]         messages of the cached-path and bare-loop runs
  BENCH_SESSIONS [1000]           sessions of the cached-path run
  BENCH_ROUNDS [3]                rounds of (bare loop, Quix Streams stateless and stateful,
                                  cached path, chatty new sessions): medians are reported
  BENCH_CHATTY_SESSIONS [1000], BENCH_CHATTY_PER_SESSION [50], BENCH_CHATTY_SPREAD [2500]
                                  the chatty run: session j begins at message 50 j, its
                                  others spread over the 2,500 after (API: 200 ms)
  BENCH_SLOW_SESSIONS [10000]     sessions of the slow-API run (200 ms a call)
  BENCH_SLOW_PER_SESSION [100]    messages per session there (1 call per this many)
  BENCH_SCALE_MESSAGES [300000]   messages of each scale-out run (1, 2, 3 workers)
  BENCH_LATENCY_SECONDS [10]      duration of each steady-rate latency run
  BENCH_PARTITIONS [8]            partitions of each topic
  BENCH_STATE_SESSIONS [1000000]  sessions in the table for the memory / restart run
  BENCH_AUDIT_ROUNDS [3]          pairs (unsigned, signed) of the audit-chain cost runs
  BENCH_AUDIT_SLOW_SESSIONS [4000], BENCH_AUDIT_SLOW_PER_SESSION [50]   their slow-API run
`BENCH_ONLY=cached|chatty|slow|audit|calls|latency|refresh|scale|state` runs one part and
prints its figures as JSON (`chatty`: cached and chatty rounds, without the peers);
`BENCH_PROFILE=FILE` records the first worker timed (whose tag begins with
`BENCH_PROFILE_TAG`, if set: cached, chatty, slow, ...) with py-spy (raw stacks).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness import API_KEY, Bench, env_int
from bench.report import chart, table
from bench.runs.audit import audit_cost
from bench.runs.cached import cached_path
from bench.runs.calls import call_cpu
from bench.runs.latency import latency_figures, refresh_ahead
from bench.runs.scale import scale_out
from bench.runs.slow import slow_api
from bench.runs.state import state_at_scale
from worker.demo.authapi import AuthorizationAPI, RunningAPI
from worker.demo.broker import EmbeddedBroker

HERE = Path(__file__).parent

Run = Callable[[Bench], Awaitable[dict[str, Any]]]


def _chatty() -> tuple[int, int, int]:
    return (
        env_int("BENCH_CHATTY_SESSIONS", 1000),
        env_int("BENCH_CHATTY_PER_SESSION", 50),
        env_int("BENCH_CHATTY_SPREAD", 2500),
    )


async def cached(b: Bench, peers: bool = True) -> dict[str, Any]:
    found = await cached_path(
        b,
        env_int("BENCH_SESSIONS", 1000),
        env_int("BENCH_MESSAGES", 100_000),
        env_int("BENCH_ROUNDS", 3),
        _chatty(),
        peers,
    )
    return found


async def chatty(b: Bench) -> dict[str, Any]:
    return await cached(b, peers=False)


async def slow(b: Bench) -> dict[str, Any]:
    found = await slow_api(
        b, env_int("BENCH_SLOW_SESSIONS", 10_000), env_int("BENCH_SLOW_PER_SESSION", 100)
    )
    if "cached_msgs_per_s" in b.results:
        found["slow_ratio"] = found["slow_msgs_per_s"] / b.results["cached_msgs_per_s"]
    return found


async def audit(b: Bench) -> dict[str, Any]:
    return await audit_cost(
        b,
        env_int("BENCH_SESSIONS", 1000),
        env_int("BENCH_MESSAGES", 100_000),
        env_int("BENCH_AUDIT_SLOW_SESSIONS", 4000),
        env_int("BENCH_AUDIT_SLOW_PER_SESSION", 50),
        env_int("BENCH_AUDIT_ROUNDS", 3),
    )


async def latency(b: Bench) -> dict[str, Any]:
    seconds = env_int("BENCH_LATENCY_SECONDS", 10)
    found = await latency_figures(b, 2000, seconds, "hop")
    found |= await latency_figures(b, 2000, seconds, "worker")
    if "cached_msgs_per_s" in b.results:
        half = found["half_peak_rate"] = round(b.results["cached_msgs_per_s"] / 2)
        print(f"latency at {half} msg/s...", flush=True)
        found |= await latency_figures(b, half, seconds, "half_peak")
    return found


async def scale(b: Bench) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for n in (1, 2, 3):
        print(f"  {n} worker(s)...", flush=True)
        found |= await scale_out(
            b, n, env_int("BENCH_SESSIONS", 1000), env_int("BENCH_SCALE_MESSAGES", 300_000)
        )
    return found


async def state(b: Bench) -> dict[str, Any]:
    sessions = env_int("BENCH_STATE_SESSIONS", 1_000_000)
    return await state_at_scale(b, sessions) if sessions else {}


RUNS: dict[str, tuple[str, Run]] = {
    "cached": ("bare loop, Quix Streams, cached path and chatty new sessions", cached),
    "chatty": ("cached path and chatty new sessions", chatty),
    "slow": ("slow API", slow),
    "audit": ("the signed audit chain's cost", audit),
    "calls": ("CPU per HTTP call", call_cpu),
    "latency": ("latency at 2,000 msg/s", latency),
    "refresh": ("refresh-ahead", refresh_ahead),
    "scale": ("scale-out", scale),
    "state": ("sessions in the table", state),
}
"""Every run, in the order `make bench` runs them (all but `chatty`, part of `cached`)."""


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
    for prefix, count in (
        ("s", env_int("BENCH_SLOW_SESSIONS", 10_000)),
        ("c", env_int("BENCH_SESSIONS", 1000)),
        ("n", env_int("BENCH_CHATTY_SESSIONS", 1000)),
        ("l", 500),
    ):
        for n in range(count):
            api.tokens[f"tok-{prefix}{n}"] = f"user-{n}"
    only = os.environ.get("BENCH_ONLY")
    if only is not None and only not in RUNS:
        raise SystemExit(f"BENCH_ONLY={only}: one of {', '.join(RUNS)}")
    r = bench.results
    try:
        for name, (what, run) in RUNS.items():
            if only == name or (only is None and name != "chatty"):
                print(f"{what}...", flush=True)
                r |= await run(bench)
    finally:
        for proc in list(bench.workers):
            bench.stop_worker(proc)
        await server.stop()
        if broker is not None:
            broker.stop()
    r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    if only is not None:
        print(json.dumps(r))
        return
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
