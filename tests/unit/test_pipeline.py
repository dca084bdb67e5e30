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
    clock: Callable[[], float] = time.time,
    ack: Callable[[Any, int], Any] = lambda _partition, _offset: None,
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
        baas=BaasValidator(calls, vault, clock),
        introspection=IntrospectionValidator(calls, vault),
        jwt=JwtValidator(vault),
        table={},
        send=send,
        ack=ack,
        topics=Topics(),
        max_held=max_held,
        metrics=Metrics(),
        clock=clock,
    )


def make(gate: Gate, max_held: int = 100) -> tuple[Pipeline, list[tuple[str, Any]], list[int]]:
    sent: list[tuple[str, Any]] = []
    acked: list[int] = []

    def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        doc = orjson.loads(value)
        sent.append((topic, doc["id"] if topic == Topics().allowed else doc))

    return (
        build(gate.handler, send, max_held, ack=lambda _p, offset: acked.append(offset)),
        sent,
        acked,
    )


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
        await p.submit(b"s1", ev("s1", i, "ok-1"), 0, i)
    await p.submit(b"s2", ev("s2", 0, "bad"), 0, 3)
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
        await p.submit(b"s1", ev("s1", i, "ok"), 0, i)
    blocked = asyncio.create_task(p.submit(b"s1", ev("s1", 3, "ok"), 0, 3))
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
        await p.submit(b"s", ev(f"s{i}", 0, token), 0, i)
    await p.drain_all()
    blocked = [v for t, v in sent if t == "bot.messages.blocked"]
    assert [b["reason"] for b in blocked] == ["token_invalid", "token_invalid"]
    assert "X-T is not printable ASCII" in blocked[0]["detail"]
    assert gate.calls == ["ok-1"]  # nothing sent for the two others
    assert acked == [0, 1, 2]


async def test_each_decision_carries_when_its_message_came_in_and_audits_do_not() -> None:
    """The outbox times a decision from there to its delivery (worker/metrics.py)."""
    gate, sent = Gate(), []

    def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        sent.append((topic, since))

    p = build(gate.handler, send)
    before = time.monotonic()
    await p.submit(b"s1", ev("s1", 0, "ok-1"), 0, 0)  # waits for the call
    await p.submit(b"s2", b"not json", 0, 1)  # blocked at once
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
    await p.submit(b"s1", ev("s1", 0, "ok-1"), "p0", 0)  # a call
    await p.submit(b"s1", ev("s1", 1, "ok-1"), "p0", 1)  # waits
    await p.submit(b"s3", ev("s3", 0, "ok-3"), "p1", 10)  # a call
    await asyncio.sleep(0.01)
    assert p.undecided({"p0"}) == 2 and p.held == 1
    abandoned = await p.settle({"p0"}, 0.05, "rebalance")
    assert abandoned == 2 and p.held == 0 and p.undecided() == 1
    gate.open.set()
    await p.drain_all()
    assert acked == [10]  # only the partition kept
    assert [v for t, v in sent if t == "bot.messages.allowed"] == ["s3-0"]
    # the session of the abandoned lane is free: a new owner's record validates anew
    await p.submit(b"s1", ev("s1", 0, "ok-1"), "p0", 0)
    await p.drain_all()
    assert acked == [10, 0]


async def test_settle_waits_for_what_finishes_within_the_grace() -> None:
    gate = Gate()
    p, sent, acked = make(gate)
    await p.submit(b"s1", ev("s1", 0, "ok-1"), "p0", 0)
    await p.submit(b"s1", ev("s1", 1, "ok-1"), "p0", 1)
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

    def send(
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
    await p.submit(b"s", bad, 0, 0)
    await p.submit(b"u", good, 0, 1)
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


class Api:
    """An Authorization API whose answer and pace the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.open = asyncio.Event()
        self.open.set()
        self.calls = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        await self.open.wait()
        return httpx.Response(self.status)


def refreshing(api: Api, f: float | None = 0.5) -> tuple[Pipeline, list[Any], list[float]]:
    """Bot acme/r (interval 60 s, RefreshAhead f) on a clock the test moves (now[0], s)."""
    ssc = {**BOT["SecureSessionConfig"]}
    if f is not None:
        ssc["RefreshAhead"] = f
    bot = {**BOT, "Name": "r", "SecureSessionConfig": ssc}
    now = [1_000.0]
    out: list[Any] = []

    def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        doc = orjson.loads(value)
        if topic == Topics().allowed:
            out.append((doc["id"], dict(headers)["secure-session-reason"].decode()))
        elif topic == Topics().blocked:
            out.append((doc["messageId"], doc["reason"]))
        else:
            out.append(("audit", doc["kind"], doc["reason"]))

    return build(api.handler, send, more_bots=(bot,), clock=lambda: now[0]), out, now


def rev(i: int) -> bytes:
    doc = {"id": f"m{i}", "organization": "acme", "bot": "r", "sessionId": "s", "context": {}}
    return orjson.dumps({**doc, "context": {"t": "ok"}})


async def message(p: Pipeline, i: int, partition: Any = 0) -> None:
    await p.submit(b"s", rev(i), partition, i)
    await asyncio.sleep(0)  # a started refresh reaches its call


async def test_refresh_ahead_validates_in_the_background_and_nothing_waits() -> None:
    """Issue 20 (CONTRACT "Refresh ahead"): after f x interval a cached message is allowed
    at once and starts one validation; its success moves the interval on."""
    api = Api()
    p, out, now = refreshing(api)
    await message(p, 0)  # validated at t=0
    await p.drain_all()
    now[0] += 20
    await message(p, 1)  # before f x interval: cached, no call
    assert api.calls == 1
    api.open.clear()
    now[0] += 15  # t=35 > 30
    await message(p, 2)
    await message(p, 3)  # one refresh in flight at a time
    assert out[-2:] == [("m2", "cached"), ("m3", "cached")]  # allowed before the call ends
    assert api.calls == 2
    api.open.set()
    await p.drain_all()
    assert out[-1] == ("audit", "validation", "validated")  # the refresh is audited
    now[0] += 40  # t=75: past t=0's interval, within the refresh's (t=35)
    await message(p, 4)
    await p.drain_all()
    assert ("m4", "cached") in out
    assert api.calls == 3  # 75 - 35 > 30: the next refresh
    text = generate_latest(p.metrics.registry).decode()
    assert (
        'secure_session_refreshes_total{bot="r",organization="acme",outcome="allowed"} 2.0' in text
    )


async def test_past_the_interval_a_message_waits_for_the_refresh_in_flight() -> None:
    """Nothing is allowed past the interval without a successful validation: a message
    that comes once it ran out waits for the refresh, and a denial blocks it."""
    api = Api()
    p, out, now = refreshing(api)
    await message(p, 0)
    await p.drain_all()
    api.open.clear()
    api.status = 403
    now[0] += 45
    await message(p, 1)  # cached, refresh starts
    now[0] += 20  # t=65: the interval ran out while the refresh runs
    await message(p, 2)
    await message(p, 3)  # behind it, in order
    assert out[-1] == ("m1", "cached") and api.calls == 2
    api.open.set()
    await p.drain_all()
    assert ("audit", "validation", "denied") in out
    assert [o for o in out if o[0] in ("m2", "m3")] == [("m2", "denied"), ("m3", "denied")]
    assert api.calls == 2  # decided by the refresh, not by calls of their own


async def test_a_denied_refresh_blocks_the_messages_after_it_within_the_interval() -> None:
    api = Api()
    p, out, now = refreshing(api)
    await message(p, 0)
    await p.drain_all()
    api.status = 403
    now[0] += 40
    await message(p, 1)  # cached; its refresh is denied
    await p.drain_all()
    now[0] += 1  # t=41: within t=0's interval, but the session was denied since
    await message(p, 2)
    await p.drain_all()
    assert out[-2][0] == "m2" and out[-2][1] == "denied"


async def test_a_failed_refresh_is_not_retried_at_every_message() -> None:
    """No answer (503): the state stays, messages stay cached within the interval, and
    the next refresh waits f x interval; past the interval the failure mode applies."""
    api = Api()
    p, out, now = refreshing(api)
    await message(p, 0)
    await p.drain_all()
    api.status = 503
    now[0] += 31
    for i in range(1, 6):
        await message(p, i)
        await p.drain_all()
        now[0] += 1
    assert api.calls == 2
    assert [o[1] for o in out if o[0] in {f"m{i}" for i in range(1, 6)}] == ["cached"] * 5
    now[0] += 61 - 36  # t=61: past the interval: validated in line, fail closed
    await message(p, 6)
    await p.drain_all()
    assert ("m6", "authorization_unavailable") in out and api.calls == 3


async def test_without_refresh_ahead_nothing_is_called_within_the_interval() -> None:
    api = Api()
    p, out, now = refreshing(api, f=None)
    await message(p, 0)
    await p.drain_all()
    now[0] += 59
    await message(p, 1)
    await p.drain_all()
    assert api.calls == 1 and out[-1] == ("m1", "cached")


async def test_a_revoke_cancels_the_refreshes_of_the_partition() -> None:
    api = Api()
    p, out, now = refreshing(api)
    await message(p, 0, "p0")
    await p.drain_all()
    api.open.clear()
    now[0] += 40
    await message(p, 1, "p0")
    assert api.calls == 2
    await p.settle({"p0"}, 0.01, "rebalance")
    await p.drain_all()  # returns: the refresh was cancelled, nothing written
    assert out[-1] == ("m1", "cached")


async def test_a_session_ended_during_a_refresh_stays_ended() -> None:
    api = Api()
    p, out, now = refreshing(api)
    await message(p, 0)
    await p.drain_all()
    api.open.clear()
    now[0] += 40
    await message(p, 1)  # its refresh waits
    end = {"id": "e", "organization": "acme", "bot": "r", "sessionId": "s", "type": "session_end"}
    await p.submit(b"s", orjson.dumps(end), 0, 0)
    api.open.set()
    await p.drain_all()
    await message(p, 2)  # a new session: validated, not cached from the old state
    await p.drain_all()
    assert ("m2", "validated") in out and api.calls == 3
