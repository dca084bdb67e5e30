"""Validators: how a session is checked (BaaS HTTP call, JWT).

Each validator turns an event into a *check* (what the message presents: its fingerprint,
and how to hide its credentials) and a check into a `Validation` plus a `Report` for the
audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol


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

    type: Literal["baas", "jwt"]
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
