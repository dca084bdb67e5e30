"""What an end user sends never changes how others are decided (issue 17): a request that
cannot be built or sent is that message's alone, a 4xx is a denial whatever its body, and
an internal error is never "no answer" (which a fail-open bot would allow)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from worker.config import parse_connector
from worker.events import parse_inbound
from worker.validators.auth import ConnectorAuth
from worker.validators.baas import BaasValidator
from worker.validators.calls import ConnectorCalls
from worker.validators.circuit import CircuitBreaker
from worker.validators.http import Http
from worker.vault import Vault

CON = {
    "Alias": "A",
    "Organization": "acme",
    "Method": "GET",
    "Endpoint": "https://auth.example.com/verify?audience=acme",
    "Headers": {"Authorization": "srn:vault::acme:secret:key"},
    "RequestMapping": {"user": {"type": "queryParameter", "name": "user", "inputPath": "$.user"}},
    "ResponseMapping": {"identity": "$.sub"},
}


def setup(
    handler: Callable[[httpx.Request], httpx.Response], secret: str = "k3y"
) -> tuple[BaasValidator, CircuitBreaker, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handler(request)

    async def no_sleep(_: float) -> None:
        return None

    vault = Vault(None, {"SECURE_SESSION_SECRET__ACME__KEY": secret})
    http = Http(
        httpx.MockTransport(recording),
        retries=2,
        backoff_s=0,
        connect_timeout_s=1,
        max_concurrent=4,
        sleep=no_sleep,
    )
    breaker = CircuitBreaker(1, 60)  # the first failure would open it
    return (
        BaasValidator(ConnectorCalls(http, ConnectorAuth(http, vault), breaker), vault),
        breaker,
        sent,
    )


async def validate(v: BaasValidator, context: dict[str, Any]) -> Any:
    event = parse_inbound(
        orjson.dumps(
            {"id": "m", "organization": "acme", "bot": "b", "sessionId": "s", "context": context}
        )
    )
    call = v.prepare(None, parse_connector(CON, "t"), event)  # type: ignore[arg-type]
    result, report = await v.validate(call)
    return result, report


async def test_a_query_too_long_to_build_is_that_messages_alone() -> None:
    v, breaker, sent = setup(lambda r: httpx.Response(200, json={"sub": "u"}))
    for _ in range(5):
        result, _ = await validate(v, {"user": "x" * 70_000})
        assert result.outcome == "token_invalid" and "not sent" in result.detail
    assert not sent and breaker.allow("acme/A")  # nothing sent; the circuit is closed
    result, _ = await validate(v, {"user": "alice"})  # the next user is asked as usual
    assert result.outcome == "allowed"


async def test_the_endpoints_own_query_is_kept_with_the_mapped_parameters() -> None:
    v, _, sent = setup(lambda r: httpx.Response(200, json={"sub": "u"}))
    await validate(v, {"user": "a b"})
    assert sent[0].url.params.multi_items() == [("audience", "acme"), ("user", "a b")]


async def test_a_4xx_with_a_huge_body_is_denied_once() -> None:
    v, breaker, sent = setup(lambda r: httpx.Response(403, content=b"x" * 70_000))
    result, report = await validate(v, {"user": "mallory"})
    assert (result.outcome, report.attempts, len(sent)) == ("denied", 1, 1)
    assert breaker.allow("acme/A")


@pytest.mark.parametrize("secret", ["line\nbreak", "nul\x00byte", "esc\x1b[2J"])
async def test_a_secret_that_cannot_be_sent_is_misconfigured(secret: str) -> None:
    v, breaker, sent = setup(lambda r: httpx.Response(200), secret=secret)
    result, _ = await validate(v, {"user": "u"})
    assert result.outcome == "misconfigured" and "cannot be sent" in result.detail
    assert secret not in result.detail
    assert not sent and breaker.allow("acme/A")


async def test_an_internal_error_in_the_transport_is_not_no_answer() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise KeyError("a bug, not the network")

    v, breaker, _ = setup(handler)
    with pytest.raises(KeyError):  # the pipeline blocks it: authorization_unavailable
        await validate(v, {"user": "u"})
    assert breaker.allow("acme/A")  # and it says nothing about the API


async def test_the_networks_failures_still_follow_the_failure_mode() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    v, breaker, sent = setup(handler)
    result, _ = await validate(v, {"user": "u"})
    assert (result.outcome, len(sent)) == ("unavailable", 3)
    assert not breaker.allow("acme/A")  # a real upstream failure counts
