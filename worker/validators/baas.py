"""BaaS api-connector validation: one HTTP call to the customer's Authorization API.

2xx allows, 4xx denies, 3xx (redirects are never followed) is an unavailable API, 5xx /
timeouts / connection errors are retried (validators/http.py) and then make the API
unavailable. With OAuth2 connector auth, a 401 refreshes the access token once and
the call is made again.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from worker.config import Bot, Connector
from worker.decide import Outcome, Validation
from worker.errors import Misconfigured, Unavailable
from worker.events import MAX_CACHED_BYTES, Inbound, fingerprint, on_fingerprint_key_change
from worker.validators import Report
from worker.validators.calls import ConnectorCalls
from worker.validators.http import Answer
from worker.vault import Vault


@dataclass(slots=True)  # not frozen: made for every message (see events.Inbound)
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


def _fingerprint(alias: str, values: tuple[Any, ...]) -> str:
    size = 0
    for v in values:  # a loop, not sum() over a generator: this runs for every message
        size += len(v) if isinstance(v, str) else 64
    if size > MAX_CACHED_BYTES:
        return fingerprint([alias, values])  # the cache is bounded by bytes too
    try:
        return _fingerprint_hashable(alias, values)
    except TypeError:  # a mapped value that is an object or a list
        return fingerprint([alias, values])


@functools.lru_cache(maxsize=2**16)  # a session sends the same credential many times
def _fingerprint_hashable(alias: str, values: tuple[Any, ...]) -> str:
    return fingerprint([alias, values])


on_fingerprint_key_change(_fingerprint_hashable.cache_clear)


@functools.lru_cache(maxsize=1024)
def _url(endpoint: str) -> httpx.URL:
    """A connector's parsed Endpoint (httpx.URL is immutable): parsed once, not per call."""
    return httpx.URL(endpoint)


class BaasValidator:
    """Prepares and performs BaaS calls."""

    def __init__(
        self, calls: ConnectorCalls, vault: Vault, clock: Callable[[], float] = time.time
    ) -> None:
        self._calls = calls
        self._vault = vault
        self._clock = clock

    @staticmethod
    def prepare(_bot: Bot, connector: Connector, event: Inbound) -> BaasCall:
        """Read the mapped values from the event's context (no I/O, no secrets)."""
        context = event.context
        values = tuple([m.input_path.get(context) for m in connector.mappings])
        return BaasCall(connector, values, _fingerprint(connector.alias, values))

    def build_request(self, call: BaasCall, auth: dict[str, str]) -> httpx.Request:
        """The HTTP request, secrets resolved (SecretNotFound when one is missing)."""
        con = call.connector
        headers: dict[str, str] = self._vault.resolve_in(con.headers, con.organization)
        headers |= auth
        body: dict[str, Any] = self._vault.resolve_in(con.body, con.organization)
        params: dict[str, str] = {}
        for mapping, value in zip(con.mappings, call.values, strict=True):
            if mapping.type == "requestBody":
                assert mapping.body_path is not None
                mapping.body_path.set(body, value)
            elif value is not None:
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                if mapping.type == "header":
                    headers[mapping.name] = mapping.template.replace("{value}", text)
                else:
                    params[mapping.name] = text
        content = None
        if con.method not in ("GET", "DELETE") or body:
            content = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        # the Endpoint's own query string is kept, the mapped parameters added to it
        url = _url(con.endpoint)
        if params:
            url = url.copy_merge_params(params)
        return httpx.Request(con.method, url, headers=headers, content=content)

    async def validate(self, call: BaasCall) -> tuple[Validation, Report]:
        """Call the API (with retries) and say what it answered; never raises."""
        con = call.connector
        unsendable = _unsendable(call)
        if unsendable is not None:
            return self._result(call, "token_invalid", unsendable, None)
        try:  # what the event's values make impossible to send is that message's alone
            plain = self.build_request(call, {})
        except Misconfigured as exc:
            return self._result(call, "misconfigured", str(exc), None)
        except (httpx.InvalidURL, UnicodeEncodeError, ValueError, TypeError) as exc:
            detail = f"the request cannot be built from the event ({exc.__class__.__name__})"
            return self._result(call, "token_invalid", f"{detail}: not sent", None)

        async def build(auth: dict[str, str]) -> httpx.Request:
            # without connector auth, the request built above (its content is bytes: it
            # can be sent again by a retry)
            return self.build_request(call, auth) if auth else plain

        try:
            answer = await self._calls.call(
                con, build, read_body=con.identity_path is not None, what="Authorization API"
            )
        except Misconfigured as exc:
            return self._result(call, "misconfigured", str(exc), None)
        except Unavailable as exc:
            return self._result(call, "unavailable", str(exc), None)
        if answer.ok:
            return self._result(call, "allowed", "", answer, self._identity(con, answer))
        if answer.status is not None and 400 <= answer.status < 500:
            return self._result(call, "denied", answer.problem, answer)
        return self._result(call, "unavailable", answer.problem, answer)

    @staticmethod
    def _identity(con: Connector, answer: Answer) -> str | None:
        if con.identity_path is None or not answer.body:
            return None
        try:
            value = con.identity_path.get(orjson.loads(answer.body))
        except orjson.JSONDecodeError:
            return None
        return str(value) if isinstance(value, (str, int)) and value != "" else None

    def _result(
        self,
        call: BaasCall,
        outcome: Outcome,
        detail: str,
        answer: Answer | None,
        identity: str | None = None,
    ) -> tuple[Validation, Report]:
        status = answer.status if answer else None
        attempts = answer.attempts if answer else 0
        latency = answer.latency_ms if answer else 0.0
        return (
            Validation(outcome, call.fingerprint, int(self._clock() * 1000), detail, identity),
            Report("baas", call.connector.alias, status, attempts, latency, call.fingerprint),
        )


def _unsendable(call: BaasCall) -> str | None:
    """Why a value mapped to a header cannot be sent (HTTP header values are printable
    ASCII: anything else, a line break above all, is refused, never sent)."""
    for mapping, value in zip(call.connector.mappings, call.values, strict=True):
        if mapping.type == "header" and value is not None:
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            if not (text.isascii() and text.isprintable()):
                return f"the value for header {mapping.name} is not printable ASCII: not sent"
    return None
