"""The README is a front page over docs/: every page it links exists, and every link inside docs/ lands.

A moved section leaves links behind; this is what catches them. Anchors follow GitHub's rule: the heading
lower-cased, punctuation other than hyphens and spaces dropped, spaces turned into hyphens.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _prose(path: Path) -> str:
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    slugs: set[str] = set()
    for line in _prose(path).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower())
            slugs.add(text.replace(" ", "-"))
    return slugs


def local_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(path)) if not re.match(r"^[a-z]+:", target)]


def _broken(path: Path) -> list[str]:
    broken = []
    for target in local_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading gives #{anchor}")
    return broken


def test_the_slug_rule_matches_githubs():
    page = DOCS / "fidelity.md"
    assert "statistics-seeds-paired-differences" in anchors(page)
    assert "the-noise-control-methodnoise" in anchors(page)


def test_every_docs_page_the_readme_links_exists():
    readme = ROOT / "README.md"
    pages = [target for target in local_links(readme) if target.startswith("docs/")]
    assert len(pages) >= 8, pages
    assert _broken(readme) == []


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_link_and_anchor_inside_docs_resolves(page):
    assert _broken(page) == []


def test_the_readme_stays_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move reference material to docs/"
    first_screen = "\n".join(lines[:40])
    assert "make quickstart" in first_screen and "make test" in first_screen
