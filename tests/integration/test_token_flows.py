"""Token flows beyond BaaS-with-an-API-key, through the topics with real endpoints on loopback:
OAuth2 client credentials for connectors, per-dialog bearer tokens, ResponseMapping
identity, and RFC 7662 introspection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import Broker
from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event, reason

pytestmark = pytest.mark.integration

CLIENT_SECRET = "client-secret-4b1d9e"


def oauth(base: str, alias: str, **extra: Any) -> dict[str, Any]:
    con = connector(alias, f"{base}/VerifyToken", timeout=1)
    del con["Headers"]
    con["Auth"] = {
        "Type": "oauth2-client-credentials",
        "TokenUrl": f"{base}/oauth/token",
        "ClientId": "worker",
        "ClientSecret": "srn:vault::acme:secret:client",
        "Scope": "verify",
        **extra,
    }
    return con


@pytest.fixture(scope="module")
def h(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = Harness(broker, tmp_path_factory.mktemp("flows")).start()
    try:
        harness.api.clients["worker"] = CLIENT_SECRET
        (harness.secrets / "acme" / "client").write_text(CLIENT_SECRET)
        base = harness.server.base
        dialog = connector("dialog", f"{base}/VerifyToken")
        del dialog["Headers"]
        dialog["RequestMapping"] = {
            "bearer": {
                "type": "header",
                "name": "Authorization",
                "inputPath": "$.dialogToken",
                "valueTemplate": "Bearer {value}",
            }
        }
        who = connector("who", f"{base}/VerifyToken")
        who["ResponseMapping"] = {"identity": "$.identity"}
        introspect = {
            "Type": "api-connector",
            "Alias": "introspect",
            "Organization": "acme",
            "Method": "POST",
            "Endpoint": f"{base}/introspect",
            "TimeoutSeconds": 1,
            "Auth": {
                "Type": "basic",
                "ClientId": "worker",
                "ClientSecret": "srn:vault::acme:secret:client",
            },
        }
        intro_bot = bot("intro", alias="introspect")
        intro_bot["SecureSessionConfig"] |= {
            "Type": "introspection",
            "TokenPath": "$.context.secureTokenForUser",
        }
        config = harness.write_config(
            bots=[
                bot("oauth", alias="oauth"),
                bot("oauth-open", alias="oauth", FailureMode="open"),
                bot("dialog", alias="dialog"),
                bot("who", alias="who"),
                intro_bot,
            ],
            connectors=[oauth(base, "oauth"), dialog, who, introspect],
        )
        harness.start_worker(config)
        yield harness
        harness.assert_clean((CLIENT_SECRET, *harness.api.access_tokens, *harness.api.revoked))
    finally:
        harness.stop()


def user(h: Harness, identity: str = "alice") -> tuple[str, str]:
    session, token = f"s-{uuid.uuid4().hex[:8]}", f"tok-{uuid.uuid4().hex}"
    h.api.tokens[token] = identity
    return session, token


def test_oauth2_token_is_fetched_once_for_many_sessions_and_reused(h: Harness) -> None:
    before = h.api.token_calls
    sessions = [user(h) for _ in range(20)]
    h.send(*[event(s, "m0", t, bot="oauth") for s, t in sessions])
    for s, _ in sessions:
        assert reason(h.wait_decisions(s, 1)[0]) == "validated"
    assert h.api.token_calls - before <= 1  # single flight, then cached
    s, t = user(h)
    h.send(event(s, "m0", t, bot="oauth"))
    assert reason(h.wait_decisions(s, 1)[0]) == "validated"
    assert h.api.token_calls - before <= 1


def test_a_401_refreshes_the_access_token_once_and_retries(h: Harness) -> None:
    s, t = user(h)
    h.send(event(s, "m0", t, bot="oauth"))
    h.wait_decisions(s, 1)
    before = h.api.token_calls
    h.api.revoke_access_tokens()
    s2, t2 = user(h)
    h.send(event(s2, "m0", t2, bot="oauth"))
    assert reason(h.wait_decisions(s2, 1)[0]) == "validated"
    assert h.api.token_calls == before + 1
    assert h.api.calls[t2] == 1  # the 401 was answered before the token was looked at


@pytest.mark.parametrize(
    ("bot_name", "expected"), [("oauth", "authorization_unavailable"), ("oauth-open", "fail_open")]
)
def test_token_endpoint_down_follows_the_failure_mode(
    h: Harness, bot_name: str, expected: str
) -> None:
    h.api.revoke_access_tokens()
    h.api.token_endpoint_down = True
    try:
        s, t = user(h)
        h.send(event(s, "m0", t, bot=bot_name))
        (out,) = h.wait_decisions(s, 1)
        assert reason(out) == expected
    finally:
        h.api.token_endpoint_down = False


def test_per_dialog_bearer_token_from_the_context(h: Harness) -> None:
    s, t = user(h)
    h.send(
        event(s, "m0", bot="dialog", context={"dialogToken": t}),
        event(s, "m1", bot="dialog", context={"dialogToken": "tok-unknown"}),
    )
    outs = h.wait_decisions(s, 2)
    # two topics: the order between them is not observable by a consumer, so by message id
    by_id = {o.doc["messageId"] if o.doc else orjson.loads(o.value)["id"]: o for o in outs}
    assert reason(by_id["m0"]) == "validated" and reason(by_id["m1"]) == "denied"
    blocked = by_id["m1"].doc
    assert blocked is not None
    assert blocked["event"]["context"]["dialogToken"].startswith("sha256:")


def test_response_mapping_carries_the_identity(h: Harness) -> None:
    s, t = user(h, "zoe")
    h.send(event(s, "m0", t, bot="who"), event(s, "m1", t, bot="who"))
    outs = h.wait_decisions(s, 2)
    assert [o.headers.get("secure-session-identity") for o in outs] == [b"zoe", b"zoe"]
    (audit,) = h.audits(s)
    assert audit["identity"] == "zoe"


def test_introspection_active_inactive_and_missing(h: Harness) -> None:
    s, t = user(h, "ivy")
    h.send(event(s, "m0", t, bot="intro"), event(s, "m1", t, bot="intro"))
    outs = h.wait_decisions(s, 2)
    assert [reason(o) for o in outs] == ["validated", "cached"]
    assert outs[0].headers["secure-session-identity"] == b"ivy"
    (audit,) = h.audits(s)
    assert audit["validation"]["type"] == "introspection"
    assert audit["validation"]["httpStatus"] == 200
    s2 = f"s-{uuid.uuid4().hex[:8]}"
    h.send(event(s2, "m0", "tok-nobody", bot="intro"), event(s2, "m1", bot="intro"))
    assert [reason(o) for o in h.wait_decisions(s2, 2)] == ["denied", "token_missing"]
