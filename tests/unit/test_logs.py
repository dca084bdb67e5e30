"""Log lines: JSON and text formats with record coordinates; aiokafka's retry noise held back."""

from __future__ import annotations

import json
import logging

from worker.logs import JsonFormatter, TextFormatter, Throttle


def record(name: str, level: int, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    r.__dict__.update(extra)
    return r


def test_json_lines_carry_the_coordinates_given() -> None:
    line = JsonFormatter().format(
        record("worker.pipeline", logging.WARNING, "identity changed: %s", "x", bot="b", offset=7)
    )
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "worker.pipeline"
    assert doc["message"] == "identity changed: x"
    assert (doc["bot"], doc["offset"]) == ("b", 7)
    assert "session" not in doc and doc["time"].endswith("Z")


def test_text_lines_append_the_coordinates() -> None:
    text = TextFormatter().format(record("w", logging.INFO, "circuit open", connector="acme/api"))
    assert text.endswith("[INFO] circuit open  connector=acme/api")
    assert TextFormatter().format(record("w", logging.INFO, "plain")).endswith("[INFO] plain")


def test_aiokafka_retry_errors_pass_once_per_period_with_a_count() -> None:
    now = [0.0]
    throttle = Throttle(every_s=10, clock=lambda: now[0])
    msg = "Unable connect to node with id %s: %s"

    def passes(name: str = "aiokafka.client", level: int = logging.ERROR) -> bool:
        return throttle.filter(record(name, level, msg, 1, "refused"))

    assert passes()
    assert [passes() for _ in range(50)] == [False] * 50  # ~100 a second while the broker is away
    assert passes(name="worker.app")  # only aiokafka's lines are throttled
    assert passes(level=logging.INFO)
    now[0] = 10.5
    r = record("aiokafka.client", logging.ERROR, msg, 1, "refused")
    assert throttle.filter(r)
    assert (
        r.getMessage() == "Unable connect to node with id 1: refused [50 more like this held back]"
    )


def test_http_client_request_lines_never_show_even_at_debug() -> None:
    import logging.config

    from worker.logs import config

    before = {n: logging.getLogger(n).level for n in ("", "httpx", "httpcore")}
    try:
        logging.config.dictConfig(config("debug", "text"))
        # httpx's INFO line holds the URL with its query string: it may hold a credential
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("httpcore").isEnabledFor(logging.INFO)
        assert logging.getLogger("worker").isEnabledFor(logging.DEBUG)
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def test_text_lines_cannot_be_forged_by_what_users_send() -> None:
    """Issue 17: a line break in a session id, an identity or a config key started a fake
    line in the text format; terminal escapes went out raw."""
    forged = "s1\n[2026-12-02 10:00:00,000] [INFO] admin logged in\x1b]0;pwned\x07"
    rec = record(
        "w", logging.INFO, "identity changed in session: %s -> %r", forged, forged, session=forged
    )
    line = TextFormatter().format(rec)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert "s1\\n[2026" in line and "\\x1b]0;pwned\\x07" in line
    template = record("w", logging.INFO, "Highwater:\n%s", "ok")  # a library's layout stays
    assert TextFormatter().format(template).endswith("[INFO] Highwater:\nok")
