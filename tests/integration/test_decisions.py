"""The BaaS flow through the topics, on one worker shared by the module's tests."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import Broker
from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event, reason

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def h(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = Harness(broker, tmp_path_factory.mktemp("decisions")).start()
    try:
        url = harness.server.url
        config = harness.write_config(
            bots=[
                bot("secure"),
                bot("short", interval=2),
                bot("open", alias="quick", FailureMode="open"),
                bot("closed", alias="quick", FailureMode="closed"),
                bot("noconn", alias="missing"),
                bot("nosecret", alias="nosecret"),
                bot("watched", Enforcement="monitor"),
                {"Name": "plain", "Organization": "acme", "SecureSession": False},
            ],
            connectors=[
                connector("main", url),
                connector("quick", url, timeout=0.5),
                connector("nosecret", url, secret="not-there"),
            ],
        )
        harness.start_worker(config)
        yield harness
        harness.assert_clean()
    finally:
        harness.stop()


def new_session(h: Harness, valid: bool = True) -> tuple[str, str]:
    session, token = f"s-{uuid.uuid4().hex[:8]}", f"tok-{uuid.uuid4().hex}"
    if valid:
        h.api.tokens[token] = f"user-{session}"
    return session, token


def test_first_message_calls_once_and_the_rest_are_cached(h: Harness) -> None:
    s, tok = new_session(h)
    sent = [event(s, f"m{i}", tok) for i in range(5)]
    h.send(*sent)
    outs = h.wait_decisions(s, 5)
    assert [reason(o) for o in outs] == ["validated"] + ["cached"] * 4
    assert [o.value for o in outs] == [orjson.dumps(e) for e in sent]  # byte for byte
    assert all(o.headers["secure-session-decision"] == b"allowed" for o in outs)
    assert h.api.calls[tok] == 1
    (audit,) = h.audits(s)
    assert audit["kind"] == "validation" and audit["reason"] == "validated"
    assert audit["validation"]["httpStatus"] == 200 and audit["validation"]["attempts"] == 1
    assert tok not in str(audit)


def test_after_the_interval_one_more_call(h: Harness) -> None:
    s, tok = new_session(h)
    h.send(event(s, "m0", tok, bot="short"))
    h.wait_decisions(s, 1)
    h.send(event(s, "m1", tok, bot="short"))
    h.wait_decisions(s, 2)
    assert h.api.calls[tok] == 1
    time.sleep(2.2)
    h.send(event(s, "m2", tok, bot="short"))
    outs = h.wait_decisions(s, 3)
    assert [reason(o) for o in outs] == ["validated", "cached", "validated"]
    assert h.api.calls[tok] == 2


@pytest.mark.parametrize("status", [401, 403])
def test_4xx_blocks_with_denied(h: Harness, status: int) -> None:
    s, tok = new_session(h)
    h.api.script[tok] = [status]
    h.send(event(s, "m0", tok))
    (out,) = h.wait_decisions(s, 1)
    assert out.topic == "blocked" and out.doc is not None
    assert out.doc["reason"] == "denied"
    assert out.doc["errorMessage"] == "Please sign in again."
    assert out.doc["messageId"] == "m0" and out.doc["sessionId"] == s
    # the credential is replaced by its fingerprint
    assert out.doc["event"]["context"]["secureTokenForUser"].startswith("sha256:")
    assert tok not in out.value.decode()
    assert h.api.calls[tok] == 1  # never retried
    kinds = sorted(a["kind"] for a in h.audits(s))
    assert kinds == ["blocked", "validation"]


def test_changed_token_is_validated_at_once(h: Harness) -> None:
    s, tok1 = new_session(h)
    _, tok2 = new_session(h)
    h.send(event(s, "m0", tok1), event(s, "m1", tok1), event(s, "m2", tok2))
    outs = h.wait_decisions(s, 3)
    assert [reason(o) for o in outs] == ["validated", "cached", "validated"]
    assert (h.api.calls[tok1], h.api.calls[tok2]) == (1, 1)


def test_500_then_200_succeeds_on_retry(h: Harness) -> None:
    s, tok = new_session(h)
    h.api.script[tok] = [500]
    h.send(event(s, "m0", tok))
    (out,) = h.wait_decisions(s, 1)
    assert reason(out) == "validated"
    assert h.api.calls[tok] == 2
    (audit,) = h.audits(s)
    assert audit["validation"]["attempts"] == 2


def test_5xx_after_retries_is_unavailable(h: Harness) -> None:
    s, tok = new_session(h)
    h.api.script[tok] = [503, 503, 503]
    h.send(event(s, "m0", tok))
    (out,) = h.wait_decisions(s, 1)
    assert reason(out) == "authorization_unavailable"
    assert h.api.calls[tok] == 3


@pytest.mark.parametrize(
    ("bot_name", "expected"), [("closed", "authorization_unavailable"), ("open", "fail_open")]
)
def test_timeout_follows_the_failure_mode(h: Harness, bot_name: str, expected: str) -> None:
    s, tok = new_session(h)
    h.api.delay_s[tok] = 3
    h.send(event(s, "m0", tok, bot=bot_name), event(s, "m1", tok, bot=bot_name))
    outs = h.wait_decisions(s, 2, timeout=30)
    assert [reason(o) for o in outs] == [expected, expected]  # the waiter shares the result
    assert outs[0].topic == ("allowed" if expected == "fail_open" else "blocked")


def test_unknown_bot(h: Harness) -> None:
    s, tok = new_session(h)
    h.send(event(s, "m0", tok, bot="nobody"))
    (out,) = h.wait_decisions(s, 1)
    assert out.doc is not None and out.doc["reason"] == "unknown_bot"
    assert tok not in out.value.decode()  # credentials of unknown bots are fingerprinted too
    assert [a["reason"] for a in h.audits(s)] == ["unknown_bot"]


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        (b"\xff\xfe\x00", "rawBase64"),
        (b"{not json", "raw"),
        (b"[1, 2]", "raw"),
        (orjson.dumps({"organization": "acme", "bot": "secure", "sessionId": "x"}), "bot"),
        (orjson.dumps({"id": "m", "organization": "acme", "bot": "secure", "sessionId": 7}), "bot"),
        (
            orjson.dumps(
                {
                    "id": "m",
                    "organization": "acme",
                    "bot": "secure",
                    "sessionId": "x",
                    "context": "nope",
                }
            ),
            "bot",
        ),
        (
            orjson.dumps(
                {
                    "id": "m",
                    "organization": "acme",
                    "bot": "secure",
                    "sessionId": "x",
                    "type": "other",
                }
            ),
            "bot",
        ),
    ],
)
def test_malformed_records_are_blocked_with_a_reason(h: Harness, value: bytes, shape: str) -> None:
    key = f"bad-{uuid.uuid4().hex[:8]}"
    h.send(value, key=key.encode())
    (out,) = h.wait_decisions(key, 1)
    assert out.doc is not None and out.doc["reason"] == "invalid_event"
    assert out.doc["detail"]
    assert shape in out.doc["event"]
    audits = h.wait(
        lambda: [o for o in h.outputs if o.topic == "audit" and o.key == key.encode()],
        1,
        10,
        "audit",
    )
    assert audits[0].doc is not None and audits[0].doc["reason"] == "invalid_event"


def test_a_record_without_key_is_keyed_by_its_session(h: Harness) -> None:
    s, tok = new_session(h)
    h.send(event(s, "m0", tok), key=None)
    (out,) = h.wait_decisions(s, 1)
    assert reason(out) == "validated"


@pytest.mark.parametrize("bot_name", ["noconn", "nosecret"])
def test_missing_connector_or_secret_is_misconfigured(h: Harness, bot_name: str) -> None:
    s, tok = new_session(h)
    h.send(event(s, "m0", tok, bot=bot_name))
    (out,) = h.wait_decisions(s, 1)
    assert out.doc is not None and out.doc["reason"] == "misconfigured"
    assert h.api.calls[tok] == 0


def test_bot_without_secure_session_is_not_required(h: Harness) -> None:
    s, _ = new_session(h)
    h.send(event(s, "m0", bot="plain"))
    (out,) = h.wait_decisions(s, 1)
    assert reason(out) == "not_required"


def test_session_end_forgets_the_session_and_is_audited(h: Harness) -> None:
    s, tok = new_session(h)
    h.send(event(s, "m0", tok), event(s, "end", type="session_end"), event(s, "m1", tok))
    outs = h.wait_decisions(s, 2)
    assert [reason(o) for o in outs] == ["validated", "validated"]
    assert h.api.calls[tok] == 2
    ended = [a for a in h.audits(s) if a["kind"] == "session_ended"]
    assert len(ended) == 1 and ended[0]["messageId"] == "end"


def test_100_sessions_x_10_messages_in_order_with_one_call_each(h: Harness) -> None:
    sessions = [new_session(h) for _ in range(100)]
    for _, tok in sessions:
        h.api.delay_s[tok] = 0.05
    h.send(*[event(s, f"m{i}", tok) for i in range(10) for s, tok in sessions])
    for s, tok in sessions:
        outs = h.wait_decisions(s, 10, timeout=60)
        assert [orjson.loads(o.value)["id"] for o in outs] == [f"m{i}" for i in range(10)]
        assert [reason(o) for o in outs] == ["validated"] + ["cached"] * 9
        assert h.api.calls[tok] == 1


def test_a_slow_api_call_does_not_hold_up_other_sessions(h: Harness) -> None:
    slow, slow_tok = new_session(h)
    fast, fast_tok = new_session(h)
    h.api.delay_s[slow_tok] = 2
    h.send(event(slow, "m0", slow_tok))
    time.sleep(0.2)  # the slow call is in flight
    started = time.monotonic()
    h.send(*[event(fast, f"m{i}", fast_tok) for i in range(5)])
    h.wait_decisions(fast, 5, timeout=10)
    fast_took = time.monotonic() - started
    assert not h.decisions(slow), "the slow session was decided before its call ended"
    assert fast_took < 1.5, f"other session took {fast_took:.2f} s"
    (out,) = h.wait_decisions(slow, 1)
    assert reason(out) == "validated"


def test_colliding_session_ids_never_share_a_validation(h: Harness) -> None:
    session, token = new_session(h)
    h.send(event(session, "m0", token, bot="secure"))
    h.wait_decisions(session, 1)
    # the same session id and token on another bot of the organization: validated anew
    h.send(event(session, "m1", token, bot="short"))
    # and on another organization (which has no such bot): never let in
    h.send(event(session, "m2", token, bot="secure", org="other"))
    outs = h.wait_decisions(session, 3)
    # two topics: the order between them is not observable by a consumer, so by message id
    by_id = {o.doc["messageId"] if o.doc else orjson.loads(o.value)["id"]: o for o in outs}
    assert [reason(by_id[m]) for m in ("m0", "m1", "m2")] == [
        "validated",
        "validated",
        "unknown_bot",
    ]
    assert h.api.calls[token] == 2


def test_oversized_and_deeply_nested_records(h: Harness) -> None:
    s, tok = new_session(h)
    big = event(s, "big", tok, payload={"text": "x" * 900_000})
    huge = event(s, "huge", tok, payload={"text": "y" * 1_100_000})
    deep_key = f"deep-{uuid.uuid4().hex[:6]}"

    async def send_large() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=h.broker.bootstrap, max_request_size=2_000_000
        )
        await producer.start()
        try:
            for ev in (big, huge):
                await producer.send_and_wait(h.topics["inbound"], orjson.dumps(ev), key=s.encode())
            await producer.send_and_wait(h.topics["inbound"], b"[" * 100_000, key=deep_key.encode())
        finally:
            await producer.stop()

    h.run(send_large())
    outs = h.wait_decisions(s, 2, timeout=60)
    by_id = {o.doc["messageId"] if o.doc else orjson.loads(o.value)["id"]: o for o in outs}
    assert by_id["big"].topic == "allowed" and by_id["big"].value == orjson.dumps(big)
    too_big = by_id["huge"].doc
    assert too_big is not None and too_big["reason"] == "invalid_event"
    assert too_big["event"] == {"truncated": True, "bytes": len(orjson.dumps(huge))}
    (deep,) = h.wait_decisions(deep_key, 1)
    assert deep.doc is not None and deep.doc["reason"] == "invalid_event"


def test_monitor_mode_allows_what_enforcement_would_block(h: Harness) -> None:
    """Issue 20, through the topics: the would-be block is allowed byte for byte, marked,
    audited `would_block`; nothing reaches bot.messages.blocked; calls as in enforce mode."""
    s, tok = new_session(h, valid=False)
    good, good_tok = new_session(h)
    h.send(event(s, "m0", tok, bot="watched"), event(good, "m0", good_tok, bot="watched"))
    (out,) = h.wait_decisions(s, 1)
    assert out.topic == "allowed"
    assert orjson.loads(out.value)["context"]["secureTokenForUser"] == tok  # byte for byte
    assert out.header_reason == "monitor"
    assert out.headers["secure-session-would-block"] == b"denied"
    assert out.headers["secure-session-decision"] == b"allowed"
    assert reason(h.wait_decisions(good, 1)[0]) == "validated"
    audits = h.wait(lambda: [a for a in h.audits(s) if a["kind"] == "would_block"], 1, 10, "audit")
    assert (audits[0]["decision"], audits[0]["reason"]) == ("allowed", "denied")
    assert h.api.calls[tok] == 1


def test_a_revoked_session_is_validated_anew_and_lifting_restores_caching(h: Harness) -> None:
    """Issue 20, through the topics and the CLI: after `revoke`, the next message read is
    validated anew (one more call), and after the tombstone the cache is used again."""
    s, tok = new_session(h)

    def decide(n: int) -> str:
        h.send(event(s, f"m{n}", tok))
        return reason(h.wait_decisions(s, n + 1)[-1])

    assert [decide(0), decide(1)] == ["validated", "cached"]
    done = h.cli("revoke", "--session", "acme", "secure", s, "--reason", "stolen laptop")
    assert done.returncode == 0, done.stderr
    shown = json.loads(h.cli("sessions", "show", "acme", "secure", s, "--json").stdout)
    assert shown["revoked"]["reason"] == "stolen laptop"
    time.sleep(1.5)  # a live worker reads a revocation within a second
    assert [decide(2), decide(3)] == ["validated", "cached"]  # anew, then from the new state
    assert h.api.calls[tok] == 2
    assert h.cli("revoke", "--session", "acme", "secure", s).returncode == 0
    assert h.cli("revoke", "--session", "acme", "secure", s, "--lift").returncode == 0
    time.sleep(1.5)
    assert decide(4) == "cached"  # lifted: nothing to validate anew
    assert h.api.calls[tok] == 2
    assert h.cli("revoke", "--identity", "acme").returncode == 2  # usage: one of the two
