"""The pure decision core, with a fixed clock and Hypothesis properties."""

from __future__ import annotations

from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from worker.decide import (
    UNREADABLE,
    VALIDATE,
    Decision,
    Outcome,
    SessionState,
    Validation,
    decide,
    state_after,
    verdict,
)

FP = "sha256:0123456789abcdef"
OTHER = "sha256:fedcba9876543210"
outcomes = st.sampled_from(get_args(Outcome))
states = st.builds(
    SessionState,
    validated_at_ms=st.integers(0, 10**13),
    allowed=st.booleans(),
    fingerprint=st.sampled_from([FP, OTHER]),
    identity=st.none() | st.text(max_size=5),
    expires_at_ms=st.none() | st.integers(0, 10**13),
    partition=st.none() | st.integers(0, 10**4),
)


def test_no_state_validates() -> None:
    assert decide(None, FP, 60, "closed", 1_000) is VALIDATE


def test_success_inside_the_interval_is_cached_at_the_millisecond() -> None:
    state = SessionState(1_000, True, FP, "alice")
    assert decide(state, FP, 60, "closed", 60_999) == Decision(True, "cached", "", 1_000, "alice")
    assert decide(state, FP, 60, "closed", 61_000) is VALIDATE


def test_changed_credential_validates_at_once() -> None:
    assert decide(SessionState(1_000, True, FP), OTHER, 60, "closed", 1_001) is VALIDATE


def test_denied_state_is_never_reused() -> None:
    assert decide(SessionState(1_000, False, FP), FP, 60, "closed", 1_001) is VALIDATE


def test_never_past_the_token_expiry() -> None:
    state = SessionState(1_000, True, FP, expires_at_ms=5_000)
    assert decide(state, FP, 60, "closed", 4_999) != VALIDATE
    assert decide(state, FP, 60, "closed", 5_000) is VALIDATE


def test_waiters_share_the_result_of_the_same_credential() -> None:
    denied = Validation("denied", FP, 2_000, "Authorization API answered 403")
    assert decide(None, FP, 60, "closed", 2_001, denied) == Decision(
        False, "denied", "Authorization API answered 403", 2_000
    )
    assert decide(None, OTHER, 60, "closed", 2_001, denied) is VALIDATE
    down = Validation("unavailable", FP, 2_000, "timed out")
    assert decide(None, FP, 60, "open", 2_001, down).reason == "fail_open"  # type: ignore[union-attr]


def test_verdicts() -> None:
    ok = Validation("allowed", FP, 5, identity="alice")
    assert verdict(ok, "closed", first=True) == Decision(True, "validated", "", 5, "alice")
    assert verdict(ok, "closed", first=False).reason == "cached"
    down = Validation("unavailable", FP, 5, "x")
    assert verdict(down, "closed", first=True) == Decision(
        False, "authorization_unavailable", "x", 5
    )
    assert verdict(down, "open", first=True) == Decision(True, "fail_open", "x", 5)


@given(states, st.sampled_from([FP, OTHER]), st.floats(0, 10**6), st.integers(0, 10**13))
def test_cached_only_for_a_fresh_success_with_the_same_credential(
    state: SessionState, fp: str, interval: float, now: int
) -> None:
    d = decide(state, fp, interval, "closed", now)
    if d is not VALIDATE:
        assert isinstance(d, Decision) and d.allowed and d.reason == "cached"
        assert state.allowed and state.fingerprint == fp
        assert now - state.validated_at_ms < interval * 1000
        assert state.expires_at_ms is None or now < state.expires_at_ms


@given(outcomes, st.sampled_from(["closed", "open"]), st.booleans())
def test_only_success_or_fail_open_allows(outcome: str, mode: str, first: bool) -> None:
    d = verdict(Validation(outcome, FP, 1), mode, first=first)  # type: ignore[arg-type]
    assert d.allowed == (outcome == "allowed" or (outcome == "unavailable" and mode == "open"))


@given(outcomes)
def test_an_unreachable_api_never_changes_state(outcome: str) -> None:
    after = state_after(Validation(outcome, FP, 1))  # type: ignore[arg-type]
    if outcome in ("unavailable", "misconfigured"):
        assert after is None
    else:
        assert after is not None and after.allowed == (outcome == "allowed")


@given(states)
def test_state_round_trips(state: SessionState) -> None:
    assert SessionState.decode(state.encode()) == state


@given(st.binary())
def test_unreadable_state_is_unknown(raw: bytes) -> None:
    decoded = SessionState.decode(raw)
    assert decoded is None or isinstance(decoded, SessionState)


def test_every_older_state_version_is_read() -> None:
    # version 1 (before the version field): no partition recorded
    v1 = b'[1763700000000,true,"sha256:0123456789abcdef","alice",null]'
    assert SessionState.decode(v1) == SessionState(1763700000000, True, FP, "alice", None, None)
    v2 = SessionState(1763700000000, True, FP, "alice", 1763700060000, 7).encode()
    assert v2.startswith(b"[2,")
    assert SessionState.decode(v2) == SessionState(
        1763700000000, True, FP, "alice", 1763700060000, 7
    )


def test_an_unknown_version_is_no_state_and_counted() -> None:
    before = UNREADABLE["unknown_version"]
    newer = b'[4,1763700000000,true,"sha256:0123456789abcdef",null,null,0,"more"]'
    assert SessionState.decode(newer) is None  # one validation, then a state of this version
    assert UNREADABLE["unknown_version"] == before + 1


def test_a_state_of_the_wrong_types_is_never_trusted() -> None:
    before = UNREADABLE["malformed"]
    for raw in (
        b'[2,1763700000000,"false","sha256:0123456789abcdef",null,null,0]',  # a truthy string
        b'[2,1763700000000,1,"sha256:0123456789abcdef",null,null,0]',
        b'[2,"1763700000000",true,"sha256:0123456789abcdef",null,null,0]',
        b'[2,1763700000000,true,"sha256:0123456789abcdef",null,null]',  # a field short
        b'{"validatedAt":1763700000000,"allowed":true}',
        b"[]",
    ):
        assert SessionState.decode(raw) is None, raw
    assert UNREADABLE["malformed"] == before + 6
