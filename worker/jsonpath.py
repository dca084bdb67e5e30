"""Compiled JSONPath expressions (jsonpath-ng), with a direct path for plain `$.a.b` ones.

Credentials are read from every event, so the common dotted form skips the
general matcher; anything else (indexes, wildcards, filters) goes to jsonpath-ng.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse  # type: ignore[attr-defined]

_DOTTED = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_-]*)+")


class JsonPath:
    """One expression, parsed once. `ValueError` when it does not parse."""

    __slots__ = ("_expr", "_keys", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._keys: tuple[str, ...] | None = (
            tuple(text[2:].split(".")) if _DOTTED.fullmatch(text) else None
        )
        try:
            self._expr = parse(text)
        except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # noqa: BLE001
            # jsonpath-ng raises bare Exception for some syntax errors
            raise ValueError(f"{text!r} is not a valid JSONPath: {exc}") from None

    def get(self, doc: Any) -> Any:
        """The first value the path selects in `doc`, or None."""
        if self._keys is not None:
            for key in self._keys:
                if not isinstance(doc, dict):
                    return None
                doc = doc.get(key)
            return doc
        matches = self._expr.find(doc)
        return matches[0].value if matches else None

    def set(self, doc: dict[str, Any], value: Any) -> None:
        """Put `value` at the path in `doc`, creating what is missing (mutates `doc`)."""
        if self._keys is not None:
            for key in self._keys[:-1]:
                nxt = doc.get(key)
                if not isinstance(nxt, dict):
                    nxt = doc[key] = {}
                doc = nxt
            doc[self._keys[-1]] = value
            return
        self._expr.update_or_create(doc, value)

    def replace(self, doc: Any, fn: Callable[[Any], Any]) -> None:
        """Replace every value the path selects by `fn(value)`, in place."""
        if self._keys is not None:
            for key in self._keys[:-1]:
                if not isinstance(doc, dict):
                    return
                doc = doc.get(key)
            if isinstance(doc, dict) and self._keys[-1] in doc:
                doc[self._keys[-1]] = fn(doc[self._keys[-1]])
            return
        self._expr.update(doc, lambda old, _data, _field: fn(old))

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"
