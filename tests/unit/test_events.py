"""Parsing never crashes: every input is an event or an InvalidEvent with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import InvalidEvent, SettingsError
from worker.events import fingerprint, parse_inbound, redacted_event
from worker.jsonpath import JsonPath

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
GOOD = {"id": "m", "organization": "acme", "bot": "b", "sessionId": "s"}


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_invalid(raw: bytes) -> None:
    try:
        parse_inbound(raw)
    except InvalidEvent as exc:
        assert exc.detail


@given(st.dictionaries(st.sampled_from([*GOOD, "type", "context", "timestamp", "x"]), json_values))
def test_any_json_object_parses_or_is_invalid(doc: dict) -> None:  # type: ignore[type-arg]
    try:
        ev = parse_inbound(json.dumps(doc).encode())
    except InvalidEvent as exc:
        assert exc.detail
    else:
        assert isinstance(ev.context, dict) and ev.type in ("message", "session_end")
    redacted_event(json.dumps(doc).encode(), None)


def test_minimal_event() -> None:
    ev = parse_inbound(orjson.dumps(GOOD))
    assert (ev.type, ev.context, ev.state_key) == ("message", {}, b"acme/b/s")


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (None, "empty value"),
        (b"\xff", "not valid UTF-8"),
        (b"{", "not valid JSON"),
        (b"3", "not an object"),
        (orjson.dumps({**GOOD, "id": ""}), "'id' must be a non-empty string"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "bot"}), "'bot' is missing"),
        (orjson.dumps({**GOOD, "timestamp": True}), "'timestamp' must be an integer"),
    ],
)
def test_reasons(raw: bytes | None, detail: str) -> None:
    with pytest.raises(InvalidEvent, match=detail):
        parse_inbound(raw)


def test_credentials_are_fingerprinted_in_blocked_events() -> None:
    raw = orjson.dumps(
        {**GOOD, "context": {"tok": "secret-token", "lang": "en", "nested": {"t": ["a", "b"]}}}
    )

    def redact(doc: dict) -> None:  # type: ignore[type-arg]
        for path in (JsonPath("$.tok"), JsonPath("$.nested.t[1]")):
            path.replace(doc["context"], fingerprint)

    doc = redacted_event(raw, redact)
    assert doc["context"] == {
        "tok": fingerprint("secret-token"),
        "lang": "en",
        "nested": {"t": ["a", fingerprint("b")]},
    }
    everything = redacted_event(raw, None)
    assert "secret-token" not in orjson.dumps(everything).decode()
    assert redacted_event(b"\xff", None) == {"rawBase64": "/w=="}
    assert redacted_event(b"[1]", None) == {"raw": "[1]"}


def test_fingerprint_is_short_and_stable() -> None:
    assert fingerprint("abc") == fingerprint("abc") != fingerprint("abd")
    assert len(fingerprint("abc")) == len("sha256:") + 16


def test_an_event_too_deep_to_write_back_is_not_echoed() -> None:
    """orjson reads 1,024 levels but writes 255: a blocked record must still be written."""
    raw = (
        b'{"id":"d","organization":"a","bot":"b","sessionId":"s","x":'
        + b"[" * 300
        + b"]" * 300
        + b"}"
    )
    parse_inbound(raw)  # a valid event
    assert redacted_event(raw, None) == {"truncated": True, "bytes": len(raw)}


@pytest.mark.parametrize(
    ("identity", "header"),
    [
        ("alice@example.com", b"alice@example.com"),
        ("evil\r\nX-Admin: 1", b"evil%0D%0AX-Admin: 1"),
        ("\x1b]0;pwned\x07", b"%1B]0;pwned%07"),
        ("zoë", b"zo%C3%AB"),
        ("100%", b"100%25"),
    ],
)
def test_identity_header_is_a_safe_value_that_decodes_back(identity: str, header: bytes) -> None:
    import urllib.parse

    from worker.events import identity_header

    assert identity_header(identity) == header
    assert urllib.parse.unquote(header.decode()) == identity


def test_fingerprints_are_keyed_and_the_key_is_a_setting(tmp_path: Path) -> None:
    """Issue 17: 64 bits of an unsalted SHA-256 let a short credential (a PIN) be guessed
    offline from a blocked or audit record."""
    import hashlib

    from worker.events import DEFAULT_FINGERPRINT_KEY, configure_fingerprints, fingerprint
    from worker.settings import Settings

    pin = "4711"
    assert fingerprint(pin) != "sha256:" + hashlib.sha256(pin.encode()).hexdigest()[:16]
    unkeyed = fingerprint(pin)
    try:
        configure_fingerprints(b"k" * 32)
        keyed = fingerprint(pin)
        assert keyed != unkeyed and keyed.startswith("sha256:") and len(keyed) == 23
        configure_fingerprints(b"j" * 32)
        assert fingerprint(pin) != keyed  # another deployment's key, another fingerprint
    finally:
        configure_fingerprints(DEFAULT_FINGERPRINT_KEY)
    key_file = tmp_path / "fp-key"
    key_file.write_text("f" * 40 + "\n")
    assert (
        Settings.from_env({"SECURE_SESSION_FINGERPRINT_KEY_FILE": str(key_file)}).fingerprint_key
        == b"f" * 40
    )
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        Settings.from_env({"SECURE_SESSION_FINGERPRINT_KEY": "short"})
