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


def state(age_s: float, partition: int | None = 3) -> bytes:
    return SessionState(
        int(NOW - age_s * 1000), True, "sha256:0123456789abcdef", partition=partition
    ).encode()


async def test_states_older_than_a_multiple_of_the_interval_are_expired() -> None:
    store = {
        b"acme/b/fresh": state(19),
        b"acme/b/idle": state(21, partition=5),
        b"acme/gone/old": state(16),  # bot deleted: the minimum applies
        b"acme/gone/recent": state(14),
        b"acme/b/unreadable": b"\xff",
    }
    tombstones: list[tuple[bytes, int | None]] = []
    expired = await sweep(
        store,
        registry(10),
        NOW,
        multiple=2,
        minimum_s=15,
        tombstone=lambda key, partition: tombstones.append((key, partition)),
    )
    assert expired == 3
    assert set(store) == {b"acme/b/fresh", b"acme/gone/recent"}
    # each to the partition its state says it is stored in (unreadable: the caller's choice)
    assert sorted(tombstones, key=str) == [
        (b"acme/b/idle", 5),
        (b"acme/b/unreadable", None),
        (b"acme/gone/old", 3),
    ]


async def test_the_minimum_protects_bots_with_short_intervals() -> None:
    store = {b"acme/b/s": state(30)}
    assert (
        await sweep(store, registry(0), NOW, multiple=2, minimum_s=60, tombstone=lambda k, p: None)
        == 0
    )
