"""`secure-session dev`: embedded broker, demo Authorization API, a worker and demo traffic.

Prints every decision as it happens. Ctrl-C (or --duration) stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.demo.authapi import AuthorizationAPI, RunningAPI
from worker.demo.broker import EmbeddedBroker

API_KEY = "demo-api-key"
USERS = {"conv-alice": "valid-token-alice", "conv-bob": "valid-token-bob"}
COLOR = {"allowed": "\033[32m", "blocked": "\033[31m", "audit": "\033[2m"}
RESET = "\033[0m"


def demo_config(api_url: str) -> dict[str, object]:
    return {
        "bots": [
            {
                "Name": "securebot",
                "Organization": "acme",
                "Id": "sbIuyRQdU",
                "SecureSession": True,
                "SecureSessionConfig": {
                    "Type": "baas",
                    "ValidationInterval": 10,
                    "ApiAlias": "SecureSessionBaaS",
                    "FailureMode": "closed",
                    "ErrorMessage": "Please sign in again.",
                },
            },
            {"Name": "faqbot", "Organization": "acme", "SecureSession": False},
        ],
        "connectors": [
            {
                "Type": "api-connector",
                "Alias": "SecureSessionBaaS",
                "Organization": "acme",
                "Method": "POST",
                "Endpoint": api_url,
                "Headers": {"Authorization": "srn:vault::acme:secret:my-authorization-api-key"},
                "RequestMapping": {
                    "tokenToVerify": {
                        "type": "requestBody",
                        "requestBodyPath": "$.token",
                        "inputPath": "$.secureTokenForUser",
                    }
                },
                "ResponseMapping": {},
                "Body": {},
            }
        ],
    }


def demo_event(n: int) -> tuple[bytes | None, bytes]:
    """The n-th demo record: mostly signed-in users, some intruders and broken records."""
    rnd = random.Random(n)
    pick = rnd.random()
    base = {
        "id": f"m-{n}",
        "organization": "acme",
        "bot": "securebot",
        "type": "message",
        "timestamp": int(time.time() * 1000),
        "payload": {"text": f"hello #{n}"},
    }
    if pick < 0.55:
        session, token = rnd.choice(list(USERS.items()))
        ev = {**base, "sessionId": session, "context": {"secureTokenForUser": token}}
    elif pick < 0.70:
        ev = {**base, "sessionId": "conv-mallory", "context": {"secureTokenForUser": "stolen"}}
    elif pick < 0.78:
        ev = {**base, "sessionId": "conv-guest", "context": {}}
    elif pick < 0.88:
        ev = {**base, "bot": "faqbot", "sessionId": "conv-faq"}
    elif pick < 0.94:
        ev = {**base, "bot": "ghostbot", "sessionId": "conv-ghost"}
    else:
        return b"conv-broken", b'{"id": "m-broken", "organization": '
    return str(ev["sessionId"]).encode(), orjson.dumps(ev)


def line(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> str:
    session = key.decode(errors="replace") if key else "-"
    if topic == "allowed":
        doc = orjson.loads(value)
        reason = headers.get("secure-session-reason", b"").decode()
        what = f"{doc.get('bot')}  {doc.get('id')}"
        return f"{COLOR['allowed']}ALLOWED {reason:<26}{RESET} {session:<14} {what}"
    doc = orjson.loads(value)
    return (
        f"{COLOR['blocked']}BLOCKED {doc['reason']:<26}{RESET} {session:<14} "
        f"{doc.get('bot')}  {doc.get('messageId')}  ({doc['detail']})"
    )


async def run_async(duration: float | None, rate: float) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="secure-session-dev-"))
    (tmp / "secrets" / "acme").mkdir(parents=True)
    (tmp / "secrets" / "acme" / "my-authorization-api-key").write_text(API_KEY + "\n")
    api = AuthorizationAPI(
        API_KEY,
        tokens={"valid-token-alice": "alice", "valid-token-bob": "bob"},
        default_delay_s=0.1,
    )
    server = await RunningAPI(api).start()
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config(server.url), sort_keys=False))
    print(f"demo Authorization API on {server.url}; config in {config}")
    broker = EmbeddedBroker().start()
    print(f"embedded broker (tansu) on {broker.bootstrap}")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SECURE_SESSION_CONFIG": str(config),
        "SECURE_SESSION_SECRETS_DIR": str(tmp / "secrets"),
        "SECURE_SESSION_DATA_DIR": str(tmp / "data"),
        "SECURE_SESSION_WEB_ENABLED": "0",
        "SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS": "1",
        "SECURE_SESSION_LOG_LEVEL": "warning",
        "KAFKA_SESSION_TIMEOUT_S": "2",
        "KAFKA_HEARTBEAT_INTERVAL_S": "0.3",
        "KAFKA_REBALANCE_TIMEOUT_S": "2",
        "KAFKA_PRODUCER_MAX_BATCH_SIZE": "16",
    }
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(  # noqa: S603, ASYNC220 - started once, not awaited
        [sys.executable, "-m", "worker", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    print(f"worker pid {worker.pid}, log in {tmp / 'worker.log'}; Ctrl-C stops everything\n")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    consumer = AIOKafkaConsumer(
        "bot.messages.allowed",
        "bot.messages.blocked",
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    shown = 0
    try:
        await producer.start()
        await consumer.start()
        stop_at = None if duration is None else time.monotonic() + duration

        async def produce() -> None:
            for n in itertools.count():
                key, value = demo_event(n)
                await producer.send_and_wait("bot.messages.inbound", value, key=key)
                await asyncio.sleep(1 / rate)

        sender = asyncio.create_task(produce())
        try:
            while stop_at is None or time.monotonic() < stop_at:
                if worker.poll() is not None:
                    print(f"worker exited with {worker.returncode}; see {tmp / 'worker.log'}")
                    return 1
                batch = await consumer.getmany(timeout_ms=200)
                for tp, messages in batch.items():
                    topic = tp.topic.rsplit(".", 1)[-1]
                    for m in messages:
                        print(line(topic, m.key, m.value, dict(m.headers)), flush=True)
                        shown += 1
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        print(f"\n{shown} decisions shown; Authorization API calls: {sum(api.calls.values())}")
        return 0
    finally:
        await consumer.stop()
        await producer.stop()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        log.close()
        broker.stop()
        await server.stop()


def run(duration: float | None = None, rate: float = 3.0) -> int:
    try:
        return asyncio.run(run_async(duration, rate))
    except KeyboardInterrupt:
        print("\nstopped")
        return 130
