"""Text that came from outside (events, identities, config keys and values, API answers),
made safe for a terminal and for one log line: control characters, line breaks and the
Unicode characters that reorder or break lines are shown escaped, never emitted."""

from __future__ import annotations

_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_ESCAPES |= {
    c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def printable(text: str, limit: int | None = None) -> str:
    """`text` with its control characters escaped; cut to `limit` characters, saying so."""
    out = text.translate(_ESCAPES)
    if limit is not None and len(out) > limit:
        return f"{out[:limit]}… ({len(text):,} characters)"
    return out
