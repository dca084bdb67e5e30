"""OAuth2 token introspection (RFC 7662): is the token a message carries active?

The bot names a connector whose `Endpoint` is the introspection endpoint and whose `Auth`
authenticates the worker (basic, or the client-credentials flow). `active: true` allows;
the identity is the `sub` claim or the bot's `IdentityClaim`; the result is trusted until
the earlier of the interval and the response's `exp`. `active: false` blocks as `denied`;
the endpoint refusing the worker's own credentials (4xx) is `misconfigured`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson

from worker.config import Bot, Connector
from worker.decide import Outcome, Validation
from worker.errors import Misconfigured, Unavailable
from worker.events import Inbound, fingerprint
from worker.validators import NO_TOKEN, Report, TokenCheck, token_at
from worker.validators.calls import ConnectorCalls
from worker.validators.http import Answer
from worker.vault import Vault


@dataclass(slots=True)
class IntrospectionCheck(TokenCheck):
    """The token a message presents, and the connector that introspects it."""

    connector: Connector


class IntrospectionValidator:
    def __init__(
        self, calls: ConnectorCalls, vault: Vault, clock: Callable[[], float] = time.time
    ) -> None:
        self._calls = calls
        self._vault = vault
        self._clock = clock

    @staticmethod
    def prepare(bot: Bot, connector: Connector, event: Inbound) -> IntrospectionCheck:
        token = token_at(bot, event)
        fp = fingerprint(token) if token else NO_TOKEN
        return IntrospectionCheck(bot, token, fp, connector)

    async def validate(self, check: IntrospectionCheck) -> tuple[Validation, Report]:
        """Ask the endpoint; never raises."""
        bot, con = check.bot, check.connector
        if check.token is None:
            assert bot.token_path is not None
            if bot.allow_anonymous:
                return self._result(check, "allowed", "anonymous", None)
            return self._result(check, "token_missing", f"no token at {bot.token_path.text}", None)
        token = check.token

        async def build(auth: dict[str, str]) -> httpx.Request:
            headers: dict[str, str] = self._vault.resolve_in(con.headers, con.organization)
            headers |= auth
            headers["Accept"] = "application/json"
            form = {"token": token, "token_type_hint": "access_token"}
            return httpx.Request("POST", con.endpoint, data=form, headers=headers)

        what = "introspection endpoint"
        try:
            answer = await self._calls.call(con, build, read_body=True, what=what)
        except Misconfigured as exc:
            return self._result(check, "misconfigured", str(exc), None)
        except Unavailable as exc:
            return self._result(check, "unavailable", str(exc), None)
        if answer.status is not None and 400 <= answer.status < 500:
            return self._result(check, "misconfigured", answer.problem, answer)
        if not answer.ok or answer.body is None:
            return self._result(check, "unavailable", answer.problem, answer)
        try:
            doc = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("active"), bool):
            return self._result(check, "unavailable", f"{what} answer is not RFC 7662 JSON", answer)
        if not doc["active"]:
            return self._result(check, "denied", "token is not active", answer)
        identity = doc.get(bot.identity_claim)
        exp = doc.get("exp")
        expires_ms = int(exp * 1000) if isinstance(exp, (int, float)) else None
        return self._result(
            check,
            "allowed",
            "",
            answer,
            str(identity) if isinstance(identity, (str, int)) else None,
            expires_ms,
        )

    def _result(
        self,
        check: IntrospectionCheck,
        outcome: Outcome,
        detail: str,
        answer: Answer | None,
        identity: str | None = None,
        expires_ms: int | None = None,
    ) -> tuple[Validation, Report]:
        now_ms = int(self._clock() * 1000)
        return (
            Validation(outcome, check.fingerprint, now_ms, detail, identity, expires_ms),
            Report(
                "introspection",
                check.connector.alias,
                answer.status if answer else None,
                answer.attempts if answer else 0,
                answer.latency_ms if answer else 0.0,
                check.fingerprint if check.token else None,
            ),
        )
