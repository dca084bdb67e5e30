"""Expiry of idle sessions, with a fixed clock."""

from __future__ import annotations

from worker.config import Registry, parse_bot
from worker.decide import SessionState
from worker.expiry import sweep

NOW = 1_000_000_000


def registry(interval: float) -> Registry:
    reg = Registry()
    reg.bots["acme/b"] = parse_bot(
        {
            "Name": "b",
            "Organization": "acme",
            "SecureSession": True,
            "SecureSessionConfig": {
                "Type": "baas",
                "ValidationInterval": interval,
                "ApiAlias": "A",
            },
        },
        "t",
    )
    return reg


def state(age_s: float) -> bytes:
    return SessionState(int(NOW - age_s * 1000), True, "sha256:0123456789abcdef").encode()


async def test_states_older_than_a_multiple_of_the_interval_are_expired() -> None:
    store = {
        b"acme/b/fresh": state(19),
        b"acme/b/idle": state(21),
        b"acme/gone/old": state(16),  # bot deleted: the minimum applies
        b"acme/gone/recent": state(14),
        b"acme/b/unreadable": b"\xff",
    }
    tombstones: list[bytes] = []
    expired = await sweep(
        store, registry(10), NOW, multiple=2, minimum_s=15, tombstone=tombstones.append
    )
    assert expired == 3
    assert set(store) == {b"acme/b/fresh", b"acme/gone/recent"}
    assert sorted(tombstones) == [b"acme/b/idle", b"acme/b/unreadable", b"acme/gone/old"]


async def test_the_minimum_protects_bots_with_short_intervals() -> None:
    store = {b"acme/b/s": state(30)}
    assert (
        await sweep(store, registry(0), NOW, multiple=2, minimum_s=60, tombstone=lambda k: None)
        == 0
    )
