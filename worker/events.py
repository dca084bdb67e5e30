"""Record shapes of docs/contract.md: the inbound event in, allowed / blocked / audit out.

Parsing is strict and total: anything that is not a valid UTF-8 JSON event raises
InvalidEvent with a detail that names the problem, never a crash.
"""

from __future__ import annotations

import base64
import functools
import hmac
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from worker.errors import InvalidEvent

Reason = Literal[
    "validated",
    "cached",
    "not_required",
    "fail_open",
    "denied",
    "token_missing",
    "token_invalid",
    "token_expired",
    "token_revoked",
    "authorization_unavailable",
    "unknown_bot",
    "misconfigured",
    "invalid_event",
    "monitor",
]
AuditKind = Literal["validation", "blocked", "session_ended", "would_block"]

_REQUIRED = ("id", "organization", "bot", "sessionId")
MAX_ECHO_BYTES = 256 * 1024
"""Inbound values larger than this are not copied into blocked records."""
MAX_ID_CHARS = 1024
"""An event's id, organization, bot and sessionId: longer ones are invalid (they are
copied into every output record, its key and the metrics' labels)."""
MAX_CACHED_BYTES = 4096
"""Values longer than this are not kept in the decoding caches (bounded by bytes too)."""


@dataclass(slots=True)  # not frozen: made for every message, and a frozen __init__ costs 4x
class Inbound:
    """A parsed inbound event (read-only by convention)."""

    id: str
    organization: str
    bot: str
    session_id: str
    type: Literal["message", "session_end"]
    context: dict[str, Any]
    """The conversational context: where the bot's config reads credentials."""
    doc: dict[str, Any]
    """The whole event (a JWT bot's `TokenPath` starts here)."""
    state_key: bytes
    """Session-state key: organization, bot and session together, never borrowed across."""


def parse_inbound(value: bytes | None) -> Inbound:
    """The event in `value`; InvalidEvent (with why) when it is not one."""
    if value is None:
        raise InvalidEvent("empty value (tombstone)")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("value is not valid UTF-8") from None
        raise InvalidEvent(f"value is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidEvent(f"value is a JSON {type(doc).__name__}, not an object")
    for name in _REQUIRED:
        v = doc.get(name)
        if type(v) is not str or not v:
            if v is None:
                raise InvalidEvent(f"field {name!r} is missing")
            raise InvalidEvent(f"field {name!r} must be a non-empty string")
        if len(v) > MAX_ID_CHARS:
            raise InvalidEvent(f"field {name!r} is longer than {MAX_ID_CHARS:,} characters")
    kind = doc.get("type", "message")
    if kind not in ("message", "session_end"):
        raise InvalidEvent("field 'type' must be 'message' or 'session_end'")
    context = doc.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise InvalidEvent("field 'context' must be an object")
    ts = doc.get("timestamp")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)):
        raise InvalidEvent("field 'timestamp' must be an integer (epoch ms)")
    org, bot, session = doc["organization"], doc["bot"], doc["sessionId"]
    key = f"{org}/{bot}/{session}".encode()
    return Inbound(doc["id"], org, bot, session, kind, context, doc, key)


DEFAULT_FINGERPRINT_KEY = b"secure-session: no fingerprint key set (not secret)"
"""Used when SECURE_SESSION_FINGERPRINT_KEY is not set: then a fingerprint is as good as
an unsalted hash, and a short credential (a PIN, a one-time code) can be guessed offline
from the blocked and audit records. The worker says so at start."""
_key = DEFAULT_FINGERPRINT_KEY
_on_key_change: list[Callable[[], None]] = []


def configure_fingerprints(key: bytes) -> None:
    """Key every fingerprint from now on (HMAC-SHA256 under `key`); cached ones are dropped."""
    global _key
    _key = key
    _fingerprint_cached.cache_clear()
    for clear in _on_key_change:
        clear()


def on_fingerprint_key_change(clear: Callable[[], None]) -> None:
    """Register a cache of fingerprints to drop when the key changes."""
    _on_key_change.append(clear)


def fingerprint(value: Any) -> str:
    """A short, keyed hash of a credential (or of what is sent): never the value itself."""
    data = (
        value.encode()
        if isinstance(value, str)
        else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    )
    if len(data) > MAX_CACHED_BYTES:  # the cache is bounded by bytes as well as entries
        return _fingerprint_of(data)
    return _fingerprint_cached(data)


def _fingerprint_of(data: bytes) -> str:
    return "sha256:" + hmac.digest(_key, data, "sha256").hex()[:16]


# a session presents the same credential many times: at most 2**16 x 4 KiB kept
_fingerprint_cached = functools.lru_cache(maxsize=2**16)(_fingerprint_of)


def redacted_event(
    raw: bytes | None, redact: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    """The inbound object for a blocked record, credentials replaced by fingerprints.

    `redact` hides the credentials the bot's config reads; None means they are unknown
    (no bot, no connector), and then every string in `context` is fingerprinted.
    Unparseable input comes back as `{"raw": text}` or `{"rawBase64": …}`. An event larger
    than `MAX_ECHO_BYTES`, or nested too deep to write back, is not echoed (`{"truncated":
    true, "bytes": n}`): a blocked record must fit where the inbound one did, and a prefix
    could cut a credential.
    """
    if raw is None:
        return {"raw": ""}
    if len(raw) > MAX_ECHO_BYTES:
        return {"truncated": True, "bytes": len(raw)}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return {"raw": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"rawBase64": base64.b64encode(raw).decode("ascii")}
    if not isinstance(doc, dict):
        return {"raw": raw.decode("utf-8")}
    try:
        if redact is not None:
            redact(doc)
        elif isinstance(doc.get("context"), (dict, list)):
            doc["context"] = fingerprint_strings(doc["context"])
        orjson.dumps([doc])  # as deep as in a blocked record: too deep to write back?
    except (orjson.JSONEncodeError, RecursionError):
        return {"truncated": True, "bytes": len(raw)}
    return doc


def fingerprint_strings(value: Any) -> Any:
    if isinstance(value, str):
        return fingerprint(value)
    if isinstance(value, dict):
        return {k: fingerprint_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fingerprint_strings(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Who:
    """Who a record is about; fields are None when the event did not say."""

    organization: str | None = None
    bot: str | None = None
    session_id: str | None = None
    message_id: str | None = None

    @classmethod
    def of(cls, event: Inbound | None) -> Who:
        if event is None:
            return cls()
        return cls(event.organization, event.bot, event.session_id, event.id)


def blocked_record(
    who: Who,
    reason: Reason,
    detail: str,
    error_message: str | None,
    event: dict[str, Any],
    decided_at_ms: int,
) -> bytes:
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail,
            "organization": who.organization,
            "bot": who.bot,
            "sessionId": who.session_id,
            "messageId": who.message_id,
            "decidedAt": decided_at_ms,
            "errorMessage": error_message,
            "event": event,
        }
    )


def audit_event(
    kind: AuditKind,
    who: Who,
    time_ms: int,
    decision: Literal["allowed", "blocked"] | None,
    reason: Reason | None,
    identity: str | None,
    validation: dict[str, Any] | None,
) -> dict[str, Any]:
    """An audit event, to be written as it is or sealed (worker/audit.py)."""
    return {
        "auditId": str(uuid.uuid4()),
        "time": time_ms,
        "kind": kind,
        "organization": who.organization,
        "bot": who.bot,
        "sessionId": who.session_id,
        "messageId": who.message_id,
        "decision": decision,
        "reason": reason,
        "identity": identity,
        "validation": validation,
    }


def would_block_headers(
    validated_at_ms: int, identity: str | None, would: Reason
) -> list[tuple[str, bytes]]:
    """A monitor-mode bot's allowed record of a message enforcement would block."""
    return [
        *_allowed_headers("monitor", validated_at_ms, identity),
        ("secure-session-would-block", would.encode()),
    ]


def _allowed_headers(
    reason: Reason, validated_at_ms: int, identity: str | None
) -> list[tuple[str, bytes]]:
    """The allowed record's headers; shared between records: never modify the list."""
    headers = [
        ("secure-session-decision", b"allowed"),
        ("secure-session-reason", reason.encode()),
        ("secure-session-validated-at", str(validated_at_ms).encode()),
    ]
    if identity is not None:
        headers.append(("secure-session-identity", identity_header(identity)))
    return headers


_allowed_headers_cached = functools.lru_cache(maxsize=2**16)(_allowed_headers)


def allowed_headers(
    reason: Reason, validated_at_ms: int, identity: str | None
) -> list[tuple[str, bytes]]:
    """The allowed record's headers; shared between records: never modify the list. The
    same for every cached message of a session: kept, unless the identity is long."""
    if identity is not None and len(identity) > MAX_CACHED_BYTES:
        return _allowed_headers(reason, validated_at_ms, identity)
    return _allowed_headers_cached(reason, validated_at_ms, identity)


_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def identity_header(identity: str) -> bytes:
    """The identity as a header value: printable ASCII kept, everything else (line breaks,
    escapes, non-ASCII) percent-encoded as UTF-8, `%` too, so that
    `urllib.parse.unquote` always gives the identity back."""
    return urllib.parse.quote(identity, safe=_HEADER_SAFE).encode()
