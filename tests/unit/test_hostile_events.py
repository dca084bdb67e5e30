"""What an end user sends cannot grow the worker's memory or outputs without bound, nor
get a credential echoed (issue 17)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from prometheus_client import generate_latest

from tests.unit.test_pipeline import build
from worker.settings import Topics

JWT_BOT = {
    "Name": "j",
    "Organization": "acme",
    "SecureSession": True,
    "SecureSessionConfig": {
        "Type": "jwt",
        "ValidationInterval": 60,
        "SecretRef": "srn:vault::acme:secret:jwt",
        "Issuer": "i",
        "TokenPath": "$.payload.accessToken",  # outside `context`
    },
}


def pipeline() -> tuple[Any, list[tuple[str, bytes | None, bytes]]]:
    sent: list[tuple[str, bytes | None, bytes]] = []

    def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        sent.append((topic, key, value))

    async def ok(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    return build(ok, send, more_bots=(JWT_BOT,)), sent


def ev(**fields: Any) -> bytes:
    doc = {"id": "m", "organization": "acme", "bot": "b", "sessionId": "s", "context": {"t": "ok"}}
    return orjson.dumps({**doc, **fields})


async def test_metrics_label_only_configured_bots() -> None:
    p, _ = pipeline()
    for n in range(100):
        await p.submit(b"s", ev(bot=f"{n}-" + "x" * 1000), 0, n)
    await p.drain_all()
    text = generate_latest(p.metrics.registry).decode()
    assert 'bot="(none)"' in text and "xxxx" not in text
    assert len(text) < 20_000


async def test_identifiers_are_bounded() -> None:
    p, sent = pipeline()
    await p.submit(b"s", ev(sessionId="s" * 5000), 0, 0)
    await p.drain_all()
    blocked = [orjson.loads(v) for t, _, v in sent if t == Topics().blocked]
    assert blocked[0]["reason"] == "invalid_event" and "longer than" in blocked[0]["detail"]


async def test_a_blocked_record_always_fits_the_broker() -> None:
    p, sent = pipeline()
    huge_key = b"k" * 900_000
    await p.submit(huge_key, b"\xff" * 200_000, 0, 0)  # invalid: echoed as base64
    await p.drain_all()
    for _topic, key, value in sent:
        assert len(key or b"") + len(value) < 1_000_000
    assert all(len(key or b"") < 100 for _, key, _ in sent)  # the key's fingerprint


async def test_a_token_outside_context_is_never_echoed_when_blocked_early() -> None:
    p, sent = pipeline()
    secret = "eyJhbGciOiJIUzI1NiJ9.secret-token.sig"
    # a known bot, but the event is invalid: decided before any check is made
    await p.submit(b"s", ev(bot="j", type="bogus", payload={"accessToken": secret}), 0, 0)
    await p.drain_all()
    assert sent and all(secret.encode() not in value for _, _, value in sent)
