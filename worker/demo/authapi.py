"""A reference Authorization API (aiohttp): the demo's, and the integration tests' real server.

`POST /VerifyToken` with an API key in the `Authorization` header (wrong or missing:
401) and a token in the JSON body's `token` field, a `token` query parameter or an
`X-Token` header. A known token answers 200 `{"identity": …}`, an unknown one 403.

For tests and demos it can also misbehave per token: a script of statuses to answer
in turn (e.g. 500 then 200) and a delay before answering. Every call is counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class AuthorizationAPI:
    """The API's state: keys, tokens, behaviour and call counts."""

    api_key: str
    tokens: dict[str, str] = field(default_factory=dict)
    """token -> identity of the tokens that are valid."""
    script: dict[str, list[int]] = field(default_factory=dict)
    """token -> statuses to answer first, in order, before the normal answer."""
    delay_s: dict[str, float] = field(default_factory=dict)
    """token -> seconds to wait before answering."""
    default_delay_s: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    """token -> calls received (after the API key check)."""

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_post("/VerifyToken", self._verify)
        application.router.add_get("/VerifyToken", self._verify)
        application.router.add_get("/healthz", self._health)
        return application

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _verify(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self.api_key:
            return web.json_response({"error": "bad api key"}, status=401)
        token = await _token_of(request)
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
            return web.json_response({"error": "token rejected"}, status=403)
        return web.json_response({"identity": identity})


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
        self._runner = web.AppRunner(self.api.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/VerifyToken"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
