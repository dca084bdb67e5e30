"""Config checking: every refusal names the source, the field and why."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.config import Registry, load_file, parse_bot, parse_connector
from worker.errors import ConfigError

BOT = {
    "Name": "b",
    "Organization": "acme",
    "SecureSession": True,
    "SecureSessionConfig": {"Type": "baas", "ValidationInterval": 60, "ApiAlias": "A"},
}
CON = {
    "Type": "api-connector",
    "Alias": "A",
    "Organization": "acme",
    "Method": "POST",
    "Endpoint": "https://auth.example.com/v",
    "Headers": {"Authorization": "srn:vault::acme:secret:k"},
    "RequestMapping": {
        "t": {"type": "requestBody", "requestBodyPath": "$.token", "inputPath": "$.tok"}
    },
}


def test_valid_records_parse_and_unknown_fields_are_kept_and_ignored() -> None:
    bot = parse_bot({**BOT, "Extra": {"x": 1}}, "test")
    assert (bot.key, bot.interval_s, bot.failure_mode) == ("acme/b", 60.0, "closed")
    assert parse_connector(CON, "test").mappings[0].name == "t"


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        (
            {"SecureSessionConfig": {"Type": "baas", "ValidationInterval": 60}},
            "SecureSessionConfig.ApiAlias",
            "is required",
        ),
        (
            {"SecureSessionConfig": {"Type": "x", "ValidationInterval": 60}},
            "SecureSessionConfig.Type",
            "is not one of",
        ),
        (
            {"SecureSessionConfig": {**BOT["SecureSessionConfig"], "FailureMode": "maybe"}},  # type: ignore[dict-item]
            "SecureSessionConfig.FailureMode",
            "is not one of",
        ),
        (
            {"SecureSessionConfig": {**BOT["SecureSessionConfig"], "RefreshAhead": 1}},  # type: ignore[dict-item]
            "SecureSessionConfig.RefreshAhead",
            "greater than or equal to the maximum of 1",
        ),
        (
            {"SecureSessionConfig": {**BOT["SecureSessionConfig"], "RefreshAhead": 0}},  # type: ignore[dict-item]
            "SecureSessionConfig.RefreshAhead",
            "less than or equal to the minimum of 0",
        ),
        ({"Name": 3}, "Name", "is not of type"),
        ({"SecureSession": True, "SecureSessionConfig": None}, "SecureSessionConfig", ""),
    ],
)
def test_bad_bots_are_refused_with_field_and_why(change: dict, field: str, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        parse_bot({**BOT, **change}, "file.yaml: bots[0]")
    assert err.value.source == "file.yaml: bots[0]"
    assert err.value.field == field
    assert why in err.value.why


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"Endpoint": "ftp://x"}, "Endpoint"),
        ({"Method": "BREW"}, "Method"),
        ({"Headers": {"Authorization": "srn:vault::acme:oops"}}, "Headers.Authorization"),
        (
            {"RequestMapping": {"t": {"type": "header", "inputPath": "$.[["}}},
            "RequestMapping.t.inputPath",
        ),
        (
            {"RequestMapping": {"t": {"type": "requestBody", "inputPath": "$.a"}}},
            "RequestMapping.t.requestBodyPath",
        ),
    ],
)
def test_bad_connectors_are_refused(change: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        parse_connector({**CON, **change}, "src")
    assert err.value.field == field


def test_literal_secret_values_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse_connector({**CON, "Headers": ["literal-secret-value"]}, "src")
    assert "literal-secret-value" not in str(err.value)


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: cannot be read"):
        load_file(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("bots: [\n")
    with pytest.raises(ConfigError, match="not valid JSON or YAML"):
        load_file(bad)
    dup = tmp_path / "dup.json"
    dup.write_bytes(orjson.dumps({"bots": [BOT, BOT]}))
    with pytest.raises(ConfigError, match=r"bots\[1\]: Name: acme/b is defined twice"):
        load_file(dup)
    other = tmp_path / "other.yaml"
    other.write_text("robots: []\n")
    with pytest.raises(ConfigError, match="other.yaml"):
        load_file(other)


def test_registry_applies_topic_records_and_skips_bad_ones() -> None:
    reg = Registry()
    reg.apply("bot", b"acme/b", orjson.dumps(BOT))
    assert reg.bot("acme", "b") is not None
    reg.apply("bot", b"acme/b", b"{broken")  # skipped: the good one stays
    reg.apply("bot", b"acme/other", orjson.dumps(BOT))  # key mismatch: skipped
    reg.apply("bot", None, orjson.dumps(BOT))
    assert set(reg.bots) == {"acme/b"}
    reg.apply("bot", b"acme/b", None)
    assert reg.bot("acme", "b") is None


@given(st.binary(max_size=100), st.binary(max_size=300) | st.none())
def test_any_config_record_is_applied_or_skipped(key: bytes, value: bytes | None) -> None:
    Registry().apply("connector", key, value)


def test_a_yaml_escape_past_unicode_is_refused_not_raised(tmp_path: Path) -> None:
    """Found by tests/unit/test_fuzz.py: PyYAML raises ValueError, not YAMLError, here."""
    path = tmp_path / "bots.yaml"
    path.write_text('bots:\n- Name: "\\U00110000"\n')
    with pytest.raises(ConfigError, match="is not valid JSON or YAML"):
        load_file(path)


def test_no_config_record_of_any_depth_or_size_stops_the_follower() -> None:
    """Issue 17: a 10 KB record nested 5,000 deep raised RecursionError out of the follower
    (the worker exited, and again at every restart)."""
    reg = Registry()
    for value in (
        b"[" * 5000 + b"]" * 5000,
        b'{"Name":' * 3000 + b"1" + b"}" * 3000,
        b"x" * 2_000_000,
    ):
        reg.apply("bot", b"acme/b", value)  # logged and skipped
    assert reg.bot("acme", "b") is None
    nested = {**BOT, "Extra": 1}
    for _ in range(70):
        nested = {"Wrap": nested}
    with pytest.raises(ConfigError, match="nests deeper than 64 levels"):
        reg._apply("bot", b"acme/b", orjson.dumps(nested))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # a billion laughs: 9 levels of 10 aliases each
        (
            "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
            + "".join(
                f"{n}: &{n} [{','.join(['*' + p] * 10)}]\n"
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            )
            + "bots: []\n",
            "expands to more than",
        ),
        ("bots: &b\n- *b\n", "recursive YAML alias"),
        ("bots:" + " [" * 200 + " ]" * 200 + "\n", "nests deeper than"),
    ],
)
def test_yaml_bombs_are_refused_quickly(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=why):
        load_file(path)
    assert time.monotonic() - started < 2


def test_a_file_too_large_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("bots: []\n" + "#" * 5_000_000)
    with pytest.raises(ConfigError, match="is larger than"):
        load_file(path)


def test_config_errors_are_escaped_and_bounded() -> None:
    err = ConfigError("bot record 'a\nb'", "Name\x1b[2J", "x" * 10_000)
    assert "\n" not in str(err) and "\x1b" not in str(err) and len(str(err)) < 1_000


def test_fields_close_to_known_ones_are_warned_about(tmp_path: Path) -> None:
    """Issue 18: `FailurMode: open` passed as valid; the bot silently stayed fail-closed."""
    from worker.config import likely_typos

    bot = {**BOT, "SecureSessionConfig": {**BOT["SecureSessionConfig"], "FailurMode": "open"}}
    assert likely_typos("bot", bot) == [
        "SecureSessionConfig.FailurMode: unknown field; did you mean 'FailureMode'?"
    ]
    con = {**CON, "TimeoutSecond": 3, "Auth": {"Typ": "basic"}}
    con["RequestMapping"] = {"t": {**CON["RequestMapping"]["t"], "inputpath": "$.x"}}
    assert sorted(likely_typos("connector", con)) == [
        "Auth.Typ: unknown field; did you mean 'Type'?",
        "RequestMapping.t.inputpath: unknown field; did you mean 'inputPath'?",
        "TimeoutSecond: unknown field; did you mean 'TimeoutSeconds'?",
    ]
    # ServisBOT's own fields, and anything not close to ours, are normal
    assert likely_typos("bot", {**BOT, "BotArn": "x", "Description": "d"}) == []
    path = tmp_path / "c.yaml"
    path.write_text(orjson.dumps({"bots": [bot]}).decode())
    assert load_file(path).warnings == (
        f"{path}: bots[0]: SecureSessionConfig.FailurMode: unknown field; did you mean "
        "'FailureMode'?",
    )


def test_revocation_records_by_session_and_by_identity() -> None:
    from worker.config import Revocations

    r = Revocations()
    r.apply(b"acme/bot/session/s/with/slash", b'{"revokedAt": 100, "reason": "x"}')
    r.apply(b"acme/identity/alice", b'{"revokedAt": 200}')
    for bad_key, bad_value in ((b"nokind", b'{"revokedAt": 1}'), (b"acme/bot/session/s", b"{}")):
        r.apply(bad_key, bad_value)  # logged and skipped
    assert r.revoked_at("acme", "bot", "s/with/slash", None) == 100
    assert r.revoked_at("acme", "bot", "s/with/slash", "alice") == 200
    assert r.revoked_at("acme", "other", "x", "alice") == 200  # every session of alice
    assert r.revoked_at("evil", "bot", "x", "alice") is None  # not another organization's
    r.apply(b"acme/identity/alice", None)
    assert r.revoked_at("acme", "other", "x", "alice") is None
