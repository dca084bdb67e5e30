"""A reference Authorization API (aiohttp): the demo's, and the integration tests' real server.

- `POST|GET /VerifyToken`: the BaaS check. The caller authenticates with the API key in
  `Authorization` (or `Bearer <access token>` from `/oauth/token`); the user's token then
  comes in the JSON body's `token`, a `token` query parameter or an `X-Token` header.
  Otherwise `Authorization: Bearer <user token>` is the user's (per-dialog) token itself;
  without any: 401. A known token answers 200 `{"identity": …}`, an unknown one 403.
- `POST /oauth/token`: OAuth2 client credentials (basic auth or form fields).
- `POST /introspect`: RFC 7662 token introspection for clients of `/oauth/token`
  (basic auth or a bearer access token).

For tests and demos it can misbehave per token: a script of statuses to answer in turn
(e.g. 500 then 200) and a delay before answering. Every call is counted.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class AuthorizationAPI:
    """The API's state: keys, tokens, behaviour and call counts."""

    api_key: str
    tokens: dict[str, str] = field(default_factory=dict)
    """token -> identity of the user tokens that are valid."""
    script: dict[str, list[int]] = field(default_factory=dict)
    """token -> statuses to answer first, in order, before the normal answer."""
    delay_s: dict[str, float] = field(default_factory=dict)
    """token -> seconds to wait before answering."""
    default_delay_s: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    """token -> calls received (after the caller's authentication)."""
    clients: dict[str, str] = field(default_factory=dict)
    """OAuth2 client id -> client secret."""
    access_token_ttl_s: int = 3600
    access_tokens: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    token_calls: int = 0
    token_endpoint_down: bool = False

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_post("/VerifyToken", self._verify)
        application.router.add_get("/VerifyToken", self._verify)
        application.router.add_post("/oauth/token", self._issue)
        application.router.add_post("/introspect", self._introspect)
        application.router.add_get("/healthz", self._health)
        return application

    def revoke_access_tokens(self) -> None:
        """Revoke every issued access token: the next call with one answers 401."""
        self.revoked |= self.access_tokens
        self.access_tokens.clear()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _caller_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header == self.api_key:
            return True
        if header.startswith("Bearer ") and header[7:] in self.access_tokens:
            return True
        client = _basic_client(header)
        return client is not None and self.clients.get(client[0]) == client[1]

    async def _verify(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if self._caller_ok(request):
            token = await _token_of(request)
        elif header.startswith("Bearer ") and header[7:] not in self.revoked:
            token = header[7:]  # a per-dialog user token passed as the bearer
        else:
            return web.json_response({"error": "bad api key"}, status=401)
        return await self._answer(token, lambda identity: {"identity": identity}, 403)

    async def _answer(self, token: str, body: object, unknown_status: int) -> web.Response:
        self.calls[token] += 1
        delay = self.delay_s.get(token, self.default_delay_s)
        if delay:
            await asyncio.sleep(delay)
        pending = self.script.get(token)
        if pending:
            status = pending.pop(0)
            return web.json_response({"scripted": status}, status=status)
        identity = self.tokens.get(token)
        if identity is None:
            if unknown_status == 200:
                return web.json_response({"active": False})
            return web.json_response({"error": "token rejected"}, status=unknown_status)
        assert callable(body)
        return web.json_response(body(identity))

    async def _issue(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        if self.token_endpoint_down:
            return web.json_response({"error": "down"}, status=503)
        form = await request.post()
        client = _basic_client(request.headers.get("Authorization", ""))
        if client is None:
            client = (str(form.get("client_id", "")), str(form.get("client_secret", "")))
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if self.clients.get(client[0]) != client[1]:
            return web.json_response({"error": "invalid_client"}, status=401)
        access = secrets.token_urlsafe(24)
        self.access_tokens.add(access)
        return web.json_response(
            {"access_token": access, "token_type": "Bearer", "expires_in": self.access_token_ttl_s}
        )

    async def _introspect(self, request: web.Request) -> web.Response:
        if not self._caller_ok(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str((await request.post()).get("token", ""))
        exp = int(time.time()) + 3600
        return await self._answer(
            token, lambda identity: {"active": True, "sub": identity, "exp": exp}, 200
        )


def _basic_client(header: str) -> tuple[str, str] | None:
    if not header.startswith("Basic "):
        return None
    try:
        user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, secret


async def _token_of(request: web.Request) -> str:
    if "token" in request.query:
        return request.query["token"]
    if "X-Token" in request.headers:
        return request.headers["X-Token"]
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return ""
        if isinstance(body, dict) and isinstance(body.get("token"), str):
            return str(body["token"])
    return ""


class RunningAPI:
    """The API served on loopback in the current event loop."""

    def __init__(self, api: AuthorizationAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api = api
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> RunningAPI:
        # stopping does not wait for calls told to hang (tests of slow APIs): 1 s, not 60
        self._runner = web.AppRunner(self.api.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    @property
    def base(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/VerifyToken"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
