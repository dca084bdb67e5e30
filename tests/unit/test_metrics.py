"""The event loop's lag and the decision time, as the worker exports them."""

from __future__ import annotations

import asyncio
import contextlib
import time

from worker.metrics import LOOP_TICK_S, Metrics


def sample(metrics: Metrics, name: str, suffix: str, le: str | None = None) -> float:
    labels = {"le": le} if le is not None else {}
    value = metrics.registry.get_sample_value(f"secure_session_{name}_seconds{suffix}", labels)
    assert value is not None
    return value


def lag_sample(metrics: Metrics, suffix: str, le: str | None = None) -> float:
    return sample(metrics, "event_loop_lag", suffix, le)


async def test_a_blocked_loop_shows_as_lag() -> None:
    metrics = Metrics()
    watch = asyncio.create_task(metrics.watch_loop())
    try:
        await asyncio.sleep(LOOP_TICK_S * 4.5)  # a few quiet ticks
        quiet = lag_sample(metrics, "_count")
        assert quiet >= 3
        assert lag_sample(metrics, "_bucket", "0.1") == quiet  # none late by 100 ms
        time.sleep(0.3)  # a blocking call in the loop: the next tick wakes ~0.25 s late
        await asyncio.sleep(LOOP_TICK_S * 2.5)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    late = lag_sample(metrics, "_count") - lag_sample(metrics, "_bucket", "0.1")
    assert late >= 1
    assert lag_sample(metrics, "_sum") >= 0.2


def test_decision_times_are_counted_by_bucket_a_batch_at_a_time() -> None:
    metrics = Metrics()
    now = time.monotonic()
    metrics.delivered([now - 0.004, now - 0.004, now - 2], now - 0.003)

    def decision(suffix: str, le: str | None = None) -> float:
        return sample(metrics, "decision", suffix, le)

    assert decision("_bucket", "0.003") == 0
    assert decision("_bucket", "0.005") == 2
    assert decision("_bucket", "1.0") == 2  # bounds written as prometheus_client writes them
    assert decision("_bucket", "2.5") == decision("_bucket", "+Inf") == decision("_count") == 3
    assert 2.008 <= decision("_sum") < 2.1
    # to the hand-over to the Kafka client (3 ms before the delivery): the worker's share
    assert sample(metrics, "decision_handover", "_bucket", "0.0005") == 0
    assert sample(metrics, "decision_handover", "_bucket", "0.002") == 2
    assert sample(metrics, "decision_handover", "_count") == 3


def test_build_info_and_the_standard_collectors_are_exported() -> None:
    from prometheus_client import generate_latest

    from worker.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    assert 'secure_session_build_info{aiokafka="' in text and 'faust="' in text
    for family in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
                   "python_gc_collections_total"):  # fmt: skip
        assert family in text
