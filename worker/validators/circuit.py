"""A circuit breaker per connector: stop hammering an Authorization API that is down.

After `failures` calls in a row end without a usable answer (no answer, or 5xx after
the retries), the circuit opens: calls fail at once as an unavailable API (the bot's
FailureMode decides) for `cooldown_s`. Then one trial call is let through (half-open):
if it gets an answer the circuit closes, otherwise it opens for another cooldown.
A 4xx is an answer: the API is up and said no.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False


class CircuitBreaker:
    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def state(self, key: str) -> State:
        c = self._circuits.get(key)
        if c is None or c.opened_at is None:
            return "closed"
        if self._clock() - c.opened_at < self._cooldown_s:
            return "open"
        return "half_open"

    def open_states(self) -> dict[str, bool]:
        """Every connector called so far: is its circuit open (or waiting for its trial)?"""
        return {key: self.state(key) != "closed" for key in self._circuits}

    def allow(self, key: str) -> bool:
        """May a call to `key` be made now? (In half-open state: one trial at a time.)"""
        state = self.state(key)
        if state == "closed":
            return True
        if state == "open":
            return False
        c = self._circuits[key]
        if c.trial:
            return False
        c.trial = True
        return True

    def record(self, key: str, *, answered: bool) -> None:
        """The outcome of a call that `allow` let through."""
        c = self._circuits.setdefault(key, _Circuit())
        c.trial = False
        if answered:
            if c.opened_at is not None:
                log.warning("circuit closed: connector answers again", extra={"connector": key})
            c.failures, c.opened_at = 0, None
            return
        c.failures += 1
        if c.opened_at is not None or c.failures >= self._threshold:
            if c.opened_at is None:
                log.warning(
                    "circuit open: %d calls in a row failed; calls paused for %.0f s",
                    c.failures,
                    self._cooldown_s,
                    extra={"connector": key},
                )
            c.opened_at = self._clock()
