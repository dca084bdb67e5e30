"""Calls to a connector's endpoint: its credentials, its circuit, the retry policy.

Shared by the BaaS and introspection validators. Raises Misconfigured (nothing was
sent) or Unavailable (the circuit is open, or a token endpoint failed); otherwise
returns the Answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from worker.config import Connector
from worker.errors import Unavailable
from worker.validators.auth import ConnectorAuth
from worker.validators.circuit import CircuitBreaker
from worker.validators.http import Answer, Http


class ConnectorCalls:
    def __init__(self, http: Http, auth: ConnectorAuth, breaker: CircuitBreaker) -> None:
        self.http = http
        self.auth = auth
        self.breaker = breaker

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
