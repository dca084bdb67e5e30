"""The audit chain: sealing, and `Verifier` finding each kind of tampering."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from worker.audit import START, Sealer, Verifier, load_key, mac_of
from worker.decide import Chain, SessionState
from worker.errors import SettingsError
from worker.events import Who, audit_event
from worker.pipeline import Pipeline
from worker.vault import Vault

KEY = b"k" * 32
OLD = b"o" * 32


def chain(n: int, key: bytes = KEY, session: str = "s1") -> list[bytes]:
    sealer, link, out = Sealer(key), START, []
    for i in range(1, n + 1):
        doc = audit_event(
            "validation", Who("acme", "b", session, f"m{i}"), i, "allowed", "validated", None, None
        )
        raw, link = sealer.seal(doc, link)
        out.append(raw)
    return out


def verify(events: list[bytes], keys: tuple[bytes, ...] = (KEY,)) -> tuple[list[str], list[str]]:
    v = Verifier(keys)
    for n, raw in enumerate(events):
        v.add(raw, f"#{n}")
    report = v.finish()
    return report.problems, report.duplicates


def test_a_sealed_event_carries_seq_prev_and_a_mac_over_the_rest() -> None:
    first, second = chain(2)
    doc = orjson.loads(second)
    integrity = doc["integrity"]
    assert integrity["seq"] == 2
    import hashlib

    assert integrity["prev"] == hashlib.sha256(first).hexdigest()
    assert orjson.loads(first)["integrity"]["prev"] == ""
    mac = integrity.pop("mac")
    assert mac == mac_of(KEY, doc)


def test_an_intact_chain_verifies() -> None:
    assert verify(chain(5) + chain(3, session="s2")) == ([], [])


def test_a_changed_field_is_altered() -> None:
    events = chain(5)
    doc = orjson.loads(events[2])
    doc["decision"] = "blocked"
    events[2] = orjson.dumps(doc)
    problems, _ = verify(events)
    assert len(problems) == 1 and "seq 3: altered" in problems[0], problems


def test_a_dropped_event_is_missing() -> None:
    events = chain(5)
    del events[2]
    problems, _ = verify(events)
    assert problems == ["session acme/b/s1 seq 3: missing (before #2)"]


def test_an_inserted_event_is_forged() -> None:
    events = chain(4)
    forged = orjson.loads(events[1])
    forged["messageId"] = "evil"
    forged["integrity"]["mac"] = "0" * 64
    unsigned = orjson.loads(events[1])
    del unsigned["integrity"]
    problems, _ = verify([*events[:2], orjson.dumps(forged), orjson.dumps(unsigned), *events[2:]])
    assert len(problems) == 2, problems
    assert "seq 2: forged" in problems[1] and "forged: an event without integrity" in problems[0]


def test_two_events_swapped_are_out_of_order() -> None:
    events = chain(5)
    events[2], events[3] = events[3], events[2]
    problems, _ = verify(events)
    assert len(problems) == 1 and "seq 4: out of order" in problems[0], problems


def test_a_signature_with_another_key_is_forged() -> None:
    events = chain(3)
    events.insert(3, chain(4, key=b"x" * 32)[3])  # a seq 4 signed by someone else
    problems, _ = verify(events)
    assert len(problems) == 1 and "seq 4: altered (its MAC" in problems[0], problems


def test_an_event_written_again_is_a_duplicate_not_tampering() -> None:
    events = chain(3)
    sealer = Sealer(KEY)
    link_2 = orjson.loads(events[2])["integrity"]
    again = orjson.loads(events[2])
    del again["integrity"]
    again["auditId"] = "another"
    raw, _ = sealer.seal(again, START.__class__(2, link_2["prev"]))
    problems, duplicates = verify([*events, raw])
    assert problems == [] and len(duplicates) == 1 and "seq 3: duplicate" in duplicates[0]


def test_a_rotated_key_verifies_with_the_old_key_beside_the_new() -> None:
    old_then_new = chain(3, key=OLD) + chain(2, key=KEY, session="s2")
    assert verify(old_then_new, (KEY, OLD)) == ([], [])
    problems, _ = verify(old_then_new, (KEY,))
    assert len(problems) == 3


def test_a_chain_seen_from_its_middle_is_anchored_there() -> None:
    # --since: the first events are not read
    assert verify(chain(6)[3:]) == ([], [])


def test_a_key_is_refused_when_short_or_missing_and_never_shown() -> None:
    vault = Vault(None, {"SECURE_SESSION_SECRET__OPS__AUDIT": "short-secret-value"})
    with pytest.raises(SettingsError) as short:
        load_key(vault, "srn:vault::ops:secret:audit", "SECURE_SESSION_AUDIT_KEY_REF")
    assert "short-secret-value" not in str(short.value) and "32" in str(short.value)
    with pytest.raises(SettingsError, match="not in the vault"):
        load_key(vault, "srn:vault::ops:secret:gone", "SECURE_SESSION_AUDIT_KEY_REF")


def test_a_chain_is_stored_in_state_version_3_and_read_back() -> None:
    state = SessionState(5, True, "fp", None, None, 3, Chain(4, "ab", ((3, 99, 3, "cd"),)))
    raw = state.encode()
    assert raw.startswith(b"[3,")
    assert SessionState.decode(raw) == state
    assert SessionState(5, True, "fp").encode().startswith(b"[2,")  # no chain: version 2


# the pipeline's chains


class Origin:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition, self.offset = partition, offset


def signed_pipeline(answer: int = 200) -> tuple[Pipeline, list[bytes], dict[bytes, bytes]]:
    from tests.unit.test_pipeline import build

    audit: list[bytes] = []

    def send(topic: str, key: Any, value: bytes, headers: Any = None, since: Any = None) -> None:
        if topic == "secure-session.audit":
            audit.append(value)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answer if request.headers["X-T"] != "bad" else 403)

    p = build(handler, send)
    p._sealer = Sealer(KEY)
    return p, audit, p._table  # type: ignore[return-value]


def inbound(i: int, token: str = "ok", kind: str = "message") -> bytes:
    return orjson.dumps(
        {
            "id": f"m{i}",
            "type": kind,
            "organization": "acme",
            "bot": "b",
            "sessionId": "s1",
            "text": "hi",
            "context": {"t": token},
        }
    )


async def feed(p: Pipeline, records: list[tuple[int, bytes]]) -> None:
    for offset, value in records:
        await p.submit(b"s1", value, 0, offset, origin=Origin(0, offset))
        await asyncio.sleep(0.01)
    await p.drain_all()


async def test_a_sessions_events_are_chained_and_end_with_the_session() -> None:
    p, audit, _ = signed_pipeline()
    await feed(
        p,
        [
            (0, inbound(0)),
            (1, inbound(1, "bad")),
            (2, inbound(2, kind="session_end")),
            (3, inbound(3)),
        ],
    )
    seqs = [(orjson.loads(a)["kind"], orjson.loads(a)["integrity"]["seq"]) for a in audit]
    # a validation; a denied one and its block; the end; a new session's first validation
    assert seqs == [
        ("validation", 1),
        ("validation", 2),
        ("blocked", 3),
        ("session_ended", 4),
        ("validation", 1),
    ]
    assert verify(audit) == ([], [])


async def test_a_record_read_again_after_a_crash_writes_its_events_again_as_duplicates() -> None:
    p, audit, table = signed_pipeline()
    await feed(p, [(0, inbound(0)), (1, inbound(1, "bad"))])
    # a new owner reads the table as written, and the last record again: its state was
    # delivered, its audit events maybe not
    p2, audit2, table2 = signed_pipeline()
    table2.update(table)
    await feed(p2, [(1, inbound(1, "bad")), (2, inbound(2, "bad"))])
    problems, duplicates = verify(audit + audit2)
    assert problems == [] and len(duplicates) == 2, (problems, duplicates)
    # and when those events were lost with the crash, the chain has no gap
    problems, duplicates = verify(audit[:1] + audit2)
    assert (problems, duplicates) == ([], [])


async def test_records_read_again_after_a_crash_never_leave_a_gap_whatever_was_lost() -> None:
    """A denied session (two events a message): the new owner has the last state, and the
    events of none, some or all of the records it reads again."""
    p, audit, table = signed_pipeline()
    await feed(p, [(n, inbound(n, "bad")) for n in range(3)])
    assert len(audit) == 6
    p2, audit2, table2 = signed_pipeline()
    table2.update(table)
    await feed(p2, [(n, inbound(n, "bad")) for n in range(4)])
    for delivered in (6, 4, 2, 0):
        problems, duplicates = verify(audit[:delivered] + audit2)
        assert problems == [] and len(duplicates) == delivered, (delivered, problems)
    # a second crash: what the group committed (r0, r1) had its events delivered before
    # the commit; the next owner reads from there, or from the start when nothing was
    for committed, delivered in ((2, 4), (0, 3), (0, 0)):
        p3, audit3, table3 = signed_pipeline()
        table3.update(table2)
        await feed(p3, [(n, inbound(n, "bad")) for n in range(committed, 5)])
        problems, _ = verify(audit + audit2[:delivered] + audit3)
        assert problems == [], (committed, delivered, problems)


async def test_a_validated_session_read_again_is_validated_again_so_its_event_is_there() -> None:
    p, audit, table = signed_pipeline()
    await feed(p, [(0, inbound(0)), (1, inbound(1))])
    assert len(audit) == 1  # m1: cached, not audited
    p2, audit2, table2 = signed_pipeline()
    table2.update(table)  # the state was delivered, its audit event lost with the crash
    await feed(p2, [(0, inbound(0)), (1, inbound(1))])
    assert [orjson.loads(a)["integrity"]["seq"] for a in audit2] == [1]
    assert verify(audit2) == ([], [])


def test_chain_movers_are_bounded_and_rewind_to_the_record_read_again() -> None:
    c = Chain(0, "")
    for offset in range(20):
        seq, digest, movers = c.start(0, offset)
        c = Chain(seq + 1, f"d{seq + 1}", movers)
    assert len(c.movers) == 8 and c.movers[0][1] == 12
    seq, digest, movers = c.start(0, 14)  # read again: from before it, the later ones redo
    assert (seq, digest) == (14, "d14")
    assert movers[2] == (0, 14, 14, "d14") and movers[3] == (0, 15, None, None)
    c = Chain(15, "x15", movers)
    assert c.start(0, 15)[:2] == (15, "x15")  # a redo: from where the chain stands
    assert Chain.decode(c.encode()) == c


async def test_unsigned_without_a_key() -> None:
    p, audit, _ = signed_pipeline()
    p._sealer = None
    await feed(p, [(0, inbound(0))])
    assert "integrity" not in orjson.loads(audit[0])


def test_a_config_change_reads_as_a_line_naming_what_changed_and_who() -> None:
    from worker.audit import config_event
    from worker.tools import audit_line

    doc = config_event("acme", "connector", "api", b"{}")
    doc["publisher"] = {"user": "ops", "host": "bastion\x1b[2J"}
    line = audit_line(doc)
    assert "config_changed acme connector api  digest 44136fa355b3678a  by ops@bastion" in line
    assert "\x1b" not in line
    assert "deleted" in audit_line(config_event("acme", "bot", "b", None) | {"publisher": {}})
