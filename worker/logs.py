"""Log lines: readable text or one JSON object a line, with the record they are about.

Log calls about one message pass its coordinates as `extra` (see `FIELDS`); both formats
show them. `config(level, fmt)` is the one logging setup, used before Faust starts and
handed to Faust's worker so that its own lines come out the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from worker.text import printable

FIELDS = ("organization", "bot", "session", "messageId", "partition", "offset", "connector")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {f: v for f in FIELDS if (v := record.__dict__.get(f)) is not None}


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", <FIELDS present>, "exception"?}`."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class _Escaped:
    """A log argument shown with its control characters escaped (`%s` and `%r` alike)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return printable(str(self.value))

    def __repr__(self) -> str:
        return printable(repr(self.value))


def _escaped_args(args: Any) -> Any:
    if isinstance(args, tuple):
        return tuple(a if isinstance(a, (int, float)) else _Escaped(a) for a in args)
    return args  # a mapping (`%(name)s`): Faust's and aiokafka's own lines only


class TextFormatter(logging.Formatter):
    """`[time] [LEVEL] message  field=value …`. The arguments of a line and its fields,
    which may hold what a user or a tenant sent (a session id, an identity, a config
    key), have their control characters escaped: a line break in them cannot start a
    forged line. The message templates, the worker's and its libraries' own (Faust's
    tables span lines), are kept as they are."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] [%(levelname)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            record = logging.makeLogRecord({**record.__dict__, "args": _escaped_args(record.args)})
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        fields = _fields(record)
        if not fields:
            return line
        return line + "  " + " ".join(f"{k}={printable(str(v))}" for k, v in fields.items())


class Throttle(logging.Filter):
    """aiokafka logs every failed attempt while a broker is away (~100 lines a second): each
    kind of its warning/error lines passes once per `every_s`, with a count of those held."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._every_s = every_s
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # kind: (passed at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith("aiokafka"):
            return True
        kind = (record.name, str(record.msg))  # the template: one kind whatever the node
        now = self._clock()
        passed = self._seen.get(kind)
        if passed is not None and now - passed[0] < self._every_s:
            self._seen[kind] = (passed[0], passed[1] + 1)
            return False
        self._seen[kind] = (now, 0)
        if passed is not None and passed[1]:
            record.msg = f"{record.msg} [{passed[1]} more like this held back]"
        return True


def config(level: str, fmt: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the worker (stdout, `fmt`: text | json)."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{__name__}.{formatter.__name__}"}},
        "filters": {"throttle": {"()": f"{__name__}.Throttle"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["throttle"],
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
        # httpx logs every request's URL at INFO, query string included (a RequestMapping
        # may put a credential there); httpcore traces at DEBUG: warnings only, whatever
        # the level (calls are logged by the worker itself, redacted)
        "loggers": {name: {"level": "WARNING"} for name in ("httpx", "httpcore")},
    }
