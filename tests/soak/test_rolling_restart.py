"""A rolling restart of a 3-worker group re-validates no session (issue 16).

ROLLING_SESSIONS sessions (1,000 in `make test`, 100,000 in `make soak`) hold a valid
state: up to PREFILL_ABOVE they are validated once each by the group of three workers;
beyond, their states are written to the table's changelog before the workers start, in
the worker's own format and in batches (`Harness.write_states`; on tansu the workers'
one-record changelog batches validate only ~100 sessions a second once the log is large,
and a log of 100,000 one-record batches saturates the broker: that is the broker, not
what is tested here). Each worker is then stopped (SIGTERM) and replaced in turn, the next one
only once the group has settled, while messages of those sessions keep flowing. Then
every session sends one more message. The Authorization API must see no call beyond the
validations: each session's state moved with its partition.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import Broker
from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event
from tests.soak.report import write_block

pytestmark = pytest.mark.integration

SESSIONS = int(os.environ.get("ROLLING_SESSIONS", 1_000))
PREFILL_ABOVE = 20_000


@pytest.mark.timeout(600 + SESSIONS // 40)
def test_a_rolling_restart_revalidates_no_session(broker: Broker, tmp_path: Path) -> None:
    h = Harness(broker, tmp_path).start()
    h.extra_env["SECURE_SESSION_SHUTDOWN_DEADLINE_S"] = "6"
    try:
        for s in range(SESSIONS):
            h.api.tokens[f"tok-{s}"] = f"user-{s}"
        con = connector("main", h.server.url)
        config = h.write_config([bot("secure", interval=3600)], [con])
        started = time.monotonic()
        if SESSIONS > PREFILL_ABOVE:
            h.run(h.write_states(con, SESSIONS), timeout=600)
        for _ in range(3):
            h.start_worker(config)
        h.wait_logged(b"Worker ready", range(3))
        validated = 0
        if SESSIONS <= PREFILL_ABOVE:
            h.run(send(h, [(s, "m0") for s in range(SESSIONS)]), timeout=120)
            validated = wait_allowed(h, SESSIONS, timeout=60 + SESSIONS / 120)
        validate_s = time.monotonic() - started
        calls = sum(h.api.calls.values())
        assert calls == (SESSIONS if SESSIONS <= PREFILL_ABOVE else 0), calls

        stop = threading.Event()
        trickle = h.run_async(send_trickle(h, stop))
        restart_s = []
        for _ in range(3):
            old = h.workers[0]
            t0 = time.monotonic()
            old.send_signal(signal.SIGTERM)
            old.wait(30)
            h.workers.remove(old)
            h.start_worker(config)
            h.wait_logged(b"Worker ready", [len(h.logs) - 1])
            restart_s.append(time.monotonic() - t0)
            time.sleep(2)  # the group settles before the next worker goes
        stop.set()
        trickled = trickle.result(timeout=30)

        h.run(send(h, [(s, "m1") for s in range(SESSIONS)]), timeout=120)
        # on tansu every decision record is a one-record batch: ~400 a second at best
        wait_allowed(h, validated + trickled + SESSIONS, timeout=60 + SESSIONS / 120)
        revalidated = sum(h.api.calls.values()) - calls
        blocked = [o for o in h.outputs if o.topic == "blocked"]
        not_cached = sum(
            1
            for o in h.outputs
            if o.topic == "allowed" and o.header_reason not in ("validated", "cached")
        )
    finally:
        h.stop()
    how = "validated by 3 workers" if SESSIONS <= PREFILL_ABOVE else "written to the changelog"
    write_block(
        "rolling",
        [
            f"Last run: {time.strftime('%Y-%m-%d')}: {SESSIONS:,} sessions {how} "
            f"in {validate_s:.1f} s; each worker stopped and replaced in turn "
            f"(each {', '.join(f'{s:.1f}' for s in restart_s)} s to ready) with "
            f"{trickled:,} messages flowing; then one message per session: "
            f"**{revalidated} re-validated**, {len(blocked)} blocked.",
        ],
    )
    print({"sessions": SESSIONS, "revalidated": revalidated, "restart_s": restart_s})
    assert revalidated == 0
    assert not blocked and not not_cached
    h.assert_clean()


def wait_allowed(h: Harness, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = sum(1 for o in h.outputs if o.topic == "allowed")
        if n >= count:
            return n
        time.sleep(0.5)
    raise AssertionError(f"{n} of {count} allowed after {timeout} s")


async def send(h: Harness, messages: list[tuple[int, str]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=h.broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for s, message_id in messages:
            ev = event(f"s{s}", message_id, f"tok-{s}")
            await producer.send(h.topics["inbound"], orjson.dumps(ev), key=f"s{s}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def send_trickle(h: Harness, stop: threading.Event, rate: int = 200) -> int:
    """Messages of random sessions at `rate` a second until `stop`; returns how many."""
    producer = AIOKafkaProducer(bootstrap_servers=h.broker.bootstrap, linger_ms=5)
    await producer.start()
    sent = 0
    try:
        while not stop.is_set():
            for _ in range(rate // 10):
                s = random.randrange(SESSIONS)
                ev = event(f"s{s}", f"t{sent}", f"tok-{s}")
                await producer.send(h.topics["inbound"], orjson.dumps(ev), key=f"s{s}".encode())
                sent += 1
            await asyncio.sleep(0.1)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
