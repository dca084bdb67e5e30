"""CPU per HTTP call: the worker's transport against httpx's own, in one process.

`python -m bench.runs.calls URL API_KEY TOKEN` (the benchmark runs it beside its reference API,
which then spends its CPU in another process). Both transports go through the worker's
`Http.call` with the same pool size and calls at once; they take turns, twice each, and
the medians are printed as JSON: `{"worker_ms": …, "httpx_ms": …, …}`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import httpx

from bench.harness import API_KEY, Bench
from worker.validators.http import Http, Transport, new_transport

CALLS = 4000
AT_ONCE = 200


async def cpu_per_call(
    transport: Transport | httpx.AsyncBaseTransport, url: str, key: str, token: str
) -> float:
    """Milliseconds of this process's CPU a call, `AT_ONCE` calls in flight."""
    http = Http(transport, retries=0, backoff_s=0, connect_timeout_s=5, max_concurrent=AT_ONCE)

    async def build() -> httpx.Request:
        return httpx.Request("POST", url, json={"token": token}, headers={"Authorization": key})

    async def calls(n: int) -> None:
        # a guard only (CPU is what is timed): httpx's own pool of 200 queues calls for seconds
        answers = await asyncio.gather(*(http.call(build, 60) for _ in range(n)))
        assert all(a.status == 200 for a in answers), {a.problem for a in answers}

    try:
        await calls(AT_ONCE)  # the connections opened
        started = time.process_time()
        await calls(CALLS)
        return (time.process_time() - started) / CALLS * 1000
    finally:
        await transport.aclose()


async def main(url: str, key: str, token: str) -> None:
    limits = httpx.Limits(max_connections=AT_ONCE, max_keepalive_connections=AT_ONCE)
    worker: list[float] = []
    stock: list[float] = []
    for _ in range(2):
        worker.append(await cpu_per_call(new_transport(AT_ONCE), url, key, token))
        httpx_own = httpx.AsyncHTTPTransport(limits=limits)
        stock.append(await cpu_per_call(httpx_own, url, key, token))
    print(
        json.dumps(
            {
                "call_cpu_worker_ms": statistics.median(worker),
                "call_cpu_httpx_ms": statistics.median(stock),
                "call_cpu_ratio": statistics.median(worker) / statistics.median(stock),
            }
        )
    )


async def call_cpu(b: Bench) -> dict[str, Any]:
    """CPU per call of the worker's HTTP client and of httpx's own (this module's main), in a
    process of their own, so that the API's CPU (here) is not counted."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.runs.calls",
        b.server.url,
        API_KEY,
        "tok-c0",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"bench.runs.calls failed ({proc.returncode})")
    figures: dict[str, Any] = json.loads(out)
    return figures


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
