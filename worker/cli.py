"""The `secure-session` command: worker, config, send/watch, audit tail, sessions show, dev."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar

import click

from worker.errors import ConfigError, SecureSessionError
from worker.settings import Settings
from worker.text import printable
from worker.vault import Vault

if TYPE_CHECKING:
    from worker.config import ConfigFile

T = TypeVar("T")


def _fail(message: str) -> NoReturn:
    click.echo(f"secure-session: {message}", err=True)
    sys.exit(2)


EXIT_KAFKA = 4
"""Exit code of a client verb that could not reach Kafka."""


def _run_client(settings: Settings, coro: Coroutine[Any, Any, T]) -> T:
    """Run a client verb; a broker it cannot reach ends it with one line and EXIT_KAFKA
    (aiokafka gives up on an unreachable bootstrap within its request timeout, 40 s)."""
    from aiokafka.errors import KafkaError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its per-attempt lines: the
    # one below says it all
    try:
        return asyncio.run(coro)
    except (KafkaError, OSError) as exc:
        click.echo(
            f"secure-session: cannot reach Kafka at {settings.bootstrap_servers} "
            f"({exc.__class__.__name__}): is the broker up, and KAFKA_BOOTSTRAP_SERVERS right?",
            err=True,
        )
        sys.exit(EXIT_KAFKA)


def vault_of(settings: Settings) -> Vault:
    return Vault(settings.secrets_dir, settings.environ)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SecureSessionError as exc:
        _fail(f"bad setting {exc}")


def _config_file(settings: Settings) -> ConfigFile | None:
    """SECURE_SESSION_CONFIG's file, loaded (None when unset); refused naming the problem."""
    from worker.config import load_file

    if settings.config_file is None:
        return None
    try:
        return load_file(settings.config_file)
    except ConfigError as exc:
        _fail(f"configuration refused: {exc}")


@click.group()
@click.version_option(package_name="secure-session")
def main() -> None:
    """Secure-session worker for chatbots: validates the session of every bot message."""


@main.command()
def worker() -> None:
    """Run one member of the worker's consumer group (configured by the environment)."""

    from worker import logs
    from worker.app import create_app
    from worker.audit import signing_key
    from worker.config import Registry
    from worker.kafka import ensure_topics
    from worker.validators.jwt import key_checker

    settings = _settings()
    config = _config_file(settings)
    try:
        registry = Registry.from_file(config, key_checker(vault_of(settings)))
    except ConfigError as exc:
        _fail(f"configuration refused: {exc}")
    try:
        signing_key(settings)  # refused now, not once the broker answers
    except SecureSessionError as exc:
        _fail(f"bad setting {exc}")
    log_config = logs.config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)
    for warning in config.warnings if config is not None else ():
        logging.getLogger("worker.config").warning("%s", warning)
    logging.getLogger("worker").info("starting: %s", summary(settings, config))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        partitions = loop.run_until_complete(_when_reachable(settings, ensure_topics))
    except SecureSessionError as exc:
        _fail(str(exc))
    app = create_app(settings, partitions=partitions, registry=registry)
    app.group_watch = loop.create_task(app.watch_group())  # type: ignore[attr-defined]
    if settings.web_enabled:
        from worker.metrics import serve

        metrics, ready = app.pipeline.metrics, app.ready  # type: ignore[attr-defined]
        loop.run_until_complete(serve(metrics, ready, settings.web_port, settings.web_host))
    w = _worker_class()(
        app, loglevel=settings.log_level, logging_config=log_config, quiet=True, loop=loop
    )
    w.deadline_s = settings.shutdown_deadline_s

    async def _quiet_root() -> None:
        # Faust leaves the root logger at DEBUG: records built and thrown away cost ~14%
        logging.getLogger().setLevel(settings.log_level.upper())

    app.on_startup_finished = _quiet_root
    w.execute_from_commandline()


def summary(settings: Settings, config: object | None) -> str:
    """One line: where the worker connects, as whom, which topics, which store."""
    t = settings.topics
    source = f"{getattr(config, 'path', '')} + topics" if config is not None else "topics only"
    return (
        f"Kafka {settings.bootstrap_servers} ({settings.security.protocol}), group "
        f"{settings.app_id}, client id {settings.client_id}; topics in={t.inbound} "
        f"allowed={t.allowed} blocked={t.blocked} audit={t.audit} bots={t.bots} "
        f"connectors={t.connectors}; store {settings.store}; configuration from {source}"
    )


SECRET_SETTING = ("PASSWORD", "SECRET", "FINGERPRINT_KEY")
"""Settings whose value `config show` never prints (a file path is shown: it is not one)."""


EXIT_DEADLINE = 3
"""Exit code when the shutdown deadline cut the stop short (docs/reliability.md)."""


def _worker_class() -> type:
    import faust

    class Worker(faust.Worker):
        """Faust's worker with a bounded stop: SIGTERM or SIGINT starts the stop and a
        watchdog; at `deadline_s` the process exits whatever it waits for. A second signal
        exits at once. Records not yet decided are left unacked for the next owner."""

        deadline_s: float = 8.0
        _stop_signalled = False

        def _schedule_shutdown(self, sig: signal.Signals) -> None:
            log = logging.getLogger("worker.cli")
            if self._stop_signalled:
                log.warning("second %s: exiting now, without waiting for the stop", sig.name)
                _exit_now(EXIT_DEADLINE)
            self._stop_signalled = True
            log.info("%s: stopping within %.1f s", sig.name, self.deadline_s)
            timer = threading.Timer(self.deadline_s, self._deadline_passed)
            timer.daemon = True
            timer.start()
            super()._schedule_shutdown(sig)

        def _deadline_passed(self) -> None:
            logging.getLogger("worker.cli").warning(
                "shutdown deadline of %.1f s passed: exiting now; what was not committed "
                "is read again by the next owner",
                self.deadline_s,
            )
            _exit_now(EXIT_DEADLINE)

    return Worker


def _exit_now(code: int) -> NoReturn:
    logging.shutdown()  # flush the log lines first
    os._exit(code)


async def _when_reachable(settings: Settings, setup: Callable[[Settings], Awaitable[T]]) -> T:
    """Run `setup` once the broker answers: a worker may start before its broker."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    log = logging.getLogger("worker.cli")
    delay = 1.0
    while True:
        try:
            return await setup(settings)
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            log.warning(
                "Kafka at %s is not reachable (%s); retrying in %.0f s",
                settings.bootstrap_servers,
                exc.__class__.__name__,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


@main.group()
def config() -> None:
    """Check and publish bot / api-connector configuration."""


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="refuse on warnings (likely typos) too")
def config_check(file: Path, strict: bool) -> None:
    """Check a configuration file as the worker's load does; exit 2 naming the field when
    it is invalid (with --strict: also when a field looks like a typo)."""
    from worker.config import Registry, load_file
    from worker.validators.jwt import key_checker

    settings = _settings()
    try:
        loaded = load_file(file)
        # the worker's own load: JWT keys resolved from this environment's vault
        Registry.from_file(loaded, key_checker(vault_of(settings)))
    except ConfigError as exc:
        _fail(f"configuration refused: {exc}")
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    if strict and loaded.warnings:
        _fail(f"configuration refused (--strict): {len(loaded.warnings)} warnings")
    where = settings.secrets_dir or "no SECURE_SESSION_SECRETS_DIR"
    click.echo(
        f"{file}: {len(loaded.bots)} bots, {len(loaded.connectors)} connectors: valid "
        f"(JWT keys checked against this environment's vault: {where} and "
        "SECURE_SESSION_SECRET__*; connector secrets and endpoints are checked at call time)"
    )


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def config_show(as_json: bool) -> None:
    """The effective configuration: every setting, where it came from (secrets masked), and
    the bots and connectors of SECURE_SESSION_CONFIG (topic records are read by the worker)."""
    import orjson

    settings = _settings()
    rows = []
    for name, value, source in settings.origins:
        secret = any(s in name for s in SECRET_SETTING) and not name.endswith("_FILE")
        shown = "****" if secret and value else value
        rows.append({"name": name, "value": shown, "from": source})
    loaded = _config_file(settings)
    bots = (
        [f"{b.key} ({b.type if b.secure else 'not secure'})" for b in loaded.bots] if loaded else []
    )
    connectors = (
        [f"{c.key} -> {c.endpoint.split('?')[0]}" for c in loaded.connectors] if loaded else []
    )
    if as_json:
        doc = {"settings": rows, "file": str(settings.config_file or ""), "bots": bots,
               "connectors": connectors, "summary": summary(settings, loaded)}  # fmt: skip
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(summary(settings, loaded))
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"  {r['name']:<{width}}  {r['value'] or '-':<30}  ({r['from']})")
    where = settings.config_file or "no SECURE_SESSION_CONFIG"
    click.echo(f"from {where}: {len(bots)} bots, {len(connectors)} connectors")
    for line in bots + connectors:
        click.echo(f"  {printable(line)}")


@config.command("publish")
@click.argument("file", type=click.Path(path_type=Path))
def config_publish(file: Path) -> None:
    """Check FILE and write it to the compacted configuration topics."""
    from worker.config import load_file
    from worker.kafka import ensure_topics, publish_config

    settings = _settings()
    try:
        loaded = load_file(file)
    except ConfigError as exc:
        _fail(f"configuration refused: {exc}")
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)

    async def run() -> int:
        await ensure_topics(settings)
        return await publish_config(settings, loaded)

    count = _run_client(settings, run())
    click.echo(
        f"published {len(loaded.bots)} bots to {settings.topics.bots} and "
        f"{len(loaded.connectors)} connectors to {settings.topics.connectors} ({count} records)"
    )


@config.command("delete")
@click.option("--bot", "bots", multiple=True, metavar="ORG/NAME", help="a bot to delete")
@click.option("--connector", "connectors", multiple=True, metavar="ORG/ALIAS")
def config_delete(bots: tuple[str, ...], connectors: tuple[str, ...]) -> None:
    """Delete bots or connectors (tombstones on the configuration topics)."""
    from worker.kafka import publish

    settings = _settings()
    for key in bots + connectors:
        if key.count("/") != 1:
            _fail(f"{key!r} is not of the form ORG/NAME")
    records: list[tuple[str, str, bytes | None]] = [(settings.topics.bots, k, None) for k in bots]
    records += [(settings.topics.connectors, k, None) for k in connectors]
    _run_client(settings, publish(settings, records))
    click.echo(f"deleted {len(records)} records")


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
def send(source: BinaryIO) -> None:
    """Send inbound events, one JSON object per line (SOURCE or stdin), keyed by sessionId."""
    import orjson

    from worker.kafka import publish

    settings = _settings()
    records: list[tuple[str, str, bytes | None]] = []
    for number, line in enumerate(source, 1):
        raw = line.strip()
        if not raw:
            continue
        try:
            session = orjson.loads(raw).get("sessionId", "")
        except (orjson.JSONDecodeError, AttributeError):
            session = ""  # sent as is: the worker blocks it as invalid_event
        if not isinstance(session, str) or not session:
            click.echo(f"line {number}: no sessionId, sent with an empty key", err=True)
            session = ""
        records.append((settings.topics.inbound, session, raw))
    _run_client(settings, publish(settings, records))
    click.echo(f"sent {len(records)} events to {settings.topics.inbound}")


@main.command()
@click.option("--from-beginning", is_flag=True, help="show earlier decisions too")
def watch(from_beginning: bool) -> None:
    """Print allowed and blocked decisions as they happen (Ctrl-C stops)."""
    from worker.demo.traffic import watch_decisions
    from worker.kafka import client_options

    settings = _settings()
    t = settings.topics
    with contextlib.suppress(KeyboardInterrupt):
        _run_client(
            settings,
            watch_decisions(client_options(settings), t.allowed, t.blocked, from_beginning),
        )


def _since(raw: str | None) -> int | None:
    """`--since`: 90s, 15m, 2h, 1d ago, or an ISO 8601 time; epoch ms."""
    import datetime
    import time

    if raw is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if raw[-1:] in units and raw[:-1].isdigit():
        return int((time.time() - int(raw[:-1]) * units[raw[-1]]) * 1000)
    try:
        at = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise click.BadParameter(f"{raw!r}: expected 90s, 15m, 2h, 1d or an ISO time") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    return int(at.timestamp() * 1000)


@main.group()
def audit() -> None:
    """Read the audit trail."""


@audit.command("tail")
@click.option("--org", help="only this organization")
@click.option("--bot", help="only this bot")
@click.option("--session", help="only this session id")
@click.option("--reason", help="only this reason (e.g. denied, validated)")
@click.option("--since", help="start this far back: 90s, 15m, 2h, 1d or an ISO time")
@click.option("--json", "as_json", is_flag=True, help="one JSON audit event a line")
@click.option("--follow/--no-follow", default=True, show_default=True, help="wait for new events")
def audit_tail(
    org: str | None,
    bot: str | None,
    session: str | None,
    reason: str | None,
    since: str | None,
    as_json: bool,
    follow: bool,
) -> None:
    """Print audit events as they come (from --since, if given); Ctrl-C stops."""
    import orjson

    from worker.tools import AuditFilter, audit_line, audit_tail

    settings = _settings()
    keep = AuditFilter(org, bot, session, reason, _since(since))

    def emit(doc: dict[str, object]) -> None:
        click.echo(orjson.dumps(doc).decode() if as_json else audit_line(doc))

    with contextlib.suppress(KeyboardInterrupt):
        _run_client(settings, audit_tail(settings, keep, follow, emit))


@audit.command("verify")
@click.option("--org", help="only this organization")
@click.option("--bot", help="only this bot (configuration chains are left out)")
@click.option("--session", help="only this session id (configuration chains are left out)")
@click.option("--since", help="start this far back: 90s, 15m, 2h, 1d or an ISO time")
@click.option(
    "--file",
    "export",
    type=click.File("rb"),
    help="a JSON-lines export (as `audit tail --json` writes it) instead of the topic",
)
def audit_verify(
    org: str | None,
    bot: str | None,
    session: str | None,
    since: str | None,
    export: BinaryIO | None,
) -> None:
    """Check the audit chains: exit 0 when intact, 1 with a line per problem (altered,
    forged, missing, out of order). Events written again after a crash are listed as
    duplicates and are not problems."""
    import orjson

    from worker.audit import Verifier, verifying_keys
    from worker.text import printable
    from worker.tools import AuditFilter, read_audit

    settings = _settings()
    try:
        keys = verifying_keys(settings)
    except SecureSessionError as exc:
        _fail(f"bad setting {exc}")
    if not keys:
        _fail("set SECURE_SESSION_AUDIT_KEY_REF (and SECURE_SESSION_AUDIT_VERIFY_KEY_REFS)")
    since_ms = _since(since)
    keep = AuditFilter(org, bot, session, None, since_ms)
    verifier = Verifier(keys)

    def take(raw: bytes, where: str) -> None:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            if not keep(doc) or (doc.get("kind") == "config_changed" and (bot or session)):
                return
        elif org or bot or session or since_ms:
            return  # not an event: nothing to filter on
        verifier.add(raw, where)

    if export is not None:
        for n, line in enumerate(export, 1):
            if line.strip():
                take(line.rstrip(b"\r\n"), f"line {n}")
    else:
        _run_client(
            settings,
            read_audit(
                settings,
                since_ms or 0,
                False,
                lambda m: take(m.value or b"", f"{m.partition}@{m.offset}"),
            ),
        )
    report = verifier.finish()
    for problem in report.duplicates + report.problems:
        click.echo(printable(problem))
    verdict = f"{len(report.problems)} problems" if report.problems else "intact"
    click.echo(
        f"{report.events} events in {report.chains} chains: {verdict}"
        f" ({len(report.duplicates)} duplicates)",
        err=True,
    )
    sys.exit(1 if report.problems else 0)


@main.group()
def sessions() -> None:
    """Inspect session state."""


@sessions.command("show")
@click.argument("org")
@click.argument("bot")
@click.argument("session")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def sessions_show(org: str, bot: str, session: str, as_json: bool) -> None:
    """Print what the worker holds for one session (from its table's changelog); exit 1 if none."""
    import time

    import orjson

    from worker.tools import session_state

    settings = _settings()
    try:
        held = _run_client(settings, session_state(settings, org, bot, session))
    except LookupError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(orjson.dumps(held.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        where = f"{held.topic} partition {held.partition}"
        s = held.state
        if s is None:
            gone = "expired or deleted" if held.offset is not None else "never validated"
            click.echo(f"{printable(held.key)}: no state ({gone}; {where})")
        else:
            ago = time.time() - s.validated_at_ms / 1000
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.validated_at_ms / 1000))
            expires = (
                "-"
                if s.expires_at_ms is None
                else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.expires_at_ms / 1000))
            )
            click.echo(
                f"{printable(held.key)} ({where}, offset {held.offset})\n"
                f"  last validation  {stamp} ({ago:.0f} s ago)\n"
                f"  outcome          {'allowed' if s.allowed else 'denied'}\n"
                f"  identity         {printable(s.identity or '-')}\n"
                f"  fingerprint      {printable(s.fingerprint)}\n"
                f"  revoked          {_revoked_line(held.revoked)}\n"
                f"  token expires    {expires}"
                + (
                    ""
                    if s.chain is None
                    else f"\n  audit chain      seq {s.chain.seq}, last {s.chain.digest[:16]}…"
                )
            )
    if held.state is None:
        sys.exit(1)


def _revoked_line(revoked: dict[str, Any] | None) -> str:
    import time

    if revoked is None:
        return "-"
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(revoked["revokedAt"] / 1000))
    why = f", {revoked['reason']}" if revoked.get("reason") else ""
    return printable(f"{at} ({revoked['key']}{why}): validated anew at its next message")


@main.command()
@click.option("--session", nargs=3, metavar="ORG BOT SESSION_ID", help="revoke one session")
@click.option("--identity", nargs=2, metavar="ORG IDENTITY", help="every session of an identity")
@click.option("--reason", default="", help="why (kept in the record)")
@click.option("--lift", is_flag=True, help="lift the revocation instead (a tombstone)")
def revoke(
    session: tuple[str, str, str] | None,
    identity: tuple[str, str] | None,
    reason: str,
    lift: bool,
) -> None:
    """Stop a session (or every session of an identity) being allowed from cache: its next
    message is validated anew on every worker (a JWT issued before now is token_revoked)."""
    import time

    import orjson

    from worker.kafka import ensure_topics, publish

    if bool(session) == bool(identity):
        _fail("give one of --session ORG BOT SESSION_ID or --identity ORG IDENTITY")
    if session:
        org, bot_name, session_id = session
        key = f"{org}/{bot_name}/session/{session_id}"
    else:
        assert identity is not None
        key = f"{identity[0]}/identity/{identity[1]}"
    settings = _settings()
    now_ms = int(time.time() * 1000)
    value = None if lift else orjson.dumps({"revokedAt": now_ms, "reason": reason})

    async def run() -> None:
        await ensure_topics(settings)  # the compacted topic, if no worker made it yet
        await publish(settings, [(settings.topics.revocations, key, value)])

    _run_client(settings, run())
    click.echo(f"{'lifted' if lift else 'revoked'}: {printable(key)}")


@main.group()
def token() -> None:
    """JWT access tokens for `"Type": "jwt"` bots."""


@token.command("mint")
@click.option("--issuer", required=True, help="the copilot id (the bot's Issuer)")
@click.option("--identity", required=True, help="the user id (grants.identity)")
@click.option("--secret-ref", required=True, help="srn:vault::<org>:secret:<name> of the key")
@click.option("--ttl", default=86400, show_default=True, help="seconds until exp")
@click.option("--kid", default=None, help="key id, for bots with Keys")
def token_mint(issuer: str, identity: str, secret_ref: str, ttl: int, kid: str | None) -> None:
    """Print an HS256 token signed with the key behind --secret-ref."""
    import time

    from worker.errors import Misconfigured
    from worker.validators.jwt import mint, signing_key
    from worker.vault import ref_org

    try:
        key = signing_key(vault_of(_settings()), secret_ref, ref_org(secret_ref) or "")
    except Misconfigured as exc:
        _fail(str(exc))
    click.echo(mint(key, issuer, identity, ttl, time.time(), kid))


@main.command("demo-api")
@click.option("--port", default=8080, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: all)"
)
@click.option("--api-key", envvar="DEMO_API_KEY", default="demo-api-key", show_default=True)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    default=("valid-token-alice=alice", "valid-token-bob=bob"),
    show_default=True,
    help="TOKEN=IDENTITY accepted by the API",
)
@click.option("--latency", default=0.0, show_default=True, help="seconds before each answer")
def demo_api(port: int, host: str, api_key: str, tokens: tuple[str, ...], latency: float) -> None:
    """Serve the reference Authorization API (POST /VerifyToken)."""
    from aiohttp import web

    from worker.demo.authapi import AuthorizationAPI

    api = AuthorizationAPI(
        api_key=api_key,
        tokens=dict(t.split("=", 1) for t in tokens),
        default_delay_s=latency,
    )
    try:
        web.run_app(api.app(), host=host, port=port, access_log=None, print=None)
    except OSError as exc:
        _fail(f"demo-api cannot listen on {host}:{port}: {exc.strerror or exc}")


@main.command()
@click.option("--duration", type=float, default=None, help="stop after this many seconds")
@click.option("--rate", type=float, default=3.0, show_default=True, help="demo messages a second")
@click.option(
    "--view/--lines",
    default=None,
    help="live view or one line a decision  [default: view on a terminal]",
)
@click.option("--svg", type=click.Path(path_type=Path), help="save the view's last frame here")
def dev(duration: float | None, rate: float, view: bool | None, svg: Path | None) -> None:
    """Try it: embedded broker, demo Authorization API, worker and demo traffic; Ctrl-C stops."""
    from worker.demo.dev import run

    sys.exit(run(duration, rate, view, svg))
