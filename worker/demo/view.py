"""The live terminal view of `secure-session dev` (rich): decisions, calls, latency, blocks.

Fed from the output topics (`decision`) and the audit topic (`audit`); `render()` builds
one frame. Lines mode (no terminal, or `--lines`) prints each decision instead.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from worker.text import printable

ALLOWED = "green"
BLOCKED = "red"


class DevView:
    def __init__(self, calls: Callable[[], int], clock: Callable[[], float] = time.time) -> None:
        self._calls = calls
        self._clock = clock
        self._started: float | None = None  # the first decision
        self.reasons: collections.Counter[tuple[str, str]] = collections.Counter()
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self.validation_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self.validations = 0
        self.last_blocked: collections.deque[tuple[str, str, str, str]] = collections.deque(
            maxlen=8
        )

    def decision(
        self, kind: str, value: bytes, headers: dict[str, bytes], timestamp_ms: int
    ) -> None:
        """An allowed record (its headers) or a blocked record (its JSON)."""
        if self._started is None:
            self._started = self._clock()
        if kind == "allowed":
            reason = headers.get("secure-session-reason", b"?").decode()
            self.reasons[("allowed", reason)] += 1
            sent = _field(value, "timestamp")
        else:
            doc = orjson.loads(value)
            self.reasons[("blocked", doc["reason"])] += 1
            at = time.strftime("%H:%M:%S", time.localtime(timestamp_ms / 1000))
            self.last_blocked.append((at, doc["reason"], str(doc.get("sessionId")), doc["detail"]))
            event = doc.get("event")
            sent = event.get("timestamp") if isinstance(event, dict) else None
        if isinstance(sent, int) and sent > 0:
            self.latency_ms.append(max(0, timestamp_ms - sent))

    def feed(self, kind: str, record: ConsumerRecord[bytes, bytes]) -> None:
        """`show` for demo traffic: an output record of `kind` (allowed, blocked, audit)."""
        if kind == "audit":
            self.audit(orjson.loads(record.value or b"{}"))
        else:
            self.decision(kind, record.value or b"", dict(record.headers), record.timestamp)

    def audit(self, doc: dict[str, Any]) -> None:
        v = doc.get("validation")
        if doc.get("kind") == "validation" and v:
            self.validations += 1
            self.validation_ms.append(float(v.get("latencyMs", 0)))

    def render(self) -> Group:
        elapsed = max(self._clock() - (self._started or self._clock()), 1.0)
        total = sum(self.reasons.values())
        decisions = Table(title="Decisions by reason", title_justify="left", min_width=60)
        decisions.add_column("decision")
        decisions.add_column("reason")
        decisions.add_column("messages", justify="right")
        decisions.add_column("share", justify="right")
        for (kind, reason), n in sorted(self.reasons.items(), key=lambda kv: (kv[0][0], -kv[1])):
            style = ALLOWED if kind == "allowed" else BLOCKED
            # what events carry is never rich markup: Text, escaped (a bot named "[/]" froze it)
            decisions.add_row(
                Text(kind.upper(), style=style), Text(printable(reason)), str(n), f"{n / total:.0%}"
            )
        numbers = Table.grid(padding=(0, 2))
        numbers.add_row("messages decided", f"{total} ({total / elapsed:.1f}/s)")
        numbers.add_row(
            "validations (audit)", f"{self.validations}, Authorization API calls {self._calls()}"
        )
        numbers.add_row("validation latency p50", _ms(self.validation_ms, 50))
        latency = f"{_ms(self.latency_ms, 50)} / {_ms(self.latency_ms, 99)}"
        numbers.add_row("decision latency p50 / p99", f"{latency}  (event time → decision)")
        blocked = Table(title="Last blocked messages", title_justify="left", expand=True)
        for column in ("time", "reason", "session", "detail"):
            blocked.add_column(column)
        for row in reversed(self.last_blocked):
            blocked.add_row(
                row[0],
                Text(printable(row[1]), style=BLOCKED),
                Text(printable(row[2])),
                Text(printable(row[3])),
            )
        return Group(
            Panel(numbers, title="secure-session dev", subtitle="Ctrl-C stops everything"),
            decisions,
            blocked,
        )


def _field(raw: bytes | str, name: str) -> Any:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc.get(name) if isinstance(doc, dict) else None


def _ms(values: collections.deque[float], pct: int) -> str:
    if len(values) < 2:
        return "-"
    return f"{statistics.quantiles(values, n=100)[pct - 1]:.0f} ms"
