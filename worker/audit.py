"""The audit trail's integrity: chained, keyed events, and their verification.

With `SECURE_SESSION_AUDIT_KEY_REF` set, every audit event carries
`"integrity": {"seq", "prev", "mac"}`: `seq` counts a chain's events from 1, `prev` is the
SHA-256 (hex) of the chain's previous event as written (empty for seq 1), and `mac` the
HMAC-SHA256 of the event without its `mac`, its keys sorted (so a reader that parses and
re-serialises the event computes the same bytes). A chain is a session's events
(organization, bot, session id) until a `session_ended`, or an organization's
`config_changed` events. An event about no session (an inbound record that could not be
read, a bot that is not configured) is a chain of its own: seq 1.

Where a session's chain stands travels in its state (worker/decide.py, `Chain`), so a new
owner of its partition continues it. Redelivery after a crash writes a message's events
again under the same seq and messageId: `Verifier` reports those as duplicates, never as
tampering (docs/contract.md, "Audit integrity").
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from worker.errors import SecretNotFound, SettingsError
from worker.settings import Settings
from worker.vault import Vault, ref_org

MIN_KEY_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class Link:
    """Where a chain stands: the seq and digest of its last event (0, "": none yet)."""

    seq: int = 0
    digest: str = ""


START: Final = Link()


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes a MAC is computed over."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def mac_of(key: bytes, doc: dict[str, Any]) -> str:
    return hmac.digest(key, canonical(doc), "sha256").hex()


class Sealer:
    """Signs audit events with one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def seal(self, doc: dict[str, Any], after: Link) -> tuple[bytes, Link]:
        """`doc` as written, chained after `after`, and the chain's new link."""
        integrity: dict[str, Any] = {"seq": after.seq + 1, "prev": after.digest}
        doc["integrity"] = integrity
        integrity["mac"] = mac_of(self._key, doc)
        raw = orjson.dumps(doc)
        return raw, Link(after.seq + 1, hashlib.sha256(raw).hexdigest())


def signing_key(settings: Settings) -> bytes | None:
    """The key `SECURE_SESSION_AUDIT_KEY_REF` names (None: audit events are not signed)."""
    if settings.audit_key_ref is None:
        return None
    vault = Vault(settings.secrets_dir, settings.environ)
    return load_key(vault, settings.audit_key_ref, "SECURE_SESSION_AUDIT_KEY_REF")


def verifying_keys(settings: Settings) -> list[bytes]:
    """Every key `audit verify` accepts: the signing key, then the earlier ones."""
    vault = Vault(settings.secrets_dir, settings.environ)
    keys = [signing_key(settings)]
    keys += [
        load_key(vault, ref, "SECURE_SESSION_AUDIT_VERIFY_KEY_REFS")
        for ref in settings.audit_verify_key_refs
    ]
    return [k for k in keys if k is not None]


def config_event(org: str, what: str, name: str, value: bytes | None) -> dict[str, Any]:
    """A `config_changed` event: which bot or connector, and the SHA-256 of its new record
    (empty: deleted). Never the record itself: it may name secrets."""
    return {
        "auditId": str(uuid.uuid4()),
        "time": 0,
        "kind": "config_changed",
        "organization": org,
        what: name,
        "digest": "" if value is None else hashlib.sha256(value).hexdigest(),
        "publisher": {},
    }


def publisher_of() -> dict[str, str]:
    """Who publishes: the user and host of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname()}


def load_key(vault: Vault, ref: str, setting: str) -> bytes:
    """The key a vault reference names (its own organization's secret), at least 32 bytes;
    SettingsError naming the setting and the reference, never the value."""
    org = ref_org(ref)
    try:
        key = vault.resolve(ref, org or "").encode()
    except SecretNotFound:
        raise SettingsError(setting, f"{ref} is not in the vault") from None
    if len(key) < MIN_KEY_BYTES:
        raise SettingsError(setting, f"{ref} holds {len(key)} bytes; an audit key needs 32 or more")
    return key


def chain_of(doc: dict[str, Any]) -> tuple[str, ...]:
    """The chain an event belongs to."""
    if doc.get("kind") == "config_changed":
        return ("config", str(doc.get("organization")))
    return ("session", str(doc.get("organization")), str(doc.get("bot")), str(doc.get("sessionId")))


def describe(chain: tuple[str, ...]) -> str:
    if chain[0] == "config":
        return f"organization {chain[1]} (configuration)"
    return f"session {chain[1]}/{chain[2]}/{chain[3]}"


@dataclass(slots=True)
class _Event:
    n: int
    """Read order."""
    seq: int
    prev: str
    digest: str
    message_id: Any
    where: str


@dataclass(slots=True)
class _Segment:
    """A chain from one seq 1 (or the first event seen) on."""

    digests: dict[int, set[str]] = field(default_factory=dict)
    messages: dict[int, set[Any]] = field(default_factory=dict)
    top: int = 0
    pending: dict[int, list[_Event]] = field(default_factory=dict)
    """Events read before the one they follow (reordered, or after a gap)."""
    bad: list[_Event] = field(default_factory=list)
    """Events whose MAC is wrong: altered when they sit in a gap, forged otherwise."""


@dataclass
class Report:
    events: int = 0
    chains: int = 0
    problems: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


class Verifier:
    """Checks audit events fed in the order they were read (per partition: the topic's
    order); `finish()` gives one line per problem."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._keys = list(keys)
        self._segments: dict[tuple[str, ...], _Segment] = {}
        self.report = Report()

    def add(self, raw: bytes, where: str) -> None:
        self.report.events += 1
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            self._problem(f"{where}: unreadable record: not an audit event")
            return
        chain = chain_of(doc)
        integrity = doc.get("integrity")
        if (
            not isinstance(integrity, dict)
            or type(integrity.get("seq")) is not int
            or integrity["seq"] < 1
            or not isinstance(integrity.get("prev"), str)
            or not isinstance(integrity.get("mac"), str)
        ):
            self._problem(f"{where}: {describe(chain)}: forged: an event without integrity")
            return
        mac = integrity.pop("mac")
        good = any(hmac.compare_digest(mac_of(k, doc), mac) for k in self._keys)
        event = _Event(
            self.report.events,
            integrity["seq"],
            integrity["prev"],
            hashlib.sha256(raw).hexdigest(),
            doc.get("messageId"),
            where,
        )
        segment = self._segments.get(chain)
        if segment is None:
            self.report.chains += 1
        if not good:
            if segment is None:
                segment = self._segments[chain] = _Segment()
            segment.bad.append(event)
            return
        if event.seq == 1:
            # a new chain (after a session_ended, or an expired state), unless this is the
            # first event written again after a crash
            if segment is None or event.message_id not in segment.messages.get(1, ()):
                if segment is not None:
                    self._close(chain, segment)
                segment = self._segments[chain] = _Segment()
            self._link(chain, segment, event)
        elif segment is None or not segment.digests:
            # the first event seen of this chain (it began before --since): the anchor
            segment = segment or _Segment()
            self._segments[chain] = segment
            self._link(chain, segment, event)
        elif event.seq - 1 in segment.digests:
            self._link(chain, segment, event)
        else:
            segment.pending.setdefault(event.seq, []).append(event)

    def finish(self) -> Report:
        for chain, segment in self._segments.items():
            self._close(chain, segment)
        self._segments.clear()
        return self.report

    def _problem(self, line: str) -> None:
        self.report.problems.append(line)

    def _link(self, chain: tuple[str, ...], s: _Segment, first: _Event) -> None:
        """Take `first` into its segment, then every event that waited for it."""
        name = describe(chain)
        work: list[tuple[_Event, _Event | None]] = [(first, None)]
        while work:
            e, after = work.pop()
            before = s.digests.get(e.seq - 1)
            if before is not None and e.prev not in before:
                self._problem(
                    f"{e.where}: {name} seq {e.seq}: altered: the event before it "
                    f"(seq {e.seq - 1}) is not the one it was chained to"
                )
            if e.seq in s.digests:
                # signed, so written by a worker: a record decided again after a crash (the
                # same message; or the next, once the one before was decided differently)
                again = "" if e.message_id in s.messages[e.seq] else ", for another message"
                self.report.duplicates.append(
                    f"{e.where}: {name} seq {e.seq}: duplicate (written again after a crash{again})"
                )
            elif after is not None and e.n < after.n:
                self._problem(
                    f"{e.where}: {name} seq {e.seq}: out of order: it came before "
                    f"seq {after.seq} ({after.where})"
                )
            elif e.seq < s.top:
                self._problem(f"{e.where}: {name} seq {e.seq}: out of order: after seq {s.top}")
            s.digests.setdefault(e.seq, set()).add(e.digest)
            s.messages.setdefault(e.seq, set()).add(e.message_id)
            s.top = max(s.top, e.seq)
            work.extend((w, e) for w in s.pending.pop(e.seq + 1, ()))

    def _close(self, chain: tuple[str, ...], s: _Segment) -> None:
        """The end of a segment: what still waits follows a gap; bad MACs are classified."""
        name = describe(chain)
        claimed = {e.seq for e in s.bad}
        while s.pending:
            first = min(s.pending)
            missing = [n for n in range(s.top + 1, first) if n not in claimed]
            for lo, hi in _runs(missing):
                seqs = f"seq {lo}" if lo == hi else f"seqs {lo}-{hi}"
                self._problem(f"{name} {seqs}: missing (before {s.pending[first][0].where})")
            for event in s.pending.pop(first):
                self._link(chain, s, event)
        for e in s.bad:
            # in a slot no good event fills, it replaced the one written: altered
            what = "forged" if e.seq in s.digests else "altered"
            self._problem(f"{e.where}: {name} seq {e.seq}: {what} (its MAC does not match)")
        s.bad.clear()


def _runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs
