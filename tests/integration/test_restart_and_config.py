"""State across a worker restart, and configuration applied live from the topics."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event, reason
from worker.demo.authapi import AuthorizationAPI, RunningAPI
from worker.demo.broker import free_port
from worker.kafka import partition_for

pytestmark = pytest.mark.integration


def test_restart_keeps_validated_sessions(harness: Harness) -> None:
    h = harness
    config = h.write_config([bot("secure")], [connector("main", h.server.url)])
    worker = h.start_worker(config)
    ok, bad = "s-ok", "s-bad"
    h.api.tokens["tok-ok"] = "alice"
    h.send(event(ok, "m0", "tok-ok"), event(bad, "m0", "tok-bad"))
    h.wait_decisions(ok, 1)
    h.wait_decisions(bad, 1)
    h.stop_worker(worker)

    h.start_worker(config)
    # the memory store read its partitions itself, not through Faust's replay (store.py)
    assert "loaded 4 table partitions" in h.logs[-1].read_text()
    h.send(event(ok, "m1", "tok-ok"), event(bad, "m1", "tok-bad"))
    outs = h.wait_decisions(ok, 2)
    assert [reason(o) for o in outs] == ["validated", "cached"]
    assert h.api.calls["tok-ok"] == 1  # no new call inside the interval
    # a denied session is never allowed from state: it is asked again, and denied again
    assert [reason(o) for o in h.wait_decisions(bad, 2)] == ["denied", "denied"]


def test_config_published_to_topics_applies_without_restart(harness: Harness) -> None:
    h = harness
    h.start_worker(None)
    other = AuthorizationAPI(api_key="test-api-key-7f3a9c", tokens={"tok": "bob"})
    other_server = h.run(RunningAPI(other).start())
    h.api.tokens["tok"] = "alice"
    try:

        def publish(interval: float, url: str, secure: bool = True) -> None:
            b = bot("live", interval=interval)
            b["SecureSession"] = secure
            path = h.write_config([b], [connector("main", url)])
            done = h.cli("config", "publish", str(path))
            assert done.returncode == 0, done.stderr

        def decide_one() -> str:
            s = f"s-{uuid.uuid4().hex[:6]}"
            h.send(event(s, "m", "tok", bot="live"))
            return reason(h.wait_decisions(s, 1)[0])

        def eventually(expected: str) -> None:
            seen = [decide_one() for _ in range(1)]
            for _ in range(40):
                if seen[-1] == expected:
                    return
                seen.append(decide_one())
            raise AssertionError(f"never {expected}: {seen}")

        assert decide_one() == "unknown_bot"
        publish(300, h.server.url)
        eventually("validated")
        publish(300, other_server.url)  # a new endpoint
        for _ in range(40):
            if decide_one() == "validated" and other.calls["tok"]:
                break
        assert other.calls["tok"] >= 1
        calls = h.api.calls["tok"]
        assert decide_one() == "validated"
        assert h.api.calls["tok"] == calls  # the old endpoint is not called any more
        publish(300, other_server.url, secure=False)  # switched off
        eventually("not_required")
        # a bad record on the config topic is skipped, the last good one stays in force
        h.run(h.producer.send_and_wait(h.topics["bots"], b"{oops", key=b"acme/live"))
        assert decide_one() == "not_required"
        deleted = h.cli("config", "delete", "--bot", "acme/live")
        assert deleted.returncode == 0, deleted.stderr
        eventually("unknown_bot")
    finally:
        h.run(other_server.stop())
    assert "skipped bot config record" in h.logs[0].read_text()


def test_invalid_config_file_is_refused_with_file_field_and_why(harness: Harness) -> None:
    h = harness
    b = bot("x")
    b["SecureSessionConfig"]["ValidationInterval"] = -5
    path = h.write_config([b], [connector("main", h.server.url)])
    proc = h.cli("worker", config=path)
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert "bots[0]" in proc.stderr and "SecureSessionConfig.ValidationInterval" in proc.stderr
    assert "minimum" in proc.stderr


def test_send_command_keys_events_by_session(harness: Harness) -> None:
    h = harness
    h.start_worker(h.write_config([bot("secure")], [connector("main", h.server.url)]))
    h.api.tokens["tok-cli"] = "carol"
    events = h.tmp / "events.jsonl"
    lines = [event("s-cli", f"m{i}", "tok-cli") for i in range(3)]
    events.write_text("\n".join(json.dumps(e) for e in lines) + "\nnot json\n")
    done = h.cli("send", str(events))
    assert done.returncode == 0, done.stderr
    assert "sent 4 events" in done.stdout
    outs = h.wait_decisions("s-cli", 3)
    assert [reason(o) for o in outs] == ["validated", "cached", "cached"]
    assert h.api.calls["tok-cli"] == 1


def test_idle_sessions_expire_with_a_tombstone_on_the_changelog(harness: Harness) -> None:
    h = harness
    h.extra_env |= {"SECURE_SESSION_SWEEP_EVERY_S": "0.5", "SECURE_SESSION_EXPIRY_MIN_S": "0"}
    h.start_worker(h.write_config([bot("short", interval=1)], [connector("main", h.server.url)]))
    h.api.tokens["tok-idle"] = "ida"
    h.send(event("s-idle", "m0", "tok-idle", bot="short"))
    h.wait_decisions("s-idle", 1)

    async def changelog() -> list[tuple[bytes, bytes | None]]:
        consumer = AIOKafkaConsumer(
            f"{h.app_id}-sessions-changelog",
            bootstrap_servers=h.broker.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=1000)
            return [(m.key, m.value) for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()

    key = b"acme/short/s-idle"
    for _ in range(40):
        records = [r for r in h.run(changelog()) if r[0] == key]
        if records and records[-1][1] is None:
            break
        time.sleep(0.25)
    assert records[0][1] is not None and records[-1][1] is None  # written, then expired


@pytest.mark.parametrize("store", ["rocksdb"])
def test_restart_keeps_sessions_with_the_disk_store(harness: Harness, store: str) -> None:
    h = harness
    h.extra_env["SECURE_SESSION_STORE"] = store
    config = h.write_config([bot("secure")], [connector("main", h.server.url)])
    worker = h.start_worker(config)
    h.api.tokens["tok-disk"] = "dana"
    h.send(event("s-disk", "m0", "tok-disk"))
    h.wait_decisions("s-disk", 1)
    h.stop_worker(worker)
    h.start_worker(config)
    h.send(event("s-disk", "m1", "tok-disk"))
    assert [reason(o) for o in h.wait_decisions("s-disk", 2)] == ["validated", "cached"]
    assert h.api.calls["tok-disk"] == 1
    assert any((h.tmp / "data").rglob("*.sst")) or any((h.tmp / "data").rglob("*.log"))


def test_endpoint_guard_refuses_plain_http_and_private_targets(harness: Harness) -> None:
    h = harness
    h.extra_env["SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS"] = "0"
    h.start_worker(h.write_config([bot("secure")], [connector("main", h.server.url)]))
    h.api.tokens["tok-guard"] = "gus"
    h.send(event("s-guard", "m0", "tok-guard"))
    (out,) = h.wait_decisions("s-guard", 1)
    assert out.doc is not None and out.doc["reason"] == "misconfigured"
    assert "not https" in out.doc["detail"]
    assert h.api.calls["tok-guard"] == 0  # nothing was sent


def test_circuit_breaker_stops_calling_a_failing_api_and_recovers(harness: Harness) -> None:
    h = harness
    h.extra_env |= {
        "SECURE_SESSION_CIRCUIT_FAILURES": "2",
        "SECURE_SESSION_CIRCUIT_COOLDOWN_S": "1",
        "SECURE_SESSION_HTTP_RETRIES": "0",
        "SECURE_SESSION_LOG_FORMAT": "json",
    }
    h.start_worker(h.write_config([bot("secure")], [connector("main", h.server.url)]))

    def one(session: str, token: str) -> Any:
        before = len(h.decisions(session))
        h.send(event(session, f"m{before}", token))
        return h.wait_decisions(session, before + 1)[-1]

    for n in range(2):
        h.api.script[f"tok-down-{n}"] = [503]
        assert reason(one(f"s-down-{n}", f"tok-down-{n}")) == "authorization_unavailable"
    h.api.tokens["tok-paused"] = "pia"
    paused = one("s-paused", "tok-paused")
    assert reason(paused) == "authorization_unavailable"
    assert paused.doc is not None and "circuit open" in paused.doc["detail"]
    assert h.api.calls["tok-paused"] == 0  # the failing API was not called
    time.sleep(1.2)
    h.api.tokens["tok-back"] = "bea"
    assert reason(one("s-back", "tok-back")) == "validated"  # the trial call closes it
    assert reason(one("s-paused", "tok-paused")) == "validated"
    # JSON logs: every line one object; circuit changes name their connector
    lines = [json.loads(line) for line in h.logs[0].read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    circuit = [
        (x["message"].split(":")[0], x.get("connector"))
        for x in lines
        if x["message"].startswith("circuit")
    ]
    assert circuit == [("circuit open", "acme/main"), ("circuit closed", "acme/main")]


def test_metrics_and_health_endpoints(harness: Harness) -> None:
    h = harness
    port = free_port()
    h.extra_env |= {"SECURE_SESSION_WEB_ENABLED": "1", "SECURE_SESSION_WEB_PORT": str(port)}
    h.start_worker(h.write_config([bot("secure")], [connector("main", h.server.url)]))
    h.api.tokens["tok-m"] = "mia"
    h.send(*[event("s-m", f"m{i}", "tok-m") for i in range(3)], event("s-x", "x", bot="nobody"))
    h.wait_decisions("s-m", 3)
    h.wait_decisions("s-x", 1)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/readyz").json() == {"ready": True}
    text = httpx.get(f"{base}/metrics").text
    decisions = "secure_session_decisions_total"
    allowed = 'bot="secure",decision="allowed",organization="acme"'
    assert f'{decisions}{{{allowed},reason="validated"}} 1.0' in text
    assert f'{decisions}{{{allowed},reason="cached"}} 2.0' in text
    # every configured bot's series exist from the start, at 0
    blocked = 'bot="secure",decision="blocked",organization="acme"'
    assert f'{decisions}{{{blocked},reason="misconfigured"}} 0.0' in text
    # an event's bot name is not a label (its sender chooses it): unconfigured bots are one
    none = 'bot="(none)",decision="blocked",organization="(none)"'
    assert f'{decisions}{{{none},reason="unknown_bot"}} 1.0' in text
    assert (
        'secure_session_validations_total{connector="acme/main",outcome="allowed",type="baas"} 1.0'
        in text
    )
    assert "secure_session_validation_seconds_bucket" in text
    assert 'secure_session_cache_hits_total{bot="secure",organization="acme"} 2.0' in text
    assert 'secure_session_circuit_open{connector="acme/main"} 0.0' in text
    # the group's lag, every partition of the inbound topic
    assert len(re.findall(r'^secure_session_consumer_lag\{partition="\d"\}', text, re.M)) == 4
    assert re.search(r"^secure_session_event_loop_lag_seconds_count [1-9]", text, re.M)
    # the four decisions, timed once the broker acknowledged them (just after they can be read)
    deadline = time.monotonic() + 5
    while "\nsecure_session_decision_seconds_count 4.0\n" not in text:
        assert time.monotonic() < deadline, re.findall(
            r"^secure_session_decision_sec.*", text, re.M
        )
        time.sleep(0.05)
        text = httpx.get(f"{base}/metrics").text


def test_a_state_off_its_session_partition_is_found_expired_and_gone_after_a_restart(
    harness: Harness,
) -> None:
    """Issue 16: a keyless record (or another partitioner) puts a session's state on another
    partition than its session id's; its tombstone and `sessions show` must go there too, or
    an expired session comes back at the next restart."""
    h = harness
    h.extra_env |= {"SECURE_SESSION_SWEEP_EVERY_S": "0.5", "SECURE_SESSION_EXPIRY_MIN_S": "0"}
    config = h.write_config([bot("short", interval=3)], [connector("main", h.server.url)])
    worker = h.start_worker(config)
    session = "s-away"
    home = partition_for(session.encode(), 4)
    away = (home + 1) % 4
    h.api.tokens["tok-away"] = "al"

    async def send_to(partition: int, message_id: str) -> None:
        value = orjson.dumps(event(session, message_id, "tok-away", bot="short"))
        await h.producer.send_and_wait(h.topics["inbound"], value, key=None, partition=partition)

    h.run(send_to(away, "m0"))
    assert [reason(o) for o in h.wait_decisions(session, 1)] == ["validated"]
    shown = json.loads(h.cli("sessions", "show", "acme", "short", session, "--json").stdout)
    assert shown["changelog"]["partition"] == away and shown["state"]["allowed"] is True

    key = f"acme/short/{session}".encode()

    async def last_on(partition: int) -> tuple[bool, bytes | None]:
        tp = TopicPartition(f"{h.app_id}-sessions-changelog", partition)
        consumer = AIOKafkaConsumer(bootstrap_servers=h.broker.bootstrap, group_id=None)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            found: tuple[bool, bytes | None] = (False, None)
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for m in batch.get(tp, ()):
                if m.key == key:
                    found = (True, m.value)
            return found
        finally:
            await consumer.stop()

    deadline = time.monotonic() + 15
    while h.run(last_on(away)) != (True, None) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert h.run(last_on(away)) == (True, None)  # expired where it lives
    assert h.run(last_on(home)) == (False, None)  # and nothing written where it does not
    h.stop_worker(worker)
    h.start_worker(config)
    h.run(send_to(away, "m1"))
    assert [reason(o) for o in h.wait_decisions(session, 2)] == ["validated", "validated"]
    assert h.api.calls["tok-away"] == 2  # the expired state did not come back


def test_a_long_join_says_what_it_waits_for(harness: Harness) -> None:
    """Issue 18: after `(Re-)joining group` the log said nothing for up to a session timeout."""
    h = harness
    h.extra_env |= {"KAFKA_SESSION_TIMEOUT_S": "9", "KAFKA_REBALANCE_TIMEOUT_S": "9"}
    config = h.write_config([bot("secure")], [connector("main", h.server.url)])
    first = h.start_worker(config)
    time.sleep(3)  # joined
    first.kill()  # gone without leaving: the group waits for its session to time out
    first.wait()
    h.workers.remove(first)
    port = free_port()
    h.extra_env |= {"SECURE_SESSION_WEB_ENABLED": "1", "SECURE_SESSION_WEB_PORT": str(port)}
    h.start_worker(config, wait=False)
    log = h.logs[-1]
    deadline = time.monotonic() + 30
    while "waiting" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text()
    assert "for consumer group" in text and "KAFKA_SESSION_TIMEOUT_S" in text, text[-2000:]
    # the broker is reachable while the group settles: the metric says so (it read 0)
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "secure_session_kafka_connected 1.0" in metrics


def test_a_changelog_written_in_batches_survives_a_rebalance(harness: Harness) -> None:
    """On tansu a partition's end offset is its last batch's base offset + 1: a standby
    that followed a changelog written in batches read past it, and Faust's recovery check
    stopped the worker at the next rebalance (ConsistencyError: persisted offset higher
    than highwater; seen in the 100,000-session rolling restart)."""
    h = harness
    con = connector("main", h.server.url)
    config = h.write_config([bot("secure", interval=3600)], [con])
    sessions = 400
    h.run(h.write_states(con, sessions, flush_every=40))  # batches of ~10 a partition
    first = h.start_worker(config)
    h.wait_logged(b"Worker ready", [0])
    h.start_worker(config)  # the first one now keeps standbys of the second's partitions
    h.wait_logged(b"Worker ready", [1])
    h.wait_logged(b"Worker ready", [0], times=2)
    time.sleep(2)  # the standbys read their changelog partitions to the end
    h.start_worker(config)  # the next rebalance
    h.wait_logged(b"Worker ready", [2])
    h.wait_logged(b"Worker ready", [0], times=3)
    time.sleep(2)
    for n, worker in enumerate(h.workers):
        assert worker.poll() is None, h.logs[n].read_text()[-3000:]
    assert first in h.workers
    for s in range(sessions):
        h.send(event(f"s{s}", "m1", f"tok-{s}"), key=f"s{s}".encode())
    allowed = h.wait(
        lambda: [o for o in h.outputs if o.topic == "allowed"], sessions, 60, "allowed"
    )
    assert {o.header_reason for o in allowed} == {"cached"}
    assert sum(h.api.calls.values()) == 0
