"""Calls to a connector's endpoint: its credentials, its circuit, the retry policy, and
the tenant limits.

Shared by the BaaS and introspection validators. Raises Misconfigured (nothing was
sent) or Unavailable (the circuit is open, a token endpoint failed, or the connector's
queue is full); otherwise returns the Answer.

Tenant limits: a call holds a slot of its connector and one of its organization while it
runs (`TenantLimits`), so that a slow or flooded API of one tenant takes at most
`SECURE_SESSION_MAX_CALLS_PER_ORG` of the worker's `SECURE_SESSION_MAX_CONCURRENT_CALLS`,
and the calls waiting for one connector are bounded (`SECURE_SESSION_MAX_QUEUED_CALLS`:
beyond, `unavailable` at once, which follows the bot's failure mode).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from worker.config import Connector
from worker.errors import Unavailable
from worker.validators.auth import ConnectorAuth
from worker.validators.circuit import CircuitBreaker
from worker.validators.http import Answer, Http


class TenantLimits:
    """Slots per organization and per connector, and a bound on the calls waiting."""

    def __init__(self, per_org: int = 25, per_connector: int = 25, queued: int = 1000) -> None:
        self._per_org, self._per_connector, self._queued = per_org, per_connector, queued
        # one per configured organization and connector (only those reach a call)
        self._orgs: dict[str, asyncio.Semaphore] = {}
        self._connectors: dict[str, asyncio.Semaphore] = {}
        self._waiting: collections.Counter[str] = collections.Counter()

    @contextlib.asynccontextmanager
    async def slot(self, con: Connector) -> AsyncIterator[None]:
        key = con.key
        if self._waiting[key] >= self._queued:
            raise Unavailable(
                f"connector {key} has {self._waiting[key]} calls waiting "
                "(SECURE_SESSION_MAX_QUEUED_CALLS): not called"
            )
        connector = self._connectors.setdefault(key, asyncio.Semaphore(self._per_connector))
        org = self._orgs.setdefault(con.organization, asyncio.Semaphore(self._per_org))
        self._waiting[key] += 1
        try:
            await connector.acquire()
            try:
                await org.acquire()
            except BaseException:
                connector.release()
                raise
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
        try:
            yield
        finally:
            org.release()
            connector.release()


class ConnectorCalls:
    def __init__(
        self,
        http: Http,
        auth: ConnectorAuth,
        breaker: CircuitBreaker,
        limits: TenantLimits | None = None,
    ) -> None:
        self.http = http
        self.auth = auth
        self.breaker = breaker
        self.limits = limits or TenantLimits()

    async def call(
        self,
        con: Connector,
        build: Callable[[dict[str, str]], Awaitable[httpx.Request]],
        *,
        read_body: bool,
        what: str,
    ) -> Answer:
        """`build(auth_headers)` makes the request (anew for each attempt)."""
        if not self.breaker.allow(con.key):
            raise Unavailable(f"circuit open for connector {con.key}: calls paused after failures")
        async with self.limits.slot(con):
            return await self._call(con, build, read_body=read_body, what=what)

    async def _call(
        self,
        con: Connector,
        build: Callable[[dict[str, str]], Awaitable[httpx.Request]],
        *,
        read_body: bool,
        what: str,
    ) -> Answer:
        async def attempt() -> httpx.Request:
            return await build(await self.auth.headers(con))

        # only a real upstream failure counts towards the circuit: no answer, a 5xx, or a
        # token endpoint that failed; not a request that could not be built or sent
        # (Misconfigured: nothing was sent), nor an internal error
        answered = True
        try:
            answer = await self.http.call(attempt, con.timeout_s, read_body=read_body, what=what)
            if answer.status == 401 and con.auth is not None and con.auth.type != "basic":
                self.auth.invalidate(con)  # the access token may have been revoked: once more
                answer = await self.http.call(
                    attempt, con.timeout_s, read_body=read_body, what=what
                )
            answered = answer.status is not None and answer.status < 500
            return answer
        except Unavailable:
            answered = False
            raise
        finally:
            self.breaker.record(con.key, answered=answered)
