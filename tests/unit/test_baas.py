"""The BaaS call: request mapping, secrets, retry policy, redirects (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from worker.config import Connector, parse_connector
from worker.events import parse_inbound
from worker.validators.auth import ConnectorAuth
from worker.validators.baas import BaasCall, BaasValidator
from worker.validators.calls import ConnectorCalls
from worker.validators.circuit import CircuitBreaker
from worker.validators.http import Http
from worker.vault import Vault

CON = {
    "Alias": "A",
    "Organization": "acme",
    "Method": "POST",
    "Endpoint": "https://auth.example.com/verify",
    "TimeoutSeconds": 1,
    "Headers": {"Authorization": "srn:vault::acme:secret:key", "X-Static": "v"},
    "Body": {"client": "srn:vault::acme:secret:key", "fixed": 1},
    "RequestMapping": {
        "token": {"type": "requestBody", "requestBodyPath": "$.auth.token", "inputPath": "$.tok"},
        "dialog": {"type": "header", "name": "X-Dialog", "inputPath": "$.dialog.id"},
        "user": {"type": "queryParameter", "name": "user", "inputPath": "$.user"},
    },
}
CONTEXT = {"tok": "T-1", "dialog": {"id": "D-9"}, "user": "u1"}


def validator(
    handler: Callable[[httpx.Request], httpx.Response],
    retries: int = 2,
    env: dict[str, str] | None = None,
) -> BaasValidator:
    async def no_sleep(_: float) -> None:
        return None

    transport = httpx.MockTransport(handler)
    vault = Vault(None, env if env is not None else {"SECURE_SESSION_SECRET__ACME__KEY": "k3y"})
    http = Http(
        transport,
        retries=retries,
        backoff_s=0.01,
        connect_timeout_s=1,
        max_concurrent=4,
        sleep=no_sleep,
    )
    return BaasValidator(
        ConnectorCalls(http, ConnectorAuth(http, vault), CircuitBreaker(100, 1)), vault
    )


def prepare(v: BaasValidator, con: Connector, context: dict[str, Any]) -> BaasCall:
    event = parse_inbound(
        orjson.dumps(
            {"id": "m", "organization": "acme", "bot": "b", "sessionId": "s", "context": context}
        )
    )
    return v.prepare(None, con, event)  # type: ignore[arg-type]


async def test_request_is_built_from_the_mapping_with_secrets_resolved() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    v = validator(handler)
    call = prepare(v, parse_connector(CON, "t"), CONTEXT)
    result, report = await v.validate(call)
    assert (result.outcome, report.http_status, report.attempts) == ("allowed", 200, 1)
    (req,) = seen
    assert req.headers["Authorization"] == "k3y" and req.headers["X-Dialog"] == "D-9"
    assert req.url.params["user"] == "u1"
    assert orjson.loads(req.content) == {"client": "k3y", "fixed": 1, "auth": {"token": "T-1"}}


async def test_fingerprint_follows_the_mapped_values() -> None:
    v = validator(lambda r: httpx.Response(200))
    con = parse_connector(CON, "t")
    a = prepare(v, con, CONTEXT).fingerprint
    assert a == prepare(v, con, dict(CONTEXT)).fingerprint
    assert a != prepare(v, con, {**CONTEXT, "tok": "T-2"}).fingerprint
    assert "T-1" not in a


@pytest.mark.parametrize(
    ("statuses", "outcome", "attempts"),
    [
        ([500, 200], "allowed", 2),
        ([503, 502, 500], "unavailable", 3),
        ([401], "denied", 1),
        ([404], "denied", 1),
        ([302], "unavailable", 1),
        ([204], "allowed", 1),
    ],
)
async def test_retry_policy(statuses: list[int], outcome: str, attempts: int) -> None:
    answers = list(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        headers = {"Location": "https://elsewhere.example.com/"} if status == 302 else {}
        return httpx.Response(status, headers=headers)

    result, report = await validator(handler).validate(
        prepare(validator(handler), parse_connector(CON, "t"), CONTEXT)
    )
    assert (result.outcome, report.attempts) == (outcome, attempts)


async def test_connection_errors_are_retried_then_unavailable_without_leaking_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("boom https://auth.example.com/verify?user=u1")

    v = validator(handler, retries=1)
    result, report = await v.validate(prepare(v, parse_connector(CON, "t"), CONTEXT))
    assert (result.outcome, report.attempts) == ("unavailable", 2)
    assert "u1" not in result.detail and "ConnectError" in result.detail


async def test_missing_secret_is_misconfigured_and_nothing_is_sent() -> None:
    sent: list[httpx.Request] = []
    v = validator(lambda r: sent.append(r) or httpx.Response(200), env={})  # type: ignore[func-returns-value]
    result, _ = await v.validate(prepare(v, parse_connector(CON, "t"), CONTEXT))
    assert result.outcome == "misconfigured"
    assert "srn:vault::acme:secret:key" in result.detail
    assert not sent
