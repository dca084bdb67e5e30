"""The decision core: pure functions of (session state, validation result, config, now).

No I/O and no clock: `now_ms` is an argument, so every rule is tested without a broker
or a sleep (tests/unit/test_decide.py, with Hypothesis properties).
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from worker.events import Reason

Outcome = Literal[
    "allowed",
    "denied",
    "unavailable",
    "misconfigured",
    "token_missing",
    "token_invalid",
    "token_expired",
    "token_revoked",
]


STATE_VERSION: Final = 3
"""The stored state's layout. 1 (before 0.6): `[validated_at, allowed, fingerprint,
identity, expires_at]`; 2: `[2, validated_at, allowed, fingerprint, identity, expires_at,
partition]`; 3: version 2's fields then the audit chain, `[3, …, partition, [seq, digest,
[[partition, offset, base_seq, base_digest], …]]]`, written only with a chain (so a
worker without an audit key writes version 2). A worker reads every older version; a
newer or unknown one is no state."""

UNREADABLE: collections.Counter[str] = collections.Counter()
"""Stored states read as no state, by why (`unknown_version`, `malformed`): each distinct
stored value is counted once (decoding is cached). Exported by worker/metrics.py."""


Mover = tuple[int | None, int, int | None, str | None]
"""An inbound record that moved a session's audit chain: (partition, offset, base seq,
base digest): where the chain stood before its events (None: from wherever it stands)."""

MAX_MOVERS: Final = 8
"""Movers kept per session: the records a crash may have left to be read again."""


@dataclass(frozen=True, slots=True)
class Chain:
    """Where a session's audit chain stands (worker/audit.py): its last event's seq and
    digest, and the last inbound records that moved it.

    A record read again after a crash (it is among the movers) writes its events again
    from where the chain stood before it: duplicates of what was delivered, and in place of
    what was lost with the crash, never a gap. The movers after it write theirs again
    from wherever the chain then stands."""

    seq: int
    digest: str
    movers: tuple[Mover, ...] = ()

    def encode(self) -> list[Any]:
        return [self.seq, self.digest, [list(m) for m in self.movers]]

    @staticmethod
    def decode(doc: Any) -> Chain | None | Literal[False]:
        """The chain in `doc` (None: none); False when it is not a chain."""
        if doc is None:
            return None
        if not (isinstance(doc, list) and len(doc) == 3 and isinstance(doc[2], list)):
            return False
        seq, digest, movers = doc
        if type(seq) is not int or type(digest) is not str:
            return False
        for m in movers:
            if not (
                isinstance(m, list)
                and len(m) == 4
                and (m[0] is None or type(m[0]) is int)
                and type(m[1]) is int
                and ((m[2], m[3]) == (None, None) or (type(m[2]) is int and type(m[3]) is str))
            ):
                return False
        return Chain(seq, digest, tuple((m[0], m[1], m[2], m[3]) for m in movers))

    def moved_by(self, partition: int | None, offset: int | None) -> bool:
        """Whether the inbound record at (`partition`, `offset`) moved the chain."""
        for m in self.movers:  # noqa: SIM110 - a loop: runs for every message of a signed session
            if m[1] == offset and m[0] == partition:
                return True
        return False

    def start(
        self, partition: int | None, offset: int | None
    ) -> tuple[int, str, tuple[Mover, ...]]:
        """Where the record at (`partition`, `offset`) chains its events from (seq,
        digest), and the movers once it has."""
        here = (self.seq, self.digest)
        if offset is None:
            return *here, self.movers
        for i, (p, o, base_seq, base_digest) in enumerate(self.movers):
            if (p, o) != (partition, offset):
                continue
            if base_seq is None or base_digest is None:  # after a record read again
                return *here, (*self.movers[:i], (p, o, *here), *self.movers[i + 1 :])
            later = tuple((lp, lo, None, None) for lp, lo, _, _ in self.movers[i + 1 :])
            return base_seq, base_digest, (*self.movers[:i], (p, o, base_seq, base_digest), *later)
        return *here, (*self.movers, (partition, offset, *here))[-MAX_MOVERS:]


@dataclass(frozen=True, slots=True)
class SessionState:
    """What the worker keeps per session (in the changelog-backed table)."""

    validated_at_ms: int
    """When the last validation finished."""
    allowed: bool
    """Its outcome: only a success is ever reused."""
    fingerprint: str
    """Fingerprint of what was sent (mapped request or token): a change re-validates."""
    identity: str | None = None
    expires_at_ms: int | None = None
    """A token's `exp`: never trusted past it, whatever the interval."""
    partition: int | None = None
    """The table partition it is stored in (its inbound record's): the one source of where
    a session's state lives, for its tombstones (expiry, session_end). None: version 1."""
    chain: Chain | None = None
    """Its audit chain, when audit events are signed."""

    def with_chain(self, chain: Chain | None) -> SessionState:
        """This state with another audit chain (dataclasses.replace is ~10x slower)."""
        return SessionState(
            self.validated_at_ms,
            self.allowed,
            self.fingerprint,
            self.identity,
            self.expires_at_ms,
            self.partition,
            chain,
        )

    def encode(self) -> bytes:
        fields: list[Any] = [
            2 if self.chain is None else STATE_VERSION,
            self.validated_at_ms,
            self.allowed,
            self.fingerprint,
            self.identity,
            self.expires_at_ms,
            self.partition,
        ]
        if self.chain is not None:
            fields.append(self.chain.encode())
        return orjson.dumps(fields)

    @staticmethod
    def decode(raw: bytes | None) -> SessionState | None:
        """The state in `raw`; None for a missing or unreadable value (treated as unknown)."""
        if raw is None:
            return None
        return _decode(raw) if len(raw) <= 4096 else _decode.__wrapped__(raw)


_FIELDS: Final = {1: 5, 2: 6, 3: 7}
"""Fields after the version, by version."""


@functools.lru_cache(maxsize=2**16)  # a session's messages read the same value again and again
def _decode(raw: bytes) -> SessionState | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, list) and doc and type(doc[0]) is int:
        version = 1 if len(doc) == 5 and doc[0] > 1_000 else doc[0]  # 1 starts with a time
        fields = doc if version == 1 else doc[1:]
        if version in _FIELDS and len(fields) == _FIELDS[version]:
            at, allowed, fp, identity, exp, *rest = fields
            partition = rest[0] if rest else None
            chain = Chain.decode(rest[1]) if len(rest) > 1 else None
            if (
                type(at) is int
                and type(allowed) is bool
                and type(fp) is str
                and (identity is None or type(identity) is str)
                and (exp is None or type(exp) is int)
                and (partition is None or type(partition) is int)
                and chain is not False
            ):
                return SessionState(at, allowed, fp, identity, exp, partition, chain)
        elif STATE_VERSION < version <= 1_000:
            UNREADABLE["unknown_version"] += 1  # written by a newer worker: validate again
            return None
    UNREADABLE["malformed"] += 1
    return None


@dataclass(frozen=True, slots=True)
class Validation:
    """The result of one validation (an HTTP call with its retries, or a token check)."""

    outcome: Outcome
    fingerprint: str
    at_ms: int
    detail: str = ""
    identity: str | None = None
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one message."""

    allowed: bool
    reason: Reason
    detail: str = ""
    validated_at_ms: int = 0
    identity: str | None = None


class _Validate:
    __slots__ = ()

    def __repr__(self) -> str:
        return "VALIDATE"


VALIDATE: Final = _Validate()
"""`decide` answers this when the message needs a new validation."""

_BLOCK_REASON: Final[dict[Outcome, Reason]] = {
    "denied": "denied",
    "misconfigured": "misconfigured",
    "token_missing": "token_missing",
    "token_invalid": "token_invalid",
    "token_expired": "token_expired",
    "token_revoked": "token_revoked",
}


def is_fresh(state: SessionState | None, fingerprint: str, interval_s: float, now_ms: int) -> bool:
    """A success for the same credential, less than `interval_s` ago and not past its `exp`."""
    return (
        state is not None
        and state.allowed
        and state.fingerprint == fingerprint
        and now_ms - state.validated_at_ms < interval_s * 1000
        and (state.expires_at_ms is None or now_ms < state.expires_at_ms)
    )


def verdict(result: Validation, failure_mode: str, *, first: bool) -> Decision:
    """The decision a validation gives: to the message that caused it (`first`) or a waiter."""
    if result.outcome == "allowed":
        if not first:  # a waiter: the Decision every cached message of the session shares
            return _cached(result.at_ms, result.identity)
        return Decision(True, "validated", "", result.at_ms, result.identity)
    if result.outcome == "unavailable":
        if failure_mode == "open":
            return Decision(True, "fail_open", result.detail, result.at_ms)
        return Decision(False, "authorization_unavailable", result.detail, result.at_ms)
    return Decision(False, _BLOCK_REASON[result.outcome], result.detail, result.at_ms)


def decide(
    state: SessionState | None,
    fingerprint: str,
    interval_s: float,
    failure_mode: str,
    now_ms: int,
    waited_for: Validation | None = None,
) -> Decision | _Validate:
    """Decide a message of a secure bot, or say that it needs a validation.

    `waited_for` is the validation this message waited on (it arrived while the call was
    in flight): it decides the message when the credential is the same.
    """
    if waited_for is not None and waited_for.fingerprint == fingerprint:
        return verdict(waited_for, failure_mode, first=False)
    if is_fresh(state, fingerprint, interval_s, now_ms):
        assert state is not None
        return _cached(state.validated_at_ms, state.identity)
    return VALIDATE


@functools.lru_cache(maxsize=2**16)  # one Decision for every cached message of a session
def _cached(validated_at_ms: int, identity: str | None) -> Decision:
    return Decision(True, "cached", "", validated_at_ms, identity)


def state_after(result: Validation, partition: int | None = None) -> SessionState | None:
    """The session state a validation leaves (stored in `partition`), or None to leave the
    state as it was.

    An unreachable API or a misconfiguration says nothing about the session.
    """
    if result.outcome in ("unavailable", "misconfigured"):
        return None
    return SessionState(
        result.at_ms,
        result.outcome == "allowed",
        result.fingerprint,
        result.identity,
        result.expires_at_ms,
        partition,
    )
