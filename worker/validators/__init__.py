"""Validators: how a session is checked (BaaS HTTP call, JWT).

Each validator turns an event into a *check* (what the message presents: its fingerprint,
and how to hide its credentials) and a check into a `Validation` plus a `Report` for the
audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from worker.config import Bot
from worker.events import fingerprint

if TYPE_CHECKING:
    from worker.config import Connector
    from worker.decide import Validation
    from worker.events import Inbound

NO_TOKEN = "sha256:no-token"  # noqa: S105 - a marker, not a credential
"""The fingerprint of "no token": a token that appears later is a change."""


class Check(Protocol):
    """What one message presents for validation."""

    @property
    def fingerprint(self) -> str:
        """A hash of what would be sent (mapped request or token): a change re-validates."""
        ...

    def redact(self, event: dict[str, Any]) -> None:
        """Replace the credentials this check reads in `event` by their fingerprints."""
        ...


@dataclass(frozen=True, slots=True)
class Report:
    """How a validation went: the audit event's `validation` object."""

    type: Literal["baas", "jwt", "introspection"]
    connector: str | None
    http_status: int | None
    attempts: int
    latency_ms: float
    token_fingerprint: str | None

    def audit(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "connector": self.connector,
            "httpStatus": self.http_status,
            "latencyMs": self.latency_ms,
            "attempts": self.attempts,
            "tokenFingerprint": self.token_fingerprint,
        }


class RemoteValidator(Protocol):
    """A validator that calls a service (BaaS, introspection): runs in its own task."""

    def prepare(self, bot: Bot, connector: Connector, event: Inbound) -> Check: ...

    async def validate(self, check: Any) -> tuple[Validation, Report]: ...


@dataclass(slots=True)  # not frozen: made for every message (see events.Inbound)
class TokenCheck:
    """The token a message presents (None: no token)."""

    bot: Bot
    token: str | None
    fingerprint: str

    def redact(self, event: dict[str, Any]) -> None:
        if self.bot.token_path is not None:
            self.bot.token_path.replace(event, fingerprint)


def token_at(bot: Bot, event: Inbound) -> str | None:
    """The token at the bot's TokenPath, or None."""
    assert bot.token_path is not None
    token = bot.token_path.get(event.doc)
    return token if isinstance(token, str) and token else None
