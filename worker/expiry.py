"""Expiry of idle sessions: the session table does not grow without bound.

A session's state is only useful within its bot's `ValidationInterval` (after that the
next message is validated anew whatever the state says), so a state older than
`SECURE_SESSION_EXPIRY_MULTIPLE` intervals (at least `SECURE_SESSION_EXPIRY_MIN_S`) is
deleted: locally, and with a tombstone on its changelog partition so that a restart
does not bring it back. The sweep runs every `SECURE_SESSION_SWEEP_EVERY_S` seconds in
slices, so the event loop keeps serving messages while a million keys are looked at.

A state records the table partition it is stored in (worker/decide.py, `SessionState`);
its tombstone goes there (`tombstone(key, partition)`; None: a state that does not say).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, MutableMapping

from worker.config import Registry
from worker.decide import SessionState

log = logging.getLogger(__name__)
SLICE = 5_000


def limit_ms(registry: Registry, key: bytes, multiple: float, minimum_s: float) -> float:
    """How long the state under `key` (organization/bot/session) is kept."""
    org, _, rest = key.decode(errors="replace").partition("/")
    bot = registry.bot(org, rest.partition("/")[0])
    interval = bot.interval_s if bot is not None else 0.0
    return max(interval * multiple, minimum_s) * 1000


async def sweep(
    store: MutableMapping[bytes, bytes],
    registry: Registry,
    now_ms: int,
    *,
    multiple: float,
    minimum_s: float,
    tombstone: Callable[[bytes, int | None], None],
) -> int:
    """Delete idle states from `store`, sending `tombstone(key, partition)` for each; return
    how many."""
    keys: Iterable[bytes] = list(store.keys())
    expired = 0
    for n, key in enumerate(keys, 1):
        state = SessionState.decode(store.get(key))
        if state is None or now_ms - state.validated_at_ms > limit_ms(
            registry, key, multiple, minimum_s
        ):
            store.pop(key, None)
            tombstone(key, None if state is None else state.partition)
            expired += 1
        if n % SLICE == 0:
            await asyncio.sleep(0)
    return expired
