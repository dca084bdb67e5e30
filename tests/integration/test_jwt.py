"""JWT access tokens through the topics, with real signed tokens."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Broker
from tests.integration.harness import Harness, event, reason
from worker.validators.jwt import mint

pytestmark = pytest.mark.integration

KEY = "jwt-signing-key-0123456789abcdef-xyz"
NEW_KEY = "jwt-signing-key-NEW-0123456789abcdef"
REVOKED_BEFORE = int(time.time()) - 3600


def jwt_bot(name: str, **ssc: Any) -> dict[str, Any]:
    config = {
        "Type": "jwt",
        "ValidationInterval": 300,
        "Issuer": "copilot-1",
        "SecretRef": "srn:vault::acme:secret:jwt-key",
        "TokenPath": "$.context.accessToken",
        "RevokedBefore": REVOKED_BEFORE,
        "ErrorMessage": "Please sign in again.",
    }
    config.update(ssc)
    return {
        "Name": name,
        "Organization": "acme",
        "SecureSession": True,
        "SecureSessionConfig": config,
    }


@pytest.fixture(scope="module")
def h(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = Harness(broker, tmp_path_factory.mktemp("jwt")).start()
    tokens: list[str] = []
    harness.minted = tokens  # type: ignore[attr-defined]
    try:
        (harness.secrets / "acme" / "jwt-key").write_text(KEY)
        (harness.secrets / "acme" / "jwt-new").write_text(NEW_KEY)
        config = harness.write_config(
            bots=[
                jwt_bot("jwt"),
                jwt_bot("anon", AllowAnonymous=True),
                jwt_bot(
                    "rot",
                    Keys={
                        "old": "srn:vault::acme:secret:jwt-key",
                        "new": "srn:vault::acme:secret:jwt-new",
                    },
                ),
            ],
            connectors=[],
        )
        harness.start_worker(config)
        yield harness
        harness.assert_clean((KEY, NEW_KEY, *tokens))
    finally:
        harness.stop()


def tok(
    h: Harness,
    identity: str = "alice",
    key: str = KEY,
    ttl: int = 3600,
    iat: float | None = None,
    issuer: str = "copilot-1",
    kid: str | None = None,
) -> str:
    token = mint(key.encode(), issuer, identity, ttl, iat if iat is not None else time.time(), kid)
    h.minted.append(token)  # type: ignore[attr-defined]
    return token


def send(
    h: Harness, token: str | None, bot: str = "jwt", n: int = 1, session: str | None = None
) -> list[Any]:
    s = session or f"s-{uuid.uuid4().hex[:8]}"
    before = len(h.decisions(s))
    ctx = {} if token is None else {"accessToken": token}
    h.send(*[event(s, f"m{before + i}", bot=bot, context=ctx) for i in range(n)])
    return h.wait_decisions(s, before + n)[before:]


def test_valid_token_is_validated_then_cached_with_identity(h: Harness) -> None:
    session = f"s-{uuid.uuid4().hex[:8]}"
    outs = send(h, tok(h, "alice"), n=3, session=session)
    assert [reason(o) for o in outs] == ["validated", "cached", "cached"]
    assert all(o.headers["secure-session-identity"] == b"alice" for o in outs)
    (audit,) = h.audits(session)
    assert audit["identity"] == "alice" and audit["validation"]["type"] == "jwt"
    assert audit["validation"]["tokenFingerprint"].startswith("sha256:")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda h: None, "token_missing"),
        (lambda h: tok(h, key="wrong-key-wrong-key-wrong-key-123"), "token_invalid"),
        (lambda h: tok(h, issuer="another-copilot"), "token_invalid"),
        (lambda h: tok(h, ttl=-120), "token_expired"),
        (lambda h: tok(h, iat=REVOKED_BEFORE - 60, ttl=100_000), "token_revoked"),
        (lambda h: "eyJhbGciOiJub25lIn0.eyJpc3MiOiJjb3BpbG90LTEifQ.", "token_invalid"),
    ],
)
def test_token_reasons(h: Harness, make: Any, expected: str) -> None:
    (out,) = send(h, make(h))
    assert out.topic == "blocked" and reason(out) == expected
    assert out.doc is not None and out.doc["errorMessage"] == "Please sign in again."
    token = out.doc["event"]["context"].get("accessToken")
    assert token is None or token.startswith("sha256:")


def test_anonymous_access(h: Harness) -> None:
    (out,) = send(h, None, bot="anon")
    assert out.topic == "allowed" and "secure-session-identity" not in out.headers


def test_changed_token_and_expiry_end_the_trust(h: Harness) -> None:
    session = f"s-{uuid.uuid4().hex[:8]}"
    short = tok(h, "alice", ttl=2)
    assert reason(send(h, short, session=session)[0]) == "validated"
    (changed,) = send(h, tok(h, "bob"), session=session)  # identity change, verified at once
    assert reason(changed) == "validated"
    assert changed.headers["secure-session-identity"] == b"bob"
    time.sleep(2.5)
    # back to the short token: the interval is 300 s but the token's exp has passed
    # (expired beyond exp, inside the 30 s leeway: verified again, never cached)
    (again,) = send(h, short, session=session)
    assert reason(again) == "validated"


def test_key_rotation_accepts_old_and_new_kids(h: Harness) -> None:
    assert reason(send(h, tok(h, kid="old"), bot="rot")[0]) == "validated"
    assert reason(send(h, tok(h, key=NEW_KEY, kid="new"), bot="rot")[0]) == "validated"
    assert reason(send(h, tok(h, kid="other"), bot="rot")[0]) == "token_invalid"


def test_token_mint_command_makes_a_token_the_worker_accepts(h: Harness) -> None:
    done = h.cli(
        "token",
        "mint",
        "--issuer",
        "copilot-1",
        "--identity",
        "dora",
        "--secret-ref",
        "srn:vault::acme:secret:jwt-key",
        "--ttl",
        "60",
    )
    assert done.returncode == 0, done.stderr
    minted = done.stdout.strip()
    h.minted.append(minted)  # type: ignore[attr-defined]
    (out,) = send(h, minted)
    assert reason(out) == "validated" and out.headers["secure-session-identity"] == b"dora"


def test_short_key_refuses_the_config_naming_file_and_field(h: Harness) -> None:
    (h.secrets / "acme" / "short").write_text("too-short")
    path = h.write_config([jwt_bot("x", SecretRef="srn:vault::acme:secret:short")], [])
    proc = h.cli("worker", config=path)
    assert proc.returncode == 2
    assert f"{path}: bots[0]: SecureSessionConfig.SecretRef" in proc.stderr
    assert "shorter than 32 bytes" in proc.stderr
