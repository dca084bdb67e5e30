"""The soak tests write their figures into docs/reliability.md (`make soak`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

PAGE = Path(__file__).parents[2] / "docs" / "reliability.md"


def write_block(name: str, lines: list[str]) -> None:
    """Replace the block of docs/reliability.md between `<!-- reliability:NAME:start` and
    its end marker (only when SECURE_SESSION_UPDATE_DOCS=1, as `make soak` sets)."""
    if os.environ.get("SECURE_SESSION_UPDATE_DOCS") != "1":
        return
    start = f"<!-- reliability:{name}:start (written by tests/soak; `make soak`) -->"
    end = f"<!-- reliability:{name}:end -->"
    pattern = re.escape(f"<!-- reliability:{name}:start") + r".*?" + re.escape(end)
    text = PAGE.read_text()
    if not re.search(pattern, text, flags=re.S):
        raise AssertionError(f"docs/reliability.md has no reliability:{name} block")
    PAGE.write_text(re.sub(pattern, lambda _: "\n".join([start, *lines, end]), text, flags=re.S))
