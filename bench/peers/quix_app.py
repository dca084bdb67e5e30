"""Quix Streams as a peer (its own process): `python -m bench.peers.quix_app ARGS`.

Reads a backlog of inbound events from `--input`, and per record either (stateless)
decodes it and writes it to `--output`, or (stateful) also keeps per-session state (a
RocksDB store with its changelog topic: Quix's default) and writes the record with it.
Its output records are stamped with the time they are written (the bench times every
pipeline by its outputs' timestamps). It stops after `--count` records and prints one JSON
line: `{"count", "seconds"}`, the time from its first record to its last. On tansu it
needs `retention.ms` set explicitly on its input topic (Quix copies it to its changelog
topic, and tansu reports only configs set at creation) and short consumer session
timeouts to join quickly.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from quixstreams import Application


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--stateful", action="store_true")
    p.add_argument("--state-dir", default="/tmp/quix-state")
    p.add_argument("--group", required=True)
    a = p.parse_args()
    app = Application(
        broker_address=a.bootstrap,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        state_dir=a.state_dir,
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 300},
        loglevel="WARNING",
    )
    source = app.topic(a.input, value_deserializer="json")
    sink = app.topic(a.output, value_serializer="json")
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def count(value: Any) -> Any:
        now = time.monotonic()
        if not seen["n"]:
            seen["first"] = now
        seen["n"] += 1
        seen["last"] = now
        if seen["n"] >= a.count:
            app.stop()
        return value

    def remember(value: dict[str, Any], state: Any) -> dict[str, Any]:  # a quixstreams State
        n = state.get("n", 0) + 1
        state.set("n", n)
        return {**value, "seen": n}

    sdf = app.dataframe(source)
    if a.stateful:
        sdf = sdf.apply(remember, stateful=True)
    sdf = sdf.apply(count)
    # Quix gives an output record its input's timestamp; the bench times every pipeline by
    # when its outputs were written, so stamp them with that, as the worker's are
    sdf = sdf.set_timestamp(lambda _value, _key, _ts, _headers: int(time.time() * 1000))
    sdf.to_topic(sink)
    app.run()
    print(json.dumps({"count": seen["n"], "seconds": seen["last"] - seen["first"]}), flush=True)


if __name__ == "__main__":
    main()
