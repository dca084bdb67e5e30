"""JWT verification with a fixed clock: every reason, at its boundary."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest

from worker.config import parse_bot
from worker.events import parse_inbound
from worker.validators.jwt import JwtValidator, mint
from worker.vault import Vault

KEY = "k" * 32
NEW_KEY = "n" * 40
NOW = 1_800_000_000
VAULT = Vault(
    None,
    {
        "SECURE_SESSION_SECRET__ACME__JWT": KEY,
        "SECURE_SESSION_SECRET__ACME__JWT_NEW": NEW_KEY,
        "SECURE_SESSION_SECRET__ACME__SHORT": "too-short",
    },
)


def bot(**ssc: Any) -> Any:
    config = {
        "Type": "jwt",
        "ValidationInterval": 60,
        "SecretRef": "srn:vault::acme:secret:jwt",
        "Issuer": "copilot-1",
        "TokenPath": "$.context.accessToken",
        "LeewaySeconds": 30,
    }
    config.update(ssc)
    return parse_bot(
        {"Name": "b", "Organization": "acme", "SecureSession": True, "SecureSessionConfig": config},
        "test",
    )


def check(token: str | None, b: Any = None, now: float = NOW) -> tuple[str, str, str | None]:
    b = b or bot()
    ctx = {} if token is None else {"accessToken": token}
    event = parse_inbound(
        json.dumps(
            {"id": "m", "organization": "acme", "bot": "b", "sessionId": "s", "context": ctx}
        ).encode()
    )
    outcome, detail, identity, _ = JwtValidator(VAULT).verify(JwtValidator.prepare(b, event), now)
    return outcome, detail, identity


def token(
    key: str = KEY, alg: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any
) -> str:
    body = {"iss": "copilot-1", "iat": NOW - 10, "exp": NOW + 3600, "grants": {"identity": "alice"}}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def test_valid_token_gives_the_identity() -> None:
    assert check(token()) == ("allowed", "", "alice")


def test_mint_makes_a_valid_token() -> None:
    minted = mint(KEY.encode(), "copilot-1", "bob", 60, NOW)
    assert check(minted)[2] == "bob"


def test_expiry_at_the_second_with_leeway() -> None:
    t = token(exp=NOW)
    assert check(t, now=NOW + 29)[0] == "allowed"
    assert check(t, now=NOW + 30)[0] == "token_expired"


def test_issued_in_the_future_beyond_leeway_is_invalid() -> None:
    assert check(token(iat=NOW + 30))[0] == "allowed"
    assert check(token(iat=NOW + 31))[0] == "token_invalid"


def test_revoked_before_at_the_boundary() -> None:
    b = bot(RevokedBefore=NOW - 10)
    assert check(token(iat=NOW - 10), b)[0] == "allowed"
    assert check(token(iat=NOW - 11), b)[0] == "token_revoked"


def test_missing_token_blocks_unless_anonymous() -> None:
    assert check(None)[0] == "token_missing"
    assert check(None, bot(AllowAnonymous=True)) == ("allowed", "anonymous", None)


@pytest.mark.parametrize(
    ("tok", "detail"),
    [
        (token(key="x" * 32), "bad signature"),
        (token(iss="someone-else"), "wrong issuer"),
        (token(exp=None), "claim 'exp' is missing"),
        (token(iat=None), "claim 'iat' is missing"),
        (token(grants={}), "grants.identity"),
        (token(key="k" * 64, alg="HS512"), "algorithm 'HS512' not allowed"),
        ("not-a-jwt", "malformed token"),
    ],
)
def test_invalid_tokens(tok: str, detail: str) -> None:
    outcome, got, _ = check(tok)
    assert outcome == "token_invalid"
    assert detail in got


def test_alg_none_is_refused() -> None:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    claims = {"iss": "copilot-1", "iat": NOW, "exp": NOW + 60, "grants": {"identity": "eve"}}
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    assert check(unsigned)[0] == "token_invalid"


def test_key_rotation_by_kid() -> None:
    b = bot(Keys={"old": "srn:vault::acme:secret:jwt", "new": "srn:vault::acme:secret:jwt-new"})
    assert check(token(headers={"kid": "old"}), b)[0] == "allowed"
    assert check(token(key=NEW_KEY, headers={"kid": "new"}), b)[0] == "allowed"
    # an unknown kid is refused without trying the other keys
    assert check(token(headers={"kid": "../../etc/passwd"}), b) == (
        "token_invalid",
        "unknown key id (kid)",
        None,
    )
    assert check(token(key=NEW_KEY, headers={"kid": "old"}), b)[0] == "token_invalid"


def test_regenerated_secret_revokes_older_tokens() -> None:
    old = token()
    rotated = Vault(None, {"SECURE_SESSION_SECRET__ACME__JWT": "r" * 32})
    event = parse_inbound(
        json.dumps(
            {
                "id": "m",
                "organization": "acme",
                "bot": "b",
                "sessionId": "s",
                "context": {"accessToken": old},
            }
        ).encode()
    )
    v = JwtValidator(rotated)
    assert v.verify(v.prepare(bot(), event), NOW)[0] == "token_invalid"


def test_short_or_missing_key_is_misconfigured() -> None:
    assert check(token(), bot(SecretRef="srn:vault::acme:secret:short"))[0] == "misconfigured"
    assert check(token(), bot(SecretRef="srn:vault::acme:secret:nope"))[0] == "misconfigured"


def test_token_is_redacted_to_its_fingerprint() -> None:
    b = bot()
    tok = token()
    raw = json.dumps(
        {
            "id": "m",
            "organization": "acme",
            "bot": "b",
            "sessionId": "s",
            "context": {"accessToken": tok, "lang": "en"},
        }
    )
    c = JwtValidator.prepare(b, parse_inbound(raw.encode()))
    doc = json.loads(raw)
    c.redact(doc)
    assert doc["context"] == {"accessToken": c.fingerprint, "lang": "en"}


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": float("nan")},  # passed RevokedBefore: every comparison with NaN is false
        {"exp": float("inf")},  # raised an internal error
        {"exp": float("-inf")},
        {"nbf": float("nan")},
        {"exp": 1e300},
    ],
)
def test_claims_that_are_not_finite_numbers_are_invalid(claims: dict[str, Any]) -> None:
    b = bot(RevokedBefore=NOW - 5)
    outcome, detail, _ = check(token(**claims), b)
    assert outcome == "token_invalid" and "finite number" in detail


def test_a_token_issued_before_a_revocation_is_revoked() -> None:
    from worker.validators.jwt import JwtValidator as V

    b = bot()
    event = parse_inbound(
        json.dumps(
            {
                "id": "m",
                "organization": "acme",
                "bot": "b",
                "sessionId": "s",
                "context": {"accessToken": token(iat=NOW - 100)},
            }  # fmt: skip
        ).encode()
    )
    check = V.prepare(b, event)
    validator = V(VAULT, clock=lambda: NOW)
    before = (NOW - 50) * 1000  # revoked after the token was issued
    result, _ = validator.validate(check, lambda identity: before if identity == "alice" else None)
    assert result.outcome == "token_revoked"
    earlier = (NOW - 200) * 1000  # revoked before it: a token issued since is fine
    assert validator.validate(check, lambda _: earlier)[0].outcome == "allowed"
