"""BaaS api-connector validation: one HTTP call to the customer's Authorization API.

2xx allows, 4xx denies, 3xx (redirects are never followed) is an unavailable API,
5xx / timeouts / connection errors are retried with backoff and then make the API
unavailable. Calls in flight are bounded by a semaphore sized to the connection pool,
and each attempt's timeout starts when it is sent, not while it waits for a slot.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from worker.config import Connector
from worker.decide import Validation
from worker.errors import Misconfigured
from worker.events import fingerprint
from worker.validators import Report
from worker.vault import Vault

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BaasCall:
    """What one message would send: the connector and the values mapped from its context."""

    connector: Connector
    values: tuple[Any, ...]
    fingerprint: str

    def redact(self, event: dict[str, Any]) -> None:
        context = event.get("context")
        if isinstance(context, (dict, list)):
            for mapping in self.connector.mappings:
                mapping.input_path.replace(context, fingerprint)


def new_client(max_connections: int) -> httpx.AsyncClient:
    """The worker's one HTTP client: no redirects, a pool sized to the calls allowed at once."""
    return httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        timeout=httpx.Timeout(5.0),
        trust_env=False,
    )


class BaasValidator:
    """Prepares and performs BaaS calls."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        vault: Vault,
        *,
        retries: int,
        backoff_s: float,
        connect_timeout_s: float,
        max_concurrent: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._vault = vault
        self._retries = retries
        self._backoff_s = backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._clock = clock
        self._sleep = sleep

    @staticmethod
    def prepare(connector: Connector, context: dict[str, Any]) -> BaasCall:
        """Read the mapped values from the event's context (no I/O, no secrets)."""
        values = tuple(m.input_path.get(context) for m in connector.mappings)
        return BaasCall(connector, values, fingerprint([connector.alias, values]))

    def build_request(self, call: BaasCall) -> httpx.Request:
        """The HTTP request, secrets resolved; SecretNotFound when one is missing."""
        con = call.connector
        headers: dict[str, str] = self._vault.resolve_in(con.headers)
        body: dict[str, Any] = self._vault.resolve_in(con.body)
        params: dict[str, str] = {}
        for mapping, value in zip(con.mappings, call.values, strict=True):
            if mapping.type == "requestBody":
                assert mapping.body_path is not None
                mapping.body_path.set(body, value)
            elif value is not None:
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                (headers if mapping.type == "header" else params)[mapping.name] = text
        content = None
        if con.method not in ("GET", "DELETE") or body:
            content = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        return self._client.build_request(
            con.method, con.endpoint, headers=headers, params=params, content=content
        )

    async def validate(self, call: BaasCall) -> tuple[Validation, Report]:
        """Call the API (with retries) and say what it answered; never raises."""
        con = call.connector
        started = self._clock()
        try:
            request = self.build_request(call)
        except Misconfigured as exc:
            return self._result(call, "misconfigured", str(exc), None, 0, started)
        timeout = httpx.Timeout(con.timeout_s, connect=min(con.timeout_s, self._connect_timeout_s))
        request.extensions["timeout"] = timeout.as_dict()
        attempts = 0
        status: int | None = None
        problem = ""
        while True:
            attempts += 1
            async with self._slots:
                try:
                    async with asyncio.timeout(con.timeout_s):
                        response = await self._client.send(request, stream=True)
                        await response.aclose()
                    status = response.status_code
                    problem = f"Authorization API answered {status}"
                except (TimeoutError, httpx.TimeoutException):
                    status, problem = None, f"timed out after {con.timeout_s:g} s"
                except Exception as exc:  # noqa: BLE001 - any failure of the call is "unavailable"
                    # the message of an httpx error may hold the URL (and query credentials)
                    status, problem = None, f"connection failed ({exc.__class__.__name__})"
            if status is not None and 200 <= status < 300:
                return self._result(call, "allowed", "", status, attempts, started)
            if status is not None and 400 <= status < 500:
                return self._result(call, "denied", problem, status, attempts, started)
            if status is not None and status < 500:
                problem = f"Authorization API answered {status}; redirects are not followed"
                return self._result(call, "unavailable", problem, status, attempts, started)
            if attempts > self._retries:
                detail = f"{problem} (after {attempts} attempts)"
                return self._result(call, "unavailable", detail, status, attempts, started)
            log.info("retrying connector %s: %s (attempt %d)", con.key, problem, attempts)
            await self._sleep(self._backoff_s * 2 ** (attempts - 1) * (0.5 + random.random() / 2))

    def _result(
        self,
        call: BaasCall,
        outcome: Any,
        detail: str,
        status: int | None,
        attempts: int,
        started: float,
    ) -> tuple[Validation, Report]:
        now = self._clock()
        latency_ms = round((now - started) * 1000, 1)
        return (
            Validation(outcome, call.fingerprint, int(now * 1000), detail),
            Report("baas", call.connector.alias, status, attempts, latency_ms, call.fingerprint),
        )
