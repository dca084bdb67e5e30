"""The pipeline without Kafka: order, one call per session, ordered acks, back-pressure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from prometheus_client import generate_latest

from worker.config import Registry, parse_bot, parse_connector
from worker.metrics import Metrics
from worker.pipeline import Pipeline, Send
from worker.settings import Topics
from worker.validators.auth import ConnectorAuth
from worker.validators.baas import BaasValidator
from worker.validators.calls import ConnectorCalls
from worker.validators.circuit import CircuitBreaker
from worker.validators.http import Http
from worker.validators.introspection import IntrospectionValidator
from worker.validators.jwt import JwtValidator
from worker.vault import Vault

BOT = {
    "Name": "b",
    "Organization": "acme",
    "SecureSession": True,
    "SecureSessionConfig": {"Type": "baas", "ValidationInterval": 60, "ApiAlias": "A"},
}
CON = {
    "Alias": "A",
    "Organization": "acme",
    "Method": "POST",
    "Endpoint": "https://a.example/v",
    "RequestMapping": {"t": {"type": "header", "name": "X-T", "inputPath": "$.t"}},
}


class Gate:
    """An Authorization API that answers only when the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.calls: list[str] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.headers["X-T"])
        await self.open.wait()
        return httpx.Response(200 if request.headers["X-T"].startswith("ok") else 403)


def build(
    handler: Callable[[httpx.Request], Awaitable[httpx.Response]],
    send: Send,
    max_held: int = 100,
    more_bots: tuple[dict[str, Any], ...] = (),
) -> Pipeline:
    """A pipeline over bot acme/b, connector acme/A, an in-memory table and `handler`."""
    registry = Registry()
    for b in (BOT, *more_bots):
        registry.bots[f"acme/{b['Name']}"] = parse_bot(b, "t")
    registry.connectors["acme/A"] = parse_connector(CON, "t")
    transport = httpx.MockTransport(handler)
    vault = Vault(None, {})
    http = Http(transport, retries=0, backoff_s=0, connect_timeout_s=1, max_concurrent=10)
    calls = ConnectorCalls(http, ConnectorAuth(http, vault), CircuitBreaker(100, 1))
    return Pipeline(
        registry=registry,
        baas=BaasValidator(calls, vault),
        introspection=IntrospectionValidator(calls, vault),
        jwt=JwtValidator(vault),
        table={},
        send=send,
        topics=Topics(),
        max_held=max_held,
        metrics=Metrics(),
    )


def make(gate: Gate, max_held: int = 100) -> tuple[Pipeline, list[tuple[str, Any]], list[int]]:
    sent: list[tuple[str, Any]] = []
    acked: list[int] = []

    async def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        doc = orjson.loads(value)
        sent.append((topic, doc["id"] if topic == Topics().allowed else doc))

    return build(gate.handler, send, max_held), sent, acked


def ev(session: str, i: int, token: str) -> bytes:
    return orjson.dumps(
        {
            "id": f"{session}-{i}",
            "organization": "acme",
            "bot": "b",
            "sessionId": session,
            "context": {"t": token},
        }
    )


async def test_waiters_are_decided_in_order_by_one_call_and_acks_follow_offsets() -> None:
    gate = Gate()
    p, sent, acked = make(gate)
    for i in range(3):
        await p.submit(b"s1", ev("s1", i, "ok-1"), 0, lambda i=i: acked.append(i))
    await p.submit(b"s2", ev("s2", 0, "bad"), 0, lambda: acked.append(3))
    await asyncio.sleep(0.01)
    assert sent == [] and acked == [] and p.held == 2
    gate.open.set()
    await p.drain_all()
    allowed = [v for t, v in sent if t == "bot.messages.allowed"]
    assert allowed == ["s1-0", "s1-1", "s1-2"]
    assert sorted(gate.calls) == ["bad", "ok-1"]
    assert acked == [0, 1, 2, 3]  # in offset order, whatever finished first
    counts = {r: p.metrics.count(r) for r in ("validated", "cached", "denied")}
    assert counts == {"validated": 1, "cached": 2, "denied": 1}


async def test_intake_pauses_when_too_many_records_wait() -> None:
    gate = Gate()
    p, _, acked = make(gate, max_held=3)
    for i in range(3):
        await p.submit(b"s1", ev("s1", i, "ok"), 0, lambda: acked.append(1))
    blocked = asyncio.create_task(p.submit(b"s1", ev("s1", 3, "ok"), 0, lambda: acked.append(1)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # back-pressure: the agent loop waits
    gate.open.set()
    await asyncio.wait_for(blocked, 1)
    await p.drain_all()
    assert len(acked) == 4 and len(gate.calls) == 1


async def test_a_value_that_cannot_be_a_header_is_token_invalid_and_never_stalls() -> None:
    """Found by tests/unit/test_fuzz.py: httpx raised on it, and the record was never acked."""
    gate = Gate()
    gate.open.set()
    p, sent, acked = make(gate)
    for i, token in enumerate(["tok\u00e9n", "a\r\nX-Admin: 1", "ok-1"]):
        await p.submit(b"s", ev(f"s{i}", 0, token), 0, lambda i=i: acked.append(i))
    await p.drain_all()
    blocked = [v for t, v in sent if t == "bot.messages.blocked"]
    assert [b["reason"] for b in blocked] == ["token_invalid", "token_invalid"]
    assert "X-T is not printable ASCII" in blocked[0]["detail"]
    assert gate.calls == ["ok-1"]  # nothing sent for the two others
    assert acked == [0, 1, 2]


async def test_each_decision_carries_when_its_message_came_in_and_audits_do_not() -> None:
    """The outbox times a decision from there to its delivery (worker/metrics.py)."""
    gate, sent = Gate(), []

    async def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        sent.append((topic, since))

    p = build(gate.handler, send)
    before = time.monotonic()
    await p.submit(b"s1", ev("s1", 0, "ok-1"), 0, lambda: None)  # waits for the call
    await p.submit(b"s2", b"not json", 0, lambda: None)  # blocked at once
    came_in = time.monotonic()
    await asyncio.sleep(0.05)
    gate.open.set()
    await p.drain_all()
    timed = {topic: since for topic, since in sent if since is not None}
    assert set(timed) == {"bot.messages.allowed", "bot.messages.blocked"}
    assert all(before <= since <= came_in for since in timed.values())  # not when decided
    assert [topic for topic, since in sent if since is None] == ["secure-session.audit"] * 2


async def test_a_revoke_abandons_what_waits_unacked_and_unsent_and_keeps_other_partitions() -> None:
    """Issue 16: records of a revoked partition still waiting for a call when the grace
    ends are neither decided, sent nor acked (the next owner reads them again); decided
    ones behind them are not acked either; another partition's records are untouched."""
    gate = Gate()
    p, sent, acked = make(gate)
    await p.submit(b"s1", ev("s1", 0, "ok-1"), "p0", lambda: acked.append(0))  # a call
    await p.submit(b"s1", ev("s1", 1, "ok-1"), "p0", lambda: acked.append(1))  # waits
    await p.submit(b"s3", ev("s3", 0, "ok-3"), "p1", lambda: acked.append(10))  # a call
    await asyncio.sleep(0.01)
    assert p.undecided({"p0"}) == 2 and p.held == 1
    abandoned = await p.settle({"p0"}, 0.05, "rebalance")
    assert abandoned == 2 and p.held == 0 and p.undecided() == 1
    gate.open.set()
    await p.drain_all()
    assert acked == [10]  # only the partition kept
    assert [v for t, v in sent if t == "bot.messages.allowed"] == ["s3-0"]
    # the session of the abandoned lane is free: a new owner's record validates anew
    await p.submit(b"s1", ev("s1", 0, "ok-1"), "p0", lambda: acked.append(0))
    await p.drain_all()
    assert acked == [10, 0]


async def test_settle_waits_for_what_finishes_within_the_grace() -> None:
    gate = Gate()
    p, sent, acked = make(gate)
    await p.submit(b"s1", ev("s1", 0, "ok-1"), "p0", lambda: acked.append(0))
    await p.submit(b"s1", ev("s1", 1, "ok-1"), "p0", lambda: acked.append(1))
    asyncio.get_running_loop().call_later(0.05, gate.open.set)
    assert await p.settle(None, 5, "stopping") == 0  # returns once decided, not at 5 s
    assert acked == [0, 1] and len(sent) == 3  # validation audit + two allowed


async def test_monitor_mode_allows_what_it_would_block_marked_and_audited() -> None:
    """Issue 20: `Enforcement: monitor` (CONTRACT: allowed byte for byte, reason monitor,
    would-block header; nothing blocked; audited would_block)."""
    monitor = {
        **BOT,
        "Name": "m",
        "SecureSessionConfig": {**BOT["SecureSessionConfig"], "Enforcement": "monitor"},
    }
    sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        sent.append((topic, value, dict(headers or [])))

    gate = Gate()
    gate.open.set()
    p = build(gate.handler, send, more_bots=(monitor,))
    bad = orjson.dumps(
        {"id": "x1", "organization": "acme", "bot": "m", "sessionId": "s", "context": {"t": "bad"}}
    )
    good = orjson.dumps(
        {"id": "x2", "organization": "acme", "bot": "m", "sessionId": "u", "context": {"t": "ok"}}
    )
    await p.submit(b"s", bad, 0, lambda: None)
    await p.submit(b"u", good, 0, lambda: None)
    await p.drain_all()
    topics = Topics()
    assert not [t for t, _, _ in sent if t == topics.blocked]
    allowed = {orjson.loads(v)["id"]: (v, h) for t, v, h in sent if t == topics.allowed}
    value, headers = allowed["x1"]
    assert value == bad  # byte for byte
    assert headers["secure-session-decision"] == b"allowed"
    assert headers["secure-session-reason"] == b"monitor"
    assert headers["secure-session-would-block"] == b"denied"
    assert allowed["x2"][1]["secure-session-reason"] == b"validated"
    assert "secure-session-would-block" not in allowed["x2"][1]
    audits = [orjson.loads(v) for t, v, _ in sent if t == topics.audit]
    would = [a for a in audits if a["kind"] == "would_block"]
    assert [(a["decision"], a["reason"]) for a in would] == [("allowed", "denied")]
    text = generate_latest(p.metrics.registry).decode()
    assert (
        'secure_session_would_block_total{bot="m",organization="acme",reason="denied"} 1.0' in text
    )
