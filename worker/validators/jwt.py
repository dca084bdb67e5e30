"""JWT access tokens (Continual-style): HS256, `iss` = the copilot id, `grants.identity`.

PyJWT checks the signature, the algorithm (pinned: `alg: none` and every other one are
refused), the issuer and that `exp`, `iat` and `iss` are present. Times are checked
here against the `now` passed in, with the bot's leeway on both sides, so the rules are
tested with a fixed clock. A `kid` is only ever a key into the bot's `Keys`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jwt

from worker.config import Bot
from worker.decide import Outcome, Validation
from worker.errors import ConfigError, Misconfigured
from worker.events import Inbound, fingerprint
from worker.validators import NO_TOKEN, Report, TokenCheck, token_at
from worker.vault import Vault

ALGORITHMS = ["HS256"]
MIN_KEY_BYTES = 32


def signing_key(vault: Vault, ref: str, org: str) -> bytes:
    """An HS256 key of organization `org`; Misconfigured when missing, another
    organization's, or shorter than 32 bytes."""
    key = vault.resolve(ref, org).encode()
    if len(key) < MIN_KEY_BYTES:
        raise Misconfigured(f"key {ref} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def key_checker(vault: Vault) -> Callable[[Bot, str], None]:
    """A config check: every key of a JWT bot resolves and is long enough (ConfigError)."""

    def check(bot: Bot, source: str) -> None:
        for ref in bot.key_refs():
            try:
                signing_key(vault, ref, bot.organization)
            except Misconfigured as exc:
                raise ConfigError(source, "SecureSessionConfig.SecretRef", str(exc)) from None

    return check


class JwtValidator:
    """Verifies tokens; no I/O besides reading the key from the vault."""

    def __init__(self, vault: Vault, clock: Callable[[], float] = time.time) -> None:
        self._vault = vault
        self._clock = clock

    @staticmethod
    def prepare(bot: Bot, event: Inbound) -> TokenCheck:
        token = token_at(bot, event)
        return TokenCheck(bot, token, fingerprint(token) if token else NO_TOKEN)

    def validate(
        self, check: TokenCheck, revoked: Callable[[str | None], int | None] = lambda _: None
    ) -> tuple[Validation, Report]:
        """Verify the token now; never raises. `revoked(identity)`: when a revocation covers
        the session or that identity (epoch ms): a token issued before is `token_revoked`."""
        started = self._clock()
        outcome, detail, identity, exp = self.verify(check, started)
        if outcome == "allowed":
            at_ms = revoked(identity)
            iat = _issued_at(check.token)
            if at_ms is not None and iat is not None and iat * 1000 < at_ms:
                outcome, detail, identity, exp = (
                    "token_revoked",
                    "token issued before a revocation",
                    None,
                    None,
                )
        now = self._clock()
        expires_ms = int(exp * 1000) if exp is not None else None
        token_fp = check.fingerprint if check.token else None
        return (
            Validation(outcome, check.fingerprint, int(now * 1000), detail, identity, expires_ms),
            Report("jwt", None, None, 1, round((now - started) * 1000, 1), token_fp),
        )

    def verify(
        self, check: TokenCheck, now: float
    ) -> tuple[Outcome, str, str | None, float | None]:
        """(outcome, detail, identity, exp) for the token at time `now` (epoch seconds)."""
        bot = check.bot
        if check.token is None:
            if bot.allow_anonymous:
                return "allowed", "anonymous", None, None
            assert bot.token_path is not None
            return "token_missing", f"no token at {bot.token_path.text}", None, None
        try:
            header = jwt.get_unverified_header(check.token)
        except jwt.PyJWTError as exc:
            return "token_invalid", f"malformed token ({exc.__class__.__name__})", None, None
        kid = header.get("kid")
        if bot.keys:
            if not isinstance(kid, str) or kid not in bot.keys:
                return "token_invalid", "unknown key id (kid)", None, None
            ref = bot.keys[kid]
        else:
            assert bot.secret_ref is not None
            ref = bot.secret_ref
        try:
            key = signing_key(self._vault, ref, bot.organization)
        except Misconfigured as exc:
            return "misconfigured", str(exc), None, None
        try:
            claims = jwt.decode(
                check.token,
                key,
                algorithms=ALGORITHMS,
                issuer=bot.issuer,
                options={
                    "require": ["exp", "iat", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            return "token_invalid", "bad signature", None, None
        except jwt.InvalidAlgorithmError:
            return "token_invalid", f"algorithm {header.get('alg')!r} not allowed", None, None
        except jwt.InvalidIssuerError:
            return "token_invalid", "wrong issuer", None, None
        except jwt.MissingRequiredClaimError as exc:
            return "token_invalid", f"claim {exc.claim!r} is missing", None, None
        except jwt.PyJWTError as exc:
            return "token_invalid", f"invalid token ({exc.__class__.__name__})", None, None
        return _check_claims(bot, claims, now)


def _issued_at(token: str | None) -> float | None:
    """The `iat` of a token already verified (its payload, not checked again)."""
    try:
        value = jwt.decode(token or "", options={"verify_signature": False}).get("iat")
    except jwt.PyJWTError:
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _check_claims(
    bot: Bot, claims: dict[str, Any], now: float
) -> tuple[Outcome, str, str | None, float | None]:
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    for name, value in (("exp", exp), ("iat", iat), ("nbf", nbf)):
        if value is not None and (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)  # NaN passes every comparison; Infinity never expires
            or abs(value) > 1e12  # seconds: beyond year 33,000, and past int(ms) overflow
        ):
            return "token_invalid", f"claim {name!r} is not a finite number", None, None
    assert isinstance(exp, (int, float)) and isinstance(iat, (int, float))
    leeway = bot.leeway_s
    if now >= exp + leeway:
        return "token_expired", "token expired", None, None
    if iat > now + leeway:
        return "token_invalid", "token issued in the future", None, None
    if nbf is not None and nbf > now + leeway:
        return "token_invalid", "token not valid yet (nbf)", None, None
    if bot.revoked_before is not None and iat < bot.revoked_before:
        return "token_revoked", "token issued before RevokedBefore", None, None
    grants = claims.get("grants")
    identity = grants.get("identity") if isinstance(grants, dict) else None
    if not isinstance(identity, str) or not identity:
        return "token_invalid", "claim 'grants.identity' is missing", None, None
    return "allowed", "", identity, float(exp)


def mint(
    key: bytes, issuer: str, identity: str, ttl_s: int, now: float, kid: str | None = None
) -> str:
    """A token for a server-side application or a test."""
    claims = {
        "iss": issuer,
        "iat": int(now),
        "exp": int(now) + ttl_s,
        "grants": {"identity": identity},
    }
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm="HS256", headers=headers)
