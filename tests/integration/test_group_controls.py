"""Revocation across a group of three workers, and refresh ahead, through the topics
(issue 20; CONTRACT "Revocation", "Refresh ahead")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event, reason
from worker.kafka import partition_for

pytestmark = pytest.mark.integration

SESSIONS = 24  # several on each of the harness's 4 partitions


@pytest.mark.timeout(240)
def test_revocations_reach_every_worker_of_the_group(broker: Broker, tmp_path: Path) -> None:
    """Three workers, sessions on every partition. After `revoke` (one session, and one
    identity's sessions), no message read after it is allowed without a new validation
    (one call each); the others stay cached; lifting restores caching with no call."""
    h = Harness(broker, tmp_path).start()
    try:
        sessions = [f"g-{n}" for n in range(SESSIONS)]
        assert {partition_for(s.encode(), 4) for s in sessions} == {0, 1, 2, 3}
        for n, s in enumerate(sessions):  # sessions 0-7 belong to alice, the rest each own
            h.api.tokens[f"tok-{s}"] = "alice" if n < 8 else f"user-{s}"
        con = connector("main", h.server.url)
        con["ResponseMapping"] = {"identity": "$.identity"}
        config = h.write_config([bot("secure", interval=3600)], [con])
        for _ in range(3):
            h.start_worker(config)
        h.wait_logged(b"Worker ready", range(3))

        def round_(n: int) -> list[str]:
            h.send(*[event(s, f"m{n}", f"tok-{s}") for s in sessions])
            return [reason(h.wait_decisions(s, n + 1, timeout=60)[n]) for s in sessions]

        assert round_(0) == ["validated"] * SESSIONS
        assert round_(1) == ["cached"] * SESSIONS
        calls = sum(h.api.calls.values())
        assert calls == SESSIONS
        assert h.cli("revoke", "--identity", "acme", "alice").returncode == 0
        assert h.cli("revoke", "--session", "acme", "secure", sessions[20]).returncode == 0
        time.sleep(1.5)  # a live worker reads a revocation within a second
        revoked = set(range(8)) | {20}
        expected = ["validated" if n in revoked else "cached" for n in range(SESSIONS)]
        assert round_(2) == expected
        assert sum(h.api.calls.values()) == calls + len(revoked)
        assert round_(3) == ["cached"] * SESSIONS  # validated since: cached again
        for args in (("--identity", "acme", "alice"), ("--session", "acme", "secure", "g-20")):
            assert h.cli("revoke", *args, "--lift").returncode == 0
        time.sleep(1.5)
        assert round_(4) == ["cached"] * SESSIONS
        assert sum(h.api.calls.values()) == calls + len(revoked)
        h.assert_clean()
    finally:
        h.stop()


def test_refresh_ahead_keeps_an_active_session_from_waiting(harness: Harness) -> None:
    """A 4 s interval, RefreshAhead 0.5, a message every 0.25 s for 10 s: only the first
    message waits for the API; the rest are cached, the session is refreshed in the
    background (at most once per 2 s), and each refresh is audited."""
    h = harness
    config = h.write_config(
        [bot("refresh", interval=4, RefreshAhead=0.5)], [connector("main", h.server.url)]
    )
    h.start_worker(config)
    s, tok = "r-1", "tok-r-1"
    h.api.tokens[tok] = "user-r"
    count = 40
    for n in range(count):
        h.send(event(s, f"m{n}", tok, bot="refresh"))
        time.sleep(0.25)
    reasons = [reason(o) for o in h.wait_decisions(s, count)]
    assert reasons == ["validated"] + ["cached"] * (count - 1)
    calls = h.api.calls[tok]
    assert 4 <= calls <= 1 + 10 / 2 + 1, calls  # the first, then one per 2 s at most
    validations = [a for a in h.audits(s) if a["kind"] == "validation"]
    assert len(validations) == calls
