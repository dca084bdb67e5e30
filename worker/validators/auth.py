"""Connector authentication: HTTP basic, or OAuth2 client credentials (service accounts).

OAuth2 access tokens are cached per connector until shortly before `expires_in`, fetched
once for all concurrent callers (single flight), and dropped after a 401 so the next call
fetches a new one. A token endpoint that does not answer makes the validation unavailable
(the bot's FailureMode); one that refuses the client credentials (4xx) is a
misconfiguration.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson

from worker.config import Auth, Connector
from worker.errors import Misconfigured, Unavailable
from worker.validators.http import Http
from worker.vault import Vault

DEFAULT_EXPIRES_S = 300.0


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float


class ConnectorAuth:
    """Adds a connector's credentials to its calls."""

    def __init__(self, http: Http, vault: Vault, clock: Callable[[], float] = time.monotonic):
        self._http = http
        self._vault = vault
        self._clock = clock
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._fetching: dict[tuple[str, ...], asyncio.Future[_Token]] = {}
        self.fetches = 0
        """Token endpoint calls made (for tests and metrics)."""

    async def headers(self, connector: Connector) -> dict[str, str]:
        """The Authorization header for `connector` ({} without Auth)."""
        auth = connector.auth
        if auth is None:
            return {}
        if auth.type == "basic":
            secret = self._vault.resolve(auth.client_secret_ref, connector.organization)
            return {"Authorization": _basic(auth.client_id, secret)}
        token = await self._token(connector, auth)
        return {"Authorization": f"Bearer {token.value}"}

    def invalidate(self, connector: Connector) -> None:
        """Forget the cached token (the API answered 401)."""
        if connector.auth is not None:
            self._tokens.pop(_key(connector, connector.auth), None)

    async def _token(self, connector: Connector, auth: Auth) -> _Token:
        key = _key(connector, auth)
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached
        pending = self._fetching.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._fetching[key] = pending
            try:
                token = await self._fetch(connector, auth)
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except Exception as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: waiters re-raise it, no "never retrieved" log
                raise
            else:
                self._tokens[key] = token
                pending.set_result(token)
                return token
            finally:
                del self._fetching[key]
        return await asyncio.shield(pending)

    async def _fetch(self, connector: Connector, auth: Auth) -> _Token:
        assert auth.token_url is not None
        secret = self._vault.resolve(auth.client_secret_ref, connector.organization)
        form = {"grant_type": "client_credentials"}
        if auth.scope:
            form["scope"] = auth.scope
        headers = {"Accept": "application/json"}
        if auth.client_auth == "basic":
            headers["Authorization"] = _basic(auth.client_id, secret)
        else:
            form |= {"client_id": auth.client_id, "client_secret": secret}
        token_url = auth.token_url

        async def build() -> httpx.Request:
            return httpx.Request("POST", token_url, data=form, headers=headers)

        self.fetches += 1
        answer = await self._http.call(
            build, connector.timeout_s, read_body=True, what="token endpoint"
        )
        if answer.status is not None and 400 <= answer.status < 500:
            raise Misconfigured(f"token endpoint refused the client credentials ({answer.status})")
        if not answer.ok or answer.body is None:
            raise Unavailable(answer.problem)
        try:
            doc = orjson.loads(answer.body)
            value = doc["access_token"]
            expires_in = float(doc.get("expires_in") or DEFAULT_EXPIRES_S)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise Unavailable("token endpoint answer has no access_token") from None
        if not isinstance(value, str) or not value:
            raise Unavailable("token endpoint answer has no access_token")
        # refresh a little before it expires: 10% of its life, at most a minute
        margin = min(60.0, expires_in * 0.1)
        return _Token(value, self._clock() + expires_in - margin)


def _key(connector: Connector, auth: Auth) -> tuple[str, ...]:
    return (connector.key, auth.token_url or "", auth.client_id, auth.scope or "")


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
