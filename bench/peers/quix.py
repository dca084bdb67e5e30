"""Quix Streams as a peer: the app (bench/peers/quix_app.py) in its own process, timed by
its output records' timestamps as the worker is."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.harness import PARTITIONS, Bench, decision_span


async def quix_rate(
    b: Bench, records: list[tuple[bytes, bytes]], tag: str, stateful: bool
) -> float:
    """Quix Streams (bench/peers/quix_app.py, its own process) on the same records (a backlog);
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
    command = [sys.executable, "-m", "bench.peers.quix_app", "--bootstrap", b.bootstrap]
    command += ["--input", src, "--output", dst, "--count", str(len(records))]
    command += ["--group", f"bench-quix-{kind}{tag}", "--state-dir", str(b.tmp / f"quix{tag}")]
    command += ["--stateful"] if stateful else []
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"Quix Streams failed: {done.stderr.decode()[-2000:]}")
    return len(records) / await decision_span(b, [dst], len(records), since_ms, len(records))
