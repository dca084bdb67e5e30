"""The documentation stands alone: the README is a front door, every link resolves inside
the repository, and nothing points outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first_screen = "\n".join(text.splitlines()[:30])
    assert "make run" in first_screen and "make test" in first_screen


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: {target} points outside the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"
    assert "../shared" not in page.read_text() and "CONTRACT.md" not in page.read_text()


OUTSIDE = ("../shared", "CONTRACT.md", "DESIGN.md", "BROKER.md", "STYLE.md")
"""Notes the project was built from, which users never see: nothing may cite them."""


def test_no_source_cites_notes_outside_the_repository() -> None:
    sources = [
        p
        for folder in ("worker", "bench", "tests")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p != Path(__file__)
    ]
    cited = [(p.name, name) for p in sources for name in OUTSIDE if name in p.read_text()]
    assert not cited, f"cite docs/ instead: {cited}"
