"""Fuzzing at scale (Hypothesis): tens of thousands of generated inbound records through
the whole pipeline, and generated configuration files through the loader.

Every record ends in exactly one decision (blocked ones with a known reason) and is acked
exactly once; every file loads or is refused with a ConfigError naming the file. Nothing
else may escape. FUZZ_EXAMPLES scales it (default 300 in `make test`: batches of up to 60
records, about 10,000 records in all, and 900 files; `make soak` runs 3,000, ten times as
many), and the tests' timeout with it. atheris was not used: it needs a clang/libFuzzer
build here.
"""

from __future__ import annotations

import asyncio
import copy
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_pipeline import BOT, CON, build
from worker.config import load_file
from worker.errors import ConfigError
from worker.events import Reason
from worker.pipeline import Pipeline
from worker.settings import Topics

SCALE = int(os.environ.get("FUZZ_EXAMPLES", 300))  # make soak: 3,000
REASONS = set(typing.get_args(Reason))
TOPICS = Topics()
FUZZ = settings(max_examples=SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + SCALE // 3)  # 3,000 examples took over 120 s here

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
GOOD = {"id": "m", "organization": "acme", "bot": "b", "sessionId": "s", "context": {"t": "ok"}}


@st.composite
def inbound(draw: st.DrawFn) -> tuple[bytes | None, bytes | None]:
    """A record as a bot channel (or a broken one, or an attacker) might write it."""
    kind = draw(st.sampled_from(["mutated", "bytes", "json", "deep", "none"]))
    key = draw(st.none() | st.binary(max_size=12) | st.sampled_from([b"s", b"s1", b"\xff\xfe"]))
    if kind == "bytes":
        return key, draw(st.binary(max_size=300))
    if kind == "json":
        return key, orjson.dumps(draw(json_values), option=orjson.OPT_NON_STR_KEYS)
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        return (
            key,
            b'{"id":"d","organization":"acme","bot":"b","sessionId":"s","x":'
            + b"[" * depth
            + b"]" * depth
            + b"}",
        )
    if kind == "none":
        return key, None
    doc: dict[str, Any] = copy.deepcopy(GOOD)
    doc["id"] = draw(st.text(max_size=6) | st.sampled_from(["m1", "m2"]))
    doc["sessionId"] = draw(st.sampled_from(["s1", "s2", "s3"]) | st.text(max_size=4))
    doc["bot"] = draw(st.sampled_from(["b", "open", "nobody", ""]))
    doc["context"] = {"t": draw(st.sampled_from(["ok-1", "ok-2", "bad", ""]) | json_values)}
    for field in draw(
        st.lists(st.sampled_from([*GOOD, "type", "timestamp", "payload"]), max_size=3)
    ):
        if draw(st.booleans()):
            doc.pop(field, None)
        else:
            doc[field] = draw(json_values | st.sampled_from(["message", "session_end"]))
    raw = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    if draw(st.booleans()):  # a flipped byte or a cut
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(min_size=0, max_size=2)) + raw[at + 1 :]
    return key, raw


def pipeline(outputs: list[tuple[str, bytes]], acks: list[int]) -> Pipeline:
    async def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.headers.get("X-T", "").startswith("ok") else 403)

    def send(
        topic: str, key: bytes | None, value: bytes, headers: Any = None, since: Any = None
    ) -> None:
        outputs.append((topic, value))

    plain = {"Name": "open", "Organization": "acme", "SecureSession": False}
    return build(
        api, send, max_held=1000, more_bots=(plain,), ack=lambda _p, offset: acks.append(offset)
    )


@FUZZ
@given(st.lists(inbound(), min_size=20, max_size=60))
def test_every_generated_record_gets_exactly_one_decision(
    records: list[tuple[bytes | None, bytes | None]],
) -> None:
    outputs: list[tuple[str, bytes]] = []
    acks: list[int] = []

    async def run() -> None:
        p = pipeline(outputs, acks)
        for n, (key, value) in enumerate(records):
            await p.submit(key, value, 0, n)
        await p.drain_all()

    asyncio.run(run())
    COUNT[0] += len(records)
    assert acks == list(range(len(records)))  # each acked once, in offset order
    decisions = [(t, v) for t, v in outputs if t in (TOPICS.allowed, TOPICS.blocked)]
    ended = sum(1 for _, v in records if v and b"session_end" in v)
    assert len(records) - ended <= len(decisions) <= len(records)
    for topic, value in decisions:
        if topic == TOPICS.blocked:
            assert orjson.loads(value)["reason"] in REASONS
        else:
            assert value in [v for _, v in records]  # forwarded unchanged
    for topic, value in outputs:
        if topic == TOPICS.audit:
            assert orjson.loads(value)["kind"] in ("validation", "blocked", "session_ended")


COUNT = [0]  # records generated in this run (printed by FUZZ_REPORT=1)
CONFIG_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))


@st.composite
def config_text(draw: st.DrawFn) -> str:
    doc: dict[str, Any] = {"bots": [copy.deepcopy(BOT)], "connectors": [copy.deepcopy(CON)]}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from(["bots", "connectors"]))
        target = doc[section][0]
        if draw(st.booleans()) and isinstance(target.get("SecureSessionConfig"), dict):
            target = target["SecureSessionConfig"]
        field = draw(st.sampled_from([*target, "Extra"]))
        if draw(st.integers(0, 3)) == 0:
            target.pop(field, None)
        else:
            target[field] = draw(json_values)
    text = yaml.safe_dump(doc) if draw(st.booleans()) else orjson.dumps(doc).decode()
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.text(max_size=3)) + text[at + 1 :]
    return text


@settings(FUZZ, max_examples=SCALE * 3)
@given(config_text())
def test_every_generated_config_file_loads_or_is_refused_naming_the_file(text: str) -> None:
    path = CONFIG_DIR / "bots.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_file(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)) and exc.why


def teardown_module() -> None:
    if os.environ.get("FUZZ_REPORT"):
        print(f"\nfuzz: {COUNT[0]:,} records through the pipeline")
