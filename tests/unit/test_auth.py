"""Connector auth: OAuth2 token cache, single flight, refresh, failures (MockTransport)."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import parse_qs

import httpx
import orjson
import pytest

from worker.config import parse_connector
from worker.errors import Misconfigured, Unavailable
from worker.validators.auth import ConnectorAuth
from worker.validators.http import Http
from worker.vault import Vault

CON = parse_connector(
    {
        "Alias": "A",
        "Organization": "acme",
        "Method": "POST",
        "Endpoint": "https://api.example/v",
        "Auth": {
            "Type": "oauth2-client-credentials",
            "TokenUrl": "https://idp.example/token",
            "ClientId": "me",
            "ClientSecret": "srn:vault::acme:secret:cs",
            "Scope": "s1",
        },
    },
    "t",
)
VAULT = Vault(None, {"SECURE_SESSION_SECRET__ACME__CS": "shh"})


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    handler: httpx.MockTransport | None = None,
    status: int = 200,
    expires: int = 600,
    clock: Clock | None = None,
) -> tuple[ConnectorAuth, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        await asyncio.sleep(0.01)
        body = {"access_token": f"at-{len(seen)}", "expires_in": expires}
        return httpx.Response(status, content=orjson.dumps(body))

    async def no_sleep(_: float) -> None:
        return None

    transport = httpx.MockTransport(answer)
    http = Http(
        transport, retries=1, backoff_s=0, connect_timeout_s=1, max_concurrent=4, sleep=no_sleep
    )
    return ConnectorAuth(http, VAULT, clock=clock or Clock()), seen


async def test_one_fetch_for_concurrent_callers_then_cached() -> None:
    auth, seen = make()
    headers = await asyncio.gather(*[auth.headers(CON) for _ in range(10)])
    assert {h["Authorization"] for h in headers} == {"Bearer at-1"}
    assert len(seen) == 1
    form = parse_qs(seen[0].content.decode())
    assert form == {"grant_type": ["client_credentials"], "scope": ["s1"]}
    assert seen[0].headers["Authorization"] == "Basic " + base64.b64encode(b"me:shh").decode()
    await auth.headers(CON)
    assert len(seen) == 1


async def test_refreshed_before_expiry_and_after_invalidate() -> None:
    clock = Clock()
    auth, seen = make(expires=600, clock=clock)
    await auth.headers(CON)
    clock.now += 600 - 60 - 1  # a minute before expiry: still cached
    await auth.headers(CON)
    assert len(seen) == 1
    clock.now += 2
    assert (await auth.headers(CON))["Authorization"] == "Bearer at-2"
    auth.invalidate(CON)
    assert (await auth.headers(CON))["Authorization"] == "Bearer at-3"


async def test_refused_client_is_misconfigured_and_down_is_unavailable() -> None:
    auth, _ = make(status=401)
    with pytest.raises(Misconfigured, match="refused the client credentials"):
        await auth.headers(CON)
    auth, seen = make(status=503)
    with pytest.raises(Unavailable):
        await auth.headers(CON)
    assert len(seen) == 2  # retried once
    # concurrent waiters all see the failure, and the next call tries again
    auth, seen = make(status=503)
    results = await asyncio.gather(*[auth.headers(CON) for _ in range(3)], return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert len(seen) == 2
