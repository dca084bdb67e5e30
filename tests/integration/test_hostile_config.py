"""Configuration is input too (issue 17): generated config-topic records through a live
worker's follower. None may stop the worker; the valid bot keeps being decided."""

from __future__ import annotations

import os
import random
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event, reason

pytestmark = pytest.mark.integration

RECORDS = int(os.environ.get("CONFIG_FUZZ_RECORDS", 10_000))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 6 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**63 - 1, 1e308, 3.5])
    if kind == 2:
        return rng.choice(
            ["", "srn:vault::acme:secret:key", "srn:vault::evil:secret:x", "\n\x1b[2J"]
        )
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(20)))
    if kind == 4:
        return "x" * rng.choice([1, 1000, 70_000])
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


FIELDS = [
    "Name", "Organization", "SecureSession", "SecureSessionConfig", "Type", "ValidationInterval",
    "ApiAlias", "FailureMode", "SecretRef", "Keys", "Alias", "Method", "Endpoint", "Headers",
    "Body", "RequestMapping", "Auth", "ClientSecret", "inputPath", "type", "x",
]  # fmt: skip


def records(rng: random.Random, valid_bot: dict[str, Any], valid_con: dict[str, Any]) -> Any:
    for n in range(RECORDS):
        shape = n % 6
        if shape == 0:  # a valid record, one field replaced
            base = dict(rng.choice([valid_bot, valid_con]))
            base[rng.choice(FIELDS)] = _value(rng)
            value: bytes | None = orjson.dumps(base)
        elif shape == 1:
            value = orjson.dumps(_value(rng))
        elif shape == 2:  # deep nesting
            d = rng.randrange(10, 6000)
            value = b"[" * d + b"]" * d
        elif shape == 3:
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        elif shape == 4:
            value = None  # a tombstone
        else:
            value = orjson.dumps({**valid_bot, "SecureSessionConfig": _value(rng)})
        key = rng.choice([b"fuzz/b", b"acme/other", b"no-slash", b"\xff\xfe/x", None])
        if key is None and value is None:
            key = b"fuzz/gone"
        yield rng.choice(["bots", "connectors"]), key, value


def test_generated_config_records_never_stop_a_worker(harness: Harness) -> None:
    h = harness
    good_bot, good_con = bot("secure"), connector("main", h.server.url)
    worker = h.start_worker(h.write_config([good_bot], [good_con]))
    h.api.tokens["tok-live"] = "liv"

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=h.broker.bootstrap, linger_ms=5)
        await producer.start()
        try:
            for topic, key, value in records(random.Random(17), good_bot, good_con):
                await producer.send(h.topics[topic], value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    h.run(publish(), timeout=300)
    h.send(event("s-live", "m0", "tok-live"))
    assert [reason(o) for o in h.wait_decisions("s-live", 1, timeout=60)] == ["validated"]
    assert worker.poll() is None  # alive
    log = h.logs[-1].read_text(errors="replace")
    assert "Traceback" not in log
    assert "skipped bot config record" in log and "skipped connector config record" in log
    assert max(len(line) for line in log.splitlines()) < 5_000  # no record echoed whole
