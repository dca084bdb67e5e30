"""The inbound events the runs send."""

from __future__ import annotations

import random
from typing import Any

import orjson


def event(session: str, n: int, token: str, sent: float | None = None) -> bytes:
    payload: dict[str, Any] = {"text": "x" * 120}
    if sent is not None:
        payload["sent"] = sent
    return orjson.dumps(
        {
            "id": f"{session}-{n}",
            "organization": "acme",
            "bot": "bench",
            "sessionId": session,
            "type": "message",
            "payload": payload,
            "context": {"token": token},
        }
    )


def workload(sessions: int, per_session: int, prefix: str) -> list[tuple[bytes, bytes]]:
    """Messages interleaved across sessions (round robin), keyed by session."""
    return [
        (f"{prefix}{s}".encode(), event(f"{prefix}{s}", n, f"tok-{prefix}{s}"))
        for n in range(per_session)
        for s in range(sessions)
    ]


def chatty(sessions: int, per_session: int, spread: int, prefix: str) -> list[tuple[bytes, bytes]]:
    """New sessions arriving all the time, each chatty: session j's first message at
    position `per_session` x j, its others at random positions over the `spread` messages
    after it (the same every run). With a slow API, most messages then come while their
    session's validation is in flight, and wait for it."""
    rng = random.Random(19)
    placed: list[tuple[float, int, int]] = []
    for j in range(sessions):
        first = per_session * j
        placed.append((first, j, 0))
        later = sorted(first + rng.uniform(1, spread) for _ in range(per_session - 1))
        placed += [(at, j, n) for n, at in enumerate(later, 1)]
    placed.sort()
    return [
        (f"{prefix}{j}".encode(), event(f"{prefix}{j}", n, f"tok-{prefix}{j}"))
        for _, j, n in placed
    ]
