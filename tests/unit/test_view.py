"""The dev view: what it counts from the output and audit topics, and what it shows."""

from __future__ import annotations

import io

import orjson
from aiokafka import ConsumerRecord
from rich.console import Console

from worker.demo.traffic import line
from worker.demo.view import DevView


def record(value: dict[str, object], headers: list[tuple[str, bytes]], at: int) -> ConsumerRecord:
    raw = orjson.dumps(value)
    return ConsumerRecord("t", 0, 0, at, 0, b"k", raw, None, 1, len(raw), headers)


def screen(view: DevView) -> str:
    console = Console(width=120, file=io.StringIO(), record=True)
    console.print(view.render())
    return console.export_text()


def test_counts_reasons_latency_and_keeps_the_last_blocked() -> None:
    clock = iter(range(100, 1000, 5))
    view = DevView(calls=lambda: 7, clock=lambda: float(next(clock)))
    allowed = [("secure-session-reason", b"cached"), ("secure-session-decision", b"allowed")]
    for i in range(3):
        view.feed("allowed", record({"id": f"m{i}", "timestamp": 1_000}, allowed, 1_000 + 10 * i))
    for i in range(10):
        blocked = {"reason": "denied", "detail": f"no {i}", "sessionId": f"s{i}",
                   "event": {"timestamp": 2_000}}  # fmt: skip
        view.feed("blocked", record(blocked, [], 2_050))
    view.feed("audit", record({"kind": "validation", "validation": {"latencyMs": 12.5}}, [], 0))
    view.feed("audit", record({"kind": "blocked", "validation": None}, [], 0))

    assert view.reasons == {("allowed", "cached"): 3, ("blocked", "denied"): 10}
    assert sorted(view.latency_ms) == [0, 10, 20] + [50] * 10
    assert view.validations == 1
    text = screen(view)
    assert "ALLOWED" in text and "cached" in text and "23%" in text
    assert "BLOCKED" in text and "77%" in text
    assert "Authorization API calls 7" in text
    # the eight newest blocked messages, newest first
    assert "no 9" in text and "no 2" in text and "no 1" not in text
    assert text.index("no 9") < text.index("no 2")


def test_an_empty_view_renders() -> None:
    assert "messages decided" in screen(DevView(calls=lambda: 0))


def test_decision_lines_show_a_dash_for_what_an_unparsed_event_lacks() -> None:
    blocked = {"reason": "invalid_event", "detail": "value is not valid JSON", "bot": None}
    shown = line("blocked", b"conv-broken", orjson.dumps(blocked), {})
    assert "invalid_event" in shown
    assert shown.endswith("conv-broken    -  -  (value is not valid JSON)")
    allowed = line(
        "allowed",
        b"s-1",
        orjson.dumps({"id": "m-1", "bot": "securebot"}),
        {"secure-session-reason": b"cached"},
    )
    assert allowed.endswith("s-1            securebot  m-1")


def test_what_events_carry_never_reaches_the_terminal_raw() -> None:
    """Issue 17: escape sequences (window title, screen clear) went out raw, and rich
    markup in event text was rendered (a bot named "[/]" froze the live view)."""
    hostile = "[/][bold red]x[/] \x1b]0;pwned\x07\x1b[2J"
    view = DevView(calls=lambda: 0)
    blocked = {"reason": "denied", "detail": hostile, "sessionId": hostile, "bot": "[/]"}
    view.feed("blocked", record(blocked, [], 0))
    view.feed("allowed", record({"id": "m"}, [("secure-session-reason", hostile.encode())], 0))
    text = screen(view)  # rendered, not frozen or raised
    assert "\x1b" not in text and "[bold red]" in text
    shown = line("blocked", hostile.encode(), orjson.dumps(blocked), {})
    assert "\x1b]0" not in shown and "\x07" not in shown and "\\x1b]0;pwned\\x07" in shown


def test_audit_lines_are_escaped() -> None:
    from worker.tools import audit_line

    doc = {"time": 0, "kind": "validation", "sessionId": "s\n2026 fake line", "identity": "\x1b[2J"}
    out = audit_line(doc)
    assert "\n" not in out and "\x1b" not in out
