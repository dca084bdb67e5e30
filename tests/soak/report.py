"""The soak tests write their figures into the README's RELIABILITY section (`make soak`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def write_block(name: str, lines: list[str]) -> None:
    """Replace the README block between `<!-- reliability:NAME:start` and its end marker
    (only when SECURE_SESSION_UPDATE_README=1, as `make soak` sets)."""
    if os.environ.get("SECURE_SESSION_UPDATE_README") != "1":
        return
    start = f"<!-- reliability:{name}:start (written by tests/soak; `make soak`) -->"
    end = f"<!-- reliability:{name}:end -->"
    pattern = re.escape(f"<!-- reliability:{name}:start") + r".*?" + re.escape(end)
    text = README.read_text()
    if not re.search(pattern, text, flags=re.S):
        raise AssertionError(f"README.md has no reliability:{name} block")
    README.write_text(re.sub(pattern, lambda _: "\n".join([start, *lines, end]), text, flags=re.S))
