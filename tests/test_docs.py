"""The front door stays small and every link in README.md and docs/ leads somewhere."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _outside_code(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines outside fenced code blocks."""
    fence = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            yield number, line


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings (a repeated heading gets ``-1``, ``-2``, …)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _outside_code(path):
        if heading := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(pages: list[Path], root: Path = ROOT) -> list[str]:
    broken = []
    for page in pages:
        for number, line in _outside_code(page):
            for target in LINK.findall(re.sub(r"`[^`]*`", "``", line)):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                file_part, _, fragment = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                if not dest.exists():
                    broken.append(f"{page.relative_to(root)}:{number}: {target} (no such file)")
                elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                    broken.append(f"{page.relative_to(root)}:{number}: {target} (no such heading)")
    return broken


def test_the_readme_is_at_most_12_kb() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 12_000


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    assert broken_links(PAGES) == []


def test_a_broken_link_is_named(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](#title) [gone](missing.md) [no anchor](#nowhere)\n```\n[code](x.md)\n```\n"
    )
    assert broken_links([page], tmp_path) == [
        "page.md:3: missing.md (no such file)",
        "page.md:3: #nowhere (no such heading)",
    ]
