"""Per-session ordering, one validation in flight per session, back-pressure, ordered acks.

The consumer's drain loop (worker/faust_tuning.py) hands every inbound record to
`Pipeline.submit`. A record whose session is
being validated joins that session's lane and waits; every other record is decided at
once. A validation runs as its own task, so a slow Authorization API holds up only the
sessions that wait for it. When the call ends, its task decides the waiting records of
the lane in order (starting a new validation if one of them carries a new credential).

Offsets are acked per partition in offset order: a record is acked only when it and
every record before it on its partition have been decided and sent, so a commit never
skips an undecided record (Faust's own commit is not gap-safe).

When partitions are revoked (a rebalance) or the worker stops, `settle` gives the records
of those partitions a grace period to be decided, then *abandons* the rest: their
validations are cancelled, and they are never decided, sent or acked by this worker, so
the next owner reads them again. Deciding a record is synchronous code (the send only
queues): nothing runs between its first output and its ack, so a record is either
decided, sent and acked, or none of the three. The only awaits are the validation call
itself, in its own task, and `submit`'s back-pressure, between records.

A session's state is stored in the table partition of the inbound record whose
validation wrote it (each record keeps its origin, the Kafka message, and writes run
through `run_as(origin, …)`, which makes it Faust's current event: worker/faust_tuning.py).
The state records that partition; forgetting a session (`session_end`) deletes it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import (
    Callable,
    Container,
    Coroutine,
    Hashable,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import orjson

from worker.audit import START, Link, Sealer
from worker.config import Bot, Registry
from worker.decide import Chain, Decision, SessionState, Validation, state_after, verdict
from worker.decide import decide as decide_message
from worker.errors import InvalidEvent
from worker.events import (
    AuditKind,
    Inbound,
    Reason,
    Who,
    allowed_headers,
    audit_event,
    blocked_record,
    fingerprint,
    fingerprint_strings,
    parse_inbound,
    redacted_event,
    would_block_headers,
)
from worker.metrics import Metrics
from worker.settings import Topics
from worker.validators import Check, RemoteValidator, Report, TokenCheck
from worker.validators.baas import BaasValidator
from worker.validators.introspection import IntrospectionValidator
from worker.validators.jwt import JwtValidator

log = logging.getLogger(__name__)

UNKNOWN_BOT_LABEL = "(none)"
"""The metrics' bot label of decisions made without a bot's configuration."""


class Send(Protocol):
    """Queue one record for production, in call order, without waiting (a decision must
    not pause between its outputs and its ack; back-pressure is the caller's, between
    records); `since`: for a decision, when its message came in (`time.monotonic()`), to be
    timed."""

    def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
        since: float | None = None,
    ) -> None: ...


Ack = Callable[[Hashable, int], Any]
"""Ack the record at an offset of a partition (called in offset order per partition)."""

Forget = Callable[[bytes, int | None], None]
"""Delete a session's state, and write its tombstone to the given table partition."""


class RunAs(Protocol):
    """Run a table operation on behalf of a record's origin (its Kafka message)."""

    def __call__(self, origin: Any, fn: Callable[..., Any], /, *args: Any) -> Any: ...


@dataclass(slots=True, eq=False)
class _Record:
    key: bytes | None
    value: bytes | None
    offset: int
    order: deque[_Record]
    received: float
    """When it came in (`time.monotonic()`)."""
    partition: Hashable = None
    event: Inbound | None = None
    origin: Any = None
    """The Kafka message, for table writes on its behalf (see `RunAs`)."""
    done: bool = False
    abandoned: bool = False
    """Given up (rebalance or stop): never decided, sent or acked here."""
    chained: bool = False
    """It wrote a signed audit event (its next ones follow that one)."""


class _Read:
    __slots__ = ()


READ: Final = _Read()
"""`_audit`'s default state: the table's."""


class Pipeline:
    """Decides inbound records; see the module docstring."""

    def __init__(
        self,
        *,
        registry: Registry,
        baas: BaasValidator,
        introspection: IntrospectionValidator,
        jwt: JwtValidator,
        table: MutableMapping[bytes, bytes],
        send: Send,
        ack: Ack,
        topics: Topics,
        max_held: int,
        metrics: Metrics,
        max_record_bytes: int = 1_000_000,
        run_as: RunAs = lambda _origin, fn, *args: fn(*args),
        forget: Forget | None = None,
        clock: Callable[[], float] = time.time,
        reads: Mapping[bytes, bytes] | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self._registry = registry
        self._remote: dict[str, RemoteValidator] = {"baas": baas, "introspection": introspection}
        self._jwt = jwt
        self._table = table
        self._reads = table if reads is None else reads
        """Where state is read: the table's store itself (Faust's table adds per-read hooks)."""
        self._send = send
        self._ack = ack
        self._topics = topics
        self._max_held = max_held
        self._max_record_bytes = max_record_bytes
        self._run_as = run_as
        self._forget: Forget = forget if forget is not None else self._pop_state
        self._clock = clock
        self._sealer = sealer
        self._written: tuple[bytes, SessionState] | None = None
        """The state written last, as bytes and decoded."""
        self._lanes: dict[bytes, deque[_Record]] = {}
        self._order: dict[Hashable, deque[_Record]] = {}
        self._held = 0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._decided = asyncio.Event()  # set whenever a record is (for `settle`)
        self._calls: dict[bytes, tuple[_Record, asyncio.Task[None]]] = {}
        """The validation that owns each lane, and the record that started it."""
        self._refreshes: dict[bytes, tuple[Hashable, asyncio.Task[None]]] = {}
        """Refresh-ahead validations in flight, by session, with their record's partition."""
        self._refresh_failed: dict[bytes, int] = {}
        """When a session's last refresh failed (no answer, misconfigured): not tried again
        within f x interval. Bounded: the oldest entries go first."""
        self.metrics = metrics
        metrics.held.set_function(lambda: self._held)  # read when scraped

    def _state(self, key: bytes) -> SessionState | None:
        """A session's stored state; the one written last without decoding it again (a
        lane's waiters read what its validation wrote)."""
        raw = self._reads.get(key)
        last = self._written
        if last is not None and raw is last[0]:
            return last[1]
        return SessionState.decode(raw)

    def _pop_state(self, key: bytes, _partition: int | None) -> None:
        self._table.pop(key, None)

    @property
    def held(self) -> int:
        """Records waiting for a validation (besides the ones that caused it)."""
        return self._held

    async def submit(
        self,
        key: bytes | None,
        value: bytes | None,
        partition: Hashable,
        offset: int,
        origin: Any = None,
    ) -> None:
        """Take the inbound record at `offset` of `partition`; returns when the next may be
        taken (back-pressure)."""
        order = self._order.get(partition)
        if order is None:
            order = self._order[partition] = deque()
        record = _Record(key, value, offset, order, time.monotonic(), partition, origin=origin)
        order.append(record)
        try:
            record.event = parse_inbound(value)
        except InvalidEvent as exc:
            self._block(record, None, "invalid_event", exc.detail, None)
            return
        lane = self._lanes.get(record.event.state_key)
        if lane is None:
            self._process(record, None)
            return
        lane.append(record)
        self._held += 1
        if self._held >= self._max_held:
            self._room.clear()
            log.warning("%d records wait for validations: pausing intake", self._held)
            await self._room.wait()

    def _process(self, record: _Record, waited_for: Validation | None) -> bool:
        """Decide `record`, or start its validation (True); never raises."""
        if record.abandoned:
            return False
        try:
            return self._decide(record, waited_for)
        except Exception:  # noqa: BLE001 - one bad record must never stop the worker
            log.exception("internal error deciding a message", extra=_where(record))
            if not record.done:
                self._block(record, None, "authorization_unavailable", "internal error", None)
            return False

    def _decide(self, record: _Record, waited_for: Validation | None) -> bool:
        event = record.event
        assert event is not None
        bot = self._registry.bot(event.organization, event.bot)
        if bot is None:
            detail = f"no configuration for bot {event.organization}/{event.bot}"
            self._block(record, None, "unknown_bot", detail, None)
            return False
        if event.type == "session_end":
            self._end_session(record, bot)
            return False
        if not bot.secure:
            now_ms = self._now_ms()
            self._allow(record, Decision(True, "not_required", "", now_ms))
            return False
        check: Check
        remote: RemoteValidator | None = None
        if bot.type == "jwt":
            check = self._jwt.prepare(bot, event)
        else:
            assert bot.api_alias is not None
            connector = self._registry.connector(event.organization, bot.api_alias)
            if connector is None:
                detail = f"connector {event.organization}/{bot.api_alias} not found"
                self._block(record, bot, "misconfigured", detail, None)
                return False
            remote = self._remote[bot.type]
            check = remote.prepare(bot, connector, event)
        state = self._state(event.state_key)
        if state is not None:
            revoked_at = self._registry.revocations.revoked_at(
                event.organization, event.bot, event.session_id, state.identity
            )
            if revoked_at is not None and state.validated_at_ms < revoked_at:
                state = None  # validated before a revocation: validated anew, never cached
            elif state.chain is not None and not record.chained and _moved(state.chain, record):
                # read again after a crash: decided anew, so that the events it wrote (or
                # that were lost with the crash) are written again in their place
                state = None
        decision = decide_message(
            state, check.fingerprint, bot.interval_s, bot.failure_mode, self._now_ms(), waited_for
        )
        if isinstance(decision, Decision):
            self._apply(record, bot, decision, check.redact)
            ahead = bot.refresh_ahead is not None and decision.reason == "cached"
            if ahead and remote is not None and state is not None:
                self._refresh_ahead(record, bot, check, remote, state)
            return False
        key = event.state_key
        if key in self._refreshes:  # the interval ran out, or the credential changed,
            # while a refresh runs: this record waits for it, and the session's next ones
            self._lanes.setdefault(key, deque()).appendleft(record)
            self._held += 1
            return True
        if remote is None:  # a JWT: no I/O, decided in line
            assert isinstance(check, TokenCheck)
            revocations = self._registry.revocations

            def revoked_for(identity: str | None) -> int | None:
                return revocations.revoked_at(
                    event.organization, event.bot, event.session_id, identity
                )

            self._conclude(record, bot, check, *self._jwt.validate(check, revoked_for))
            return False
        self._lanes.setdefault(event.state_key, deque())
        self._calls[event.state_key] = (record, self._spawn(self._call(record, bot, check, remote)))
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A validation's task, kept until it ends (`drain_all` waits for them)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, record: _Record, bot: Bot, check: Check, remote: RemoteValidator) -> None:
        """A call to a service, in its own task; then the session's waiting records."""
        assert record.event is not None
        result: Validation | None = None  # none: the waiters validate on their own
        try:
            try:
                result, report = await remote.validate(check)
            except asyncio.CancelledError:
                return  # abandoned (see `abandon`): the next owner validates it again
            self._conclude(record, bot, check, result, report)
        except Exception:  # noqa: BLE001 - the lane must be drained whatever happens
            log.exception("internal error validating a message", extra=_where(record))
            if not record.done:
                self._block(record, bot, "authorization_unavailable", "internal error", None)
        finally:
            self._drain(record.event.state_key, result)

    def _refresh_ahead(
        self, record: _Record, bot: Bot, check: Check, remote: RemoteValidator, state: SessionState
    ) -> None:
        """After f x interval, a cached message starts a validation in the background (one
        per session at a time, and none within f x interval of a failed one)."""
        assert record.event is not None and bot.refresh_ahead is not None
        key = record.event.state_key
        now_ms = self._now_ms()
        ahead_ms = bot.refresh_ahead * bot.interval_s * 1000
        if now_ms - state.validated_at_ms < ahead_ms or key in self._refreshes:
            return
        if now_ms - self._refresh_failed.get(key, -(2**62)) < ahead_ms:
            return
        self._refreshes[key] = (
            record.partition,
            self._spawn(self._refresh(record, bot, check, remote)),
        )

    async def _refresh(
        self, record: _Record, bot: Bot, check: Check, remote: RemoteValidator
    ) -> None:
        """A refresh-ahead call: its result updates the state and is audited; records that
        had to wait for it (the interval ran out) are decided by it."""
        assert record.event is not None
        key = record.event.state_key
        result: Validation | None = None
        try:
            try:
                result, report = await remote.validate(check)
            except asyncio.CancelledError:
                return  # abandoned: the partition moved, or the worker stops
            self._record_validation(record, bot, result, report)
            self.metrics.refreshed(bot.organization, bot.name, result.outcome)
            if state_after(result) is None:
                if len(self._refresh_failed) >= MAX_REFRESH_FAILURES:
                    del self._refresh_failed[next(iter(self._refresh_failed))]
                self._refresh_failed[key] = self._now_ms()
            else:
                self._refresh_failed.pop(key, None)
        except Exception:  # noqa: BLE001 - the lane must be drained whatever happens
            log.exception("internal error refreshing a session", extra=_where(record))
            result = None
        finally:
            del self._refreshes[key]
            self._drain(key, result)

    def _conclude(
        self, record: _Record, bot: Bot, check: Check, result: Validation, report: Report
    ) -> None:
        """Record a validation, and decide its message by it."""
        decision = self._record_validation(record, bot, result, report)
        self._apply(record, bot, decision, check.redact)

    def _record_validation(
        self, record: _Record, bot: Bot, result: Validation, report: Report
    ) -> Decision:
        """A validation's state, metrics and audit event; returns the decision it gives."""
        assert record.event is not None
        self.metrics.validated(
            report.type,
            f"{bot.organization}/{report.connector}" if report.connector else "",
            result.outcome,
            report.latency_ms / 1000,
        )
        new_state = state_after(result, getattr(record.origin, "partition", None))
        key = record.event.state_key
        sealing = self._sealer is not None
        old = (
            self._state(key)
            if sealing or (new_state is not None and new_state.identity is not None)
            else None
        )
        if (
            new_state is not None
            and new_state.identity is not None
            and old is not None
            and old.identity not in (None, new_state.identity)
        ):
            log.warning(
                "identity changed in session: %s -> %s",
                old.identity,
                new_state.identity,
                extra=_where(record),
            )
        if new_state is not None and old is not None and old.chain is not None:
            new_state = new_state.with_chain(old.chain)
        if new_state is not None and not sealing:  # sealing: written with its chain, below
            raw = new_state.encode()
            self._run_as(record.origin, self._table.__setitem__, key, raw)
            self._written = (raw, new_state)  # the lane's waiters read it without decoding
        decision = verdict(result, bot.failure_mode, first=True)
        self._audit(
            record,
            bot,
            "validation",
            "allowed" if decision.allowed else "blocked",
            decision.reason,
            decision.identity,
            report.audit(),
            state=new_state or old,
        )
        return decision

    def _drain(self, key: bytes, result: Validation | None) -> None:
        self._calls.pop(key, None)
        lane = self._lanes.get(key)
        if lane is None:
            return
        while lane:
            record = lane.popleft()
            self._held -= 1
            if self._held < self._max_held and not self._room.is_set():
                self._room.set()
            assert record.event is not None
            if record.event.type == "session_end":
                result = None  # later records start a new session
            if self._process(record, result):
                return  # its validation owns the lane now
        del self._lanes[key]

    def _end_session(self, record: _Record, bot: Bot) -> None:
        event = record.event
        assert event is not None
        state = self._state(event.state_key)
        if state is not None and state.partition is not None:
            partition: int | None = state.partition  # where it is stored, whatever this one's
        else:
            partition = getattr(record.origin, "partition", None)
        refresh = self._refreshes.get(event.state_key)
        if refresh is not None:
            refresh[1].cancel()  # it would write the ended session's state back
        self.metrics.decided("session_ended", event.organization, event.bot)
        # the chain's last event; the state (and the chain with it) is forgotten
        self._audit(record, bot, "session_ended", state=state, store=False)
        self._forget(event.state_key, partition)
        self._done(record)

    def _apply(
        self,
        record: _Record,
        bot: Bot,
        decision: Decision,
        redact: Callable[[dict[str, Any]], None],
    ) -> None:
        if decision.allowed:
            self._allow(record, decision)
        else:
            self._block(record, bot, decision.reason, decision.detail, redact)

    def _allow(self, record: _Record, decision: Decision) -> None:
        assert record.value is not None
        if len(record.value) > self._max_record_bytes:
            # the record plus its headers would not fit the producer's request: never crash
            detail = f"{len(record.value)} bytes: too large to forward with decision headers"
            self._block(record, None, "invalid_event", detail, None)
            return
        event = record.event
        assert event is not None  # allowed: a configured bot's event
        self.metrics.decided(decision.reason, event.organization, event.bot)
        headers = allowed_headers(decision.reason, decision.validated_at_ms, decision.identity)
        self._send(self._topics.allowed, _out_key(record), record.value, headers, record.received)
        self._done(record)

    def _block(
        self,
        record: _Record,
        bot: Bot | None,
        reason: Reason,
        detail: str,
        redact: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        if bot is not None and bot.enforcement == "monitor" and record.value is not None:
            self._would_block(record, bot, reason)
            return
        # labelled by configured bots only: an event's bot name is the sender's to choose
        if bot is not None:
            self.metrics.decided(reason, bot.organization, bot.name)
        else:
            self.metrics.decided(reason, UNKNOWN_BOT_LABEL, UNKNOWN_BOT_LABEL)
        who = Who.of(record.event)
        now_ms = self._now_ms()
        if redact is None:  # decided without a check: the bot's own paths, if it is known
            redact = self._known_redaction(record)
        event = redacted_event(record.value, redact)
        error_message = bot.error_message if bot is not None else None
        key = _out_key(record)
        value = blocked_record(who, reason, detail, error_message, event, now_ms)
        if len(value) + len(key or b"") > self._max_record_bytes:
            # a record the broker would refuse stops the worker at every restart: the
            # event is not echoed, and the detail is cut (both marked)
            cut = {"truncated": True, "bytes": len(record.value or b"")}
            value = blocked_record(who, reason, detail[:1024], error_message, cut, now_ms)
        self._send(self._topics.blocked, key, value, since=record.received)
        self._audit(record, bot, "blocked", "blocked", reason)
        self._done(record)

    def _would_block(self, record: _Record, bot: Bot, reason: Reason) -> None:
        """Monitor mode: allowed byte for byte, marked with what enforcement would do."""
        assert record.value is not None
        if len(record.value) > self._max_record_bytes:
            # too large to forward with headers: blocked, as in enforce mode
            detail = f"{len(record.value)} bytes: too large to forward with decision headers"
            self._block(record, None, "invalid_event", detail, None)
            return
        self.metrics.decided("monitor", bot.organization, bot.name)
        self.metrics.would_block(bot.organization, bot.name, reason)
        now_ms = self._now_ms()
        key = _out_key(record)
        headers = would_block_headers(now_ms, None, reason)
        self._send(self._topics.allowed, key, record.value, headers, record.received)
        self._audit(record, bot, "would_block", "allowed", reason)
        self._done(record)

    def _audit(
        self,
        record: _Record,
        bot: Bot | None,
        kind: AuditKind,
        decision: Literal["allowed", "blocked"] | None = None,
        reason: Reason | None = None,
        identity: str | None = None,
        validation: dict[str, Any] | None = None,
        *,
        state: SessionState | None | _Read = READ,
        store: bool = True,
    ) -> None:
        """Write an audit event: signed and chained when there is a key (worker/audit.py),
        the session's chain stored with its `state` (READ: as the table has it)."""
        event = record.event
        doc = audit_event(
            kind, Who.of(event), self._now_ms(), decision, reason, identity, validation
        )
        key = _audit_key(record)
        sealer = self._sealer
        if sealer is None:
            self._send(self._topics.audit, key, orjson.dumps(doc))
            return
        if bot is None or event is None:  # no session state to carry a chain: its own
            self._send(self._topics.audit, key, sealer.seal(doc, START)[0])
            return
        if isinstance(state, _Read):
            state = self._state(event.state_key)
        chain = state.chain if state is not None else None
        origin = record.origin
        partition = getattr(origin, "partition", None)
        if chain is None:
            chain = Chain(0, "")
        if record.chained:  # its second event (a validation, then its block)
            after, movers = Link(chain.seq, chain.digest), chain.movers
        else:  # read again after a crash: from where it began (see Chain)
            seq, digest, movers = chain.start(partition, getattr(origin, "offset", None))
            after = Link(seq, digest)
        record.chained = True
        value, link = sealer.seal(doc, after)
        if store:
            chain = Chain(link.seq, link.digest, movers)
            if state is None:  # a chain before any stored validation: never reused
                state = SessionState(self._now_ms(), False, "", None, None, partition, chain)
            else:
                state = state.with_chain(chain)
            raw = state.encode()
            self._run_as(origin, self._table.__setitem__, event.state_key, raw)
            self._written = (raw, state)
        self._send(self._topics.audit, key, value)

    def _known_redaction(self, record: _Record) -> Callable[[dict[str, Any]], None] | None:
        """For a record blocked before its check was made (invalid, internal error): the
        credentials its bot's configuration reads, wherever they sit, and every string in
        `context`, replaced by fingerprints. None when no configured bot is named."""
        names: tuple[Any, Any]
        if record.event is not None:
            names = (record.event.organization, record.event.bot)
        else:
            try:
                doc = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError:
                return None
            names = (doc.get("organization"), doc.get("bot")) if isinstance(doc, dict) else ("", "")
        if not all(isinstance(n, str) for n in names):
            return None
        bot = self._registry.bot(*names)
        if bot is None:
            return None
        connector = self._registry.connector(bot.organization, bot.api_alias or "")
        paths = [m.input_path for m in connector.mappings] if connector is not None else []

        def redact(doc: dict[str, Any]) -> None:
            if bot.token_path is not None:
                bot.token_path.replace(doc, fingerprint)
            context = doc.get("context")
            if isinstance(context, (dict, list)):
                for path in paths:
                    path.replace(context, fingerprint)
                doc["context"] = fingerprint_strings(context)

        return redact

    def _done(self, record: _Record) -> None:
        """Mark decided; ack the partition's head run of decided records, in offset order."""
        record.done = True
        self._decided.set()
        if record.abandoned:  # its partition's acks belong to another generation now
            return
        order, ack = record.order, self._ack
        while order and order[0].done:
            ack(record.partition, order.popleft().offset)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def undecided(self, partitions: Container[Hashable] | None = None) -> int:
        """Records of `partitions` (all when None) taken and not yet decided."""
        return sum(
            1
            for partition, order in self._order.items()
            if partitions is None or partition in partitions
            for record in order
            if not record.done
        )

    async def settle(self, partitions: Container[Hashable] | None, grace_s: float, why: str) -> int:
        """Let the records of `partitions` (all when None) be decided for up to `grace_s`,
        then abandon the rest; returns how many were abandoned."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                while self.undecided(partitions):
                    self._decided.clear()
                    await self._decided.wait()
        return self.abandon(partitions, why)

    def abandon(self, partitions: Container[Hashable] | None, why: str) -> int:
        """Give up every undecided record of `partitions` (all when None): never decided,
        sent or acked here (the next owner reads them again); their calls are cancelled.
        Decided records behind them are not acked either: they will come again too."""
        left: dict[Hashable, list[int]] = {}
        for partition in [p for p in self._order if partitions is None or p in partitions]:
            for record in self._order.pop(partition):
                if not record.done:
                    offset = getattr(record.origin, "offset", None)
                    left.setdefault(partition, []).append(-1 if offset is None else offset)
                record.abandoned = True
        calls = 0
        for key, lane in self._lanes.items():
            kept = [r for r in lane if not r.abandoned]
            self._held -= len(lane) - len(kept)
            lane.clear()
            lane.extend(kept)
            lead, task = self._calls.get(key, (None, None))
            if lead is not None and lead.abandoned and task is not None and not task.done():
                task.cancel()
                calls += 1
        for partition, task in list(self._refreshes.values()):
            if (partitions is None or partition in partitions) and not task.done():
                task.cancel()  # its state write belongs to the partition's next owner
                calls += 1
        if self._held < self._max_held:
            self._room.set()
        if left:
            where = ", ".join(
                f"{getattr(p, 'topic', p)}[{getattr(p, 'partition', '')}] from offset {min(o)}"
                for p, o in left.items()
            )
            log.warning(
                "%s: left %d undecided records unacked for the next owner (%s); "
                "%d validations abandoned",
                why,
                sum(len(o) for o in left.values()),
                where,
                calls,
            )
        return sum(len(o) for o in left.values())

    async def drain_all(self) -> None:
        """Wait for every validation in flight (and what waits behind it) to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _moved(chain: Chain, record: _Record) -> bool:
    """Whether `record` moved the chain last (it is read again after a crash)."""
    origin = record.origin
    return chain.moved_by(getattr(origin, "partition", None), getattr(origin, "offset", None))


def _audit_key(record: _Record) -> bytes | None:
    """The session id (one session's chain in one audit partition)."""
    event = record.event
    if event is None:
        return _out_key(record)
    session = event.session_id.encode()
    if len(session) > MAX_KEY_BYTES:
        return fingerprint(event.session_id).encode()
    return session


MAX_REFRESH_FAILURES = 100_000
"""Sessions whose last refresh failed, remembered (so as not to retry at every message)."""

MAX_KEY_BYTES = 4096
"""An inbound key longer than this is not copied to the outputs: its fingerprint is."""


def _out_key(record: _Record) -> bytes | None:
    if record.key is not None:
        if len(record.key) > MAX_KEY_BYTES:  # stable: the same partition for the same key
            return fingerprint(record.key.decode("utf-8", "replace")).encode()
        return record.key
    return record.event.session_id.encode() if record.event is not None else None


def _where(record: _Record) -> dict[str, Any]:
    """The record's coordinates for a log line (worker/logs.py shows them)."""
    where = {
        "partition": getattr(record.origin, "partition", None),
        "offset": getattr(record.origin, "offset", None),
    }
    event = record.event
    if event is not None:
        where |= {
            "organization": event.organization,
            "bot": event.bot,
            "session": event.session_id,
            "messageId": event.id,
        }
    return where
