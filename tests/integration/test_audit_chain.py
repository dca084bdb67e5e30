"""The audit chain through a real worker and broker: `audit verify` on the topic, on an
export, and on copies of the topic tampered with each way."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import bot, connector
from tests.integration.harness import AUDIT_KEY, Harness, event

pytestmark = pytest.mark.integration

REF = "srn:vault::ops:secret:audit-key"


def export(h: Harness) -> list[bytes]:
    out = h.cli("audit", "tail", "--since", "1h", "--no-follow", "--json")
    assert out.returncode == 0, out.stderr
    return [line.encode() for line in out.stdout.splitlines()]


def copy_topic(h: Harness, lines: list[bytes]) -> str:
    """A new audit topic holding `lines`, each keyed as the worker keys it."""
    name = f"audit-copy.{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=h.broker.bootstrap, linger_ms=0)
        await producer.start()
        try:
            for raw in lines:
                doc = orjson.loads(raw)
                key = doc["organization"] if doc["kind"] == "config_changed" else doc["sessionId"]
                await producer.send_and_wait(name, raw, key=key.encode())
        finally:
            await producer.stop()

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=h.broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 4, 1)])
        finally:
            await admin.close()

    h.run(create())
    h.run(go())
    return name


def verify_topic(h: Harness, topic: str, *args: str) -> tuple[int, str]:
    h.extra_env["SECURE_SESSION_TOPIC_AUDIT"] = topic
    try:
        out = h.cli("audit", "verify", *args)
    finally:
        del h.extra_env["SECURE_SESSION_TOPIC_AUDIT"]
    return out.returncode, out.stdout + out.stderr


def find(lines: list[bytes], session: str, seq: int) -> int:
    for n, raw in enumerate(lines):
        doc = orjson.loads(raw)
        if doc.get("sessionId") == session and doc["integrity"]["seq"] == seq:
            return n
    raise AssertionError(f"no seq {seq} of {session}")


def test_audit_verify_finds_every_kind_of_tampering_on_a_real_topic(harness: Harness) -> None:
    h = harness
    h.sign_audit()
    config = h.write_config([bot("secure")], [connector("main", h.server.url)])
    published = h.cli("config", "publish", str(config))
    assert published.returncode == 0, published.stderr
    h.start_worker(None)
    h.api.tokens["tok-ann"] = "ann"
    h.send(event("s-ann", "m0", "tok-ann"), event("s-eve", "m0", "tok-eve"))
    h.send(event("s-ann", "m1", "tok-ann"), event("s-eve", "m1", "tok-eve"))
    h.send(event("s-ann", "m2", "tok-ann", type="session_end"), event("s-ann", "m3", "tok-ann"))
    h.wait_decisions("s-eve", 2)
    h.wait_decisions("s-ann", 3)
    h.wait(lambda: h.audits("s-ann"), 3, 30, "audit of s-ann")
    # the bot's interval changes: one more configuration event, chained after the first
    changed = h.write_config([bot("secure", interval=60)], [connector("main", h.server.url)])
    assert h.cli("config", "publish", str(changed)).returncode == 0
    assert h.cli("config", "publish", str(changed)).returncode == 0  # unchanged: no event
    # a connector deleted (a digest of nothing), and one that never was (no event)
    deleted = h.cli("config", "delete", "--connector", "acme/main", "--connector", "acme/none")
    assert deleted.returncode == 0, deleted.stderr
    # a revocation is not a configuration change (nor are events `send` writes)
    assert h.cli("revoke", "--session", "acme", "secure", "s-nobody").returncode == 0

    lines = export(h)
    docs = [orjson.loads(raw) for raw in lines]
    chains: dict[Any, list[tuple[str, int]]] = {}
    for d in docs:
        who = d["organization"] if d["kind"] == "config_changed" else d["sessionId"]
        chains.setdefault(who, []).append((d["kind"], d["integrity"]["seq"]))
    # m1 either waited for m0's validation and was blocked by it, or came after the block
    # and was validated (and blocked) again: both are one unbroken chain
    eve = chains["s-eve"]
    assert eve in (
        [("validation", 1), ("blocked", 2), ("blocked", 3)],
        [("validation", 1), ("blocked", 2), ("validation", 3), ("blocked", 4)],
    ), eve
    assert chains["s-ann"] == [("validation", 1), ("session_ended", 2), ("validation", 1)]
    assert chains["acme"] == [("config_changed", n) for n in (1, 2, 3, 4)]
    configs = [d for d in docs if d["kind"] == "config_changed"]
    assert [d.get("bot") or d.get("connector") for d in configs] == [
        "secure",
        "main",
        "secure",
        "main",
    ]
    assert [len(d["digest"]) for d in configs] == [64, 64, 64, 0]
    assert all(d["publisher"]["host"] and d["publisher"]["user"] for d in configs)
    assert "api-key" not in b"".join(lines).decode() and AUDIT_KEY not in b"".join(lines).decode()

    shown = h.cli("sessions", "show", "acme", "secure", "s-eve", "--json")
    assert json.loads(shown.stdout)["state"]["auditChain"]["seq"] == eve[-1][1], shown.stdout

    # intact: on the topic itself and on its export
    rc, out = verify_topic(h, h.topics["audit"])
    assert rc == 0 and "intact" in out, out
    path = h.tmp / "audit.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out_file = h.cli("audit", "verify", "--file", str(path))
    assert out_file.returncode == 0 and "intact" in out_file.stderr, out_file.stderr

    eve2 = find(lines, "s-eve", 2)
    altered = list(lines)
    doc = orjson.loads(altered[eve2])
    doc["reason"] = "validated"
    altered[eve2] = orjson.dumps(doc)
    dropped = [raw for n, raw in enumerate(lines) if n != eve2]
    forged_doc = orjson.loads(lines[eve2])
    forged_doc["messageId"] = "m-forged"
    forged_doc["integrity"]["mac"] = "0" * 64
    inserted = [*lines[: eve2 + 1], orjson.dumps(forged_doc), *lines[eve2 + 1 :]]
    reordered = list(lines)
    eve3 = find(lines, "s-eve", 3)
    reordered[eve2], reordered[eve3] = reordered[eve3], reordered[eve2]
    again = [*lines, lines[eve3]]
    for tampered, word in (
        (altered, "altered"),
        (dropped, "missing"),
        (inserted, "forged"),
        (reordered, "out of order"),
    ):
        rc, out = verify_topic(h, copy_topic(h, tampered))
        problems = [line for line in out.splitlines() if "s-eve" in line]
        assert rc == 1 and len(problems) == 1 and word in problems[0], (word, out)
        assert "acme/secure/s-eve seq" in problems[0]
    rc, out = verify_topic(h, copy_topic(h, again))
    assert rc == 0 and "duplicate" in out and "intact" in out, out

    # filters: one session, and a forged event appended to the real topic itself
    rc, out = verify_topic(h, h.topics["audit"], "--session", "s-ann")
    assert rc == 0 and "3 events in 1 chains" in out, out
    h.run(h.producer.send_and_wait(h.topics["audit"], orjson.dumps(forged_doc), key=b"s-eve"))
    rc, out = verify_topic(h, h.topics["audit"])
    assert rc == 1 and "forged" in out, out
    rc, out = verify_topic(h, h.topics["audit"], "--session", "s-ann")
    assert rc == 0, out


def test_a_rotated_key_verifies_beside_the_new_one(harness: Harness) -> None:
    h = harness
    h.sign_audit()
    h.start_worker(h.write_config([bot("secure")], [connector("main", h.server.url)]))
    h.send(event("s-old", "m0", "tok-x"))
    h.wait_decisions("s-old", 1)
    h.stop_worker(h.workers[0])
    # rotation: a new key signs, the old one is kept for verification
    h.sign_audit("audit-key-2", "another-audit-key-0123456789abcdef-xyz")
    h.start_worker(h.write_config([bot("secure")], [connector("main", h.server.url)]))
    h.send(event("s-new", "m0", "tok-y"))
    h.wait_decisions("s-new", 1)
    h.wait(lambda: h.audits(), 4, 30, "audit events")
    rc, out = verify_topic(h, h.topics["audit"])
    assert rc == 1 and "s-old" in out and "s-new" not in out, out
    h.extra_env["SECURE_SESSION_AUDIT_VERIFY_KEY_REFS"] = REF
    rc, out = verify_topic(h, h.topics["audit"])
    assert rc == 0 and "intact" in out, out
    # a key that cannot be read is refused at start, naming the setting, never a value
    h.extra_env["SECURE_SESSION_AUDIT_KEY_REF"] = "srn:vault::ops:secret:nope"
    out = h.cli("worker")
    assert out.returncode == 2 and "SECURE_SESSION_AUDIT_KEY_REF" in out.stderr, out.stderr
    assert json.dumps(AUDIT_KEY) not in out.stderr
