"""Faults in the middle of a stream: a secret file removed, an Authorization API that hangs.

A removed secret blocks as `misconfigured` (nothing sent, the value never shown) and the
session's state is left as it was; back, it validates again. While the API hangs, the
worker holds at most SECURE_SESSION_MAX_HELD_MESSAGES and leaves the rest in Kafka:
its memory stays bounded, and nothing is lost when the API answers.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import bot, connector
from tests.integration.harness import API_KEY, Harness, event, reason
from worker.demo.broker import free_port

pytestmark = pytest.mark.integration


def test_secret_file_removed_mid_stream(harness: Harness) -> None:
    h = harness
    h.start_worker(h.write_config([bot("short", interval=1)], [connector("main", h.server.url)]))
    h.api.tokens["tok-sec"] = "sue"
    h.send(event("s-sec", "m0", "tok-sec", bot="short"))
    h.wait_decisions("s-sec", 1)

    secret = h.secrets / "acme" / "api-key"
    secret.unlink()
    time.sleep(1.2)  # the interval lapses: the next message needs a call, and its secret
    h.send(event("s-sec", "m1", "tok-sec", bot="short"))
    out = h.wait_decisions("s-sec", 2)[-1]
    assert reason(out) == "misconfigured"
    assert out.doc is not None and "srn:vault::acme:secret:api-key" in out.doc["detail"]
    assert h.api.calls["tok-sec"] == 1  # nothing was sent without it

    secret.write_text(API_KEY + "\n")  # restored: used at the next call, no restart
    h.send(event("s-sec", "m2", "tok-sec", bot="short"))
    assert reason(h.wait_decisions("s-sec", 3)[-1]) == "validated"
    assert h.api.calls["tok-sec"] == 2


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


@pytest.mark.timeout(180)
def test_memory_stays_bounded_while_the_api_hangs(harness: Harness) -> None:
    h = harness
    port = free_port()
    h.extra_env |= {
        "SECURE_SESSION_MAX_HELD_MESSAGES": "100",
        "SECURE_SESSION_WEB_ENABLED": "1",
        "SECURE_SESSION_WEB_PORT": str(port),
    }
    config = h.write_config([bot("secure")], [connector("main", h.server.url, timeout=30)])
    worker = h.start_worker(config)
    h.api.tokens["tok-hang"] = "hal"
    h.api.delay_s["tok-hang"] = 12.0  # the API hangs on this session's first call
    payload = "x" * 20_000  # 20 KB a message: 30 MB for the whole stream
    messages = 1_500
    time.sleep(1)
    before = rss_kib(worker.pid)
    h.send(
        *[event("s-hang", f"m{i}", "tok-hang", payload={"text": payload}) for i in range(messages)]
    )

    held, peak = [], before
    deadline = time.monotonic() + 8  # while the call hangs
    while time.monotonic() < deadline:
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        held.append(
            float(re.search(r"^secure_session_held_messages (\S+)", metrics, re.M).group(1))
        )  # type: ignore[union-attr]
        peak = max(peak, rss_kib(worker.pid))
        time.sleep(0.25)
    assert max(held) == 100  # the cap: intake paused, the rest waits in Kafka
    assert len(h.decisions("s-hang")) == 0
    grown_mib = (peak - before) / 1024
    # 1,500 x 20 KB held in memory would be 30 MB of payload alone (more as Python objects)
    assert grown_mib < 20, f"RSS grew {grown_mib:.1f} MiB while the API hung"

    outs = h.wait_decisions("s-hang", messages, timeout=60)  # the API answers: all decided
    assert [reason(o) for o in outs] == ["validated"] + ["cached"] * (messages - 1)
    assert h.api.calls["tok-hang"] == 1
    print(f"\nAPI hung 12 s: held at most {max(held):.0f} messages, RSS +{grown_mib:.1f} MiB")


def test_connector_deleted_while_sessions_use_it(harness: Harness) -> None:
    h = harness
    h.start_worker(None)
    path = h.write_config([bot("live")], [connector("main", h.server.url)])
    assert h.cli("config", "publish", str(path)).returncode == 0
    h.api.tokens["tok-del"] = "dee"

    def one(n: int) -> str:
        h.send(event("s-del", f"m{n}", "tok-del", bot="live"))
        return reason(h.wait_decisions("s-del", n + 1)[-1])

    n = 0
    while one(n) == "unknown_bot":  # until the worker has read the published config
        n += 1
        time.sleep(0.2)
    assert one(n := n + 1) == "cached"
    deleted = h.cli("config", "delete", "--connector", "acme/main")
    assert deleted.returncode == 0, deleted.stderr
    # fail closed at once, even for a session validated a moment ago: nothing is called
    while (got := one(n := n + 1)) == "cached":
        time.sleep(0.2)
    assert got == "misconfigured"
    out = h.decisions("s-del")[-1]
    assert out.doc is not None and out.doc["detail"] == "connector acme/main not found"
    assert h.api.calls["tok-del"] == 1
    assert h.cli("config", "publish", str(path)).returncode == 0  # back: the state still holds
    while (got := one(n := n + 1)) == "misconfigured":
        time.sleep(0.2)
    assert got == "cached" and h.api.calls["tok-del"] == 1


def test_faust_stall_check_is_fed_by_the_intake_and_still_sees_a_real_stall(
    harness: Harness,
) -> None:
    """Issue 16: the fast path bypasses Faust's streams, whose livelock check ("Stream has
    not started processing") reads when each partition last handed a record over. With a
    2 s threshold: a backlog drained for ~8 s through a slow API logs no stall; an API that
    hangs with every hold slot taken does."""
    h = harness
    h.extra_env |= {
        "SECURE_SESSION_STALL_WARNING_S": "2",
        "SECURE_SESSION_MAX_CONCURRENT_CALLS": "20",
        "SECURE_SESSION_MAX_HELD_MESSAGES": "50",
    }
    config = h.write_config([bot("secure")], [connector("main", h.server.url, timeout=60)])
    sessions = 400
    for s in range(sessions):
        h.api.tokens[f"tok-{s}"] = f"u{s}"
    h.api.default_delay_s = 0.4  # 20 calls at a time: ~50 validations a second
    h.send(*[event(f"s{s}", f"m{i}", f"tok-{s}") for i in range(2) for s in range(sessions)])
    h.start_worker(config)  # a backlog from the start
    h.wait(lambda: [o for o in h.outputs if o.topic == "allowed"], 2 * sessions, 60, "decided")
    log = h.logs[-1]
    assert "Stream has not started processing" not in log.read_text()
    assert "Stream stopped processing" not in log.read_text()

    h.api.tokens["tok-hang"] = "hal"
    h.api.delay_s["tok-hang"] = 40.0  # hangs: 50 held, the intake stops, a backlog waits
    h.send(*[event("s-hang", f"m{i}", "tok-hang") for i in range(500)])
    deadline = time.monotonic() + 30
    while "Stream stopped processing" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "Stream stopped processing" in log.read_text()
    assert "Stream has not started processing" not in log.read_text()  # fed from the first
