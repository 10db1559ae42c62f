"""README.md and docs/*.md link only to files and headings that exist, and the README stays short.

A relative Markdown link `[text](path)` or `[text](path#anchor)` must name an existing file,
relative to the page that links; an `#anchor` (on the same page or another Markdown page) must be
the GitHub anchor of one of that page's headings. Links to http(s) and mailto addresses, and
anything inside fenced code blocks, are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) or [text](target "title"); an image's source, ![alt](src), is checked too.
LINK = re.compile(r"\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).*?\1", re.S)


def pages(root: Path = ROOT) -> list[Path]:
    """The README and every Markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks (fenced lines blanked, so line numbers stay)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading's text: lowercase; keep letters, digits, spaces, hyphens and
    underscores; spaces become hyphens (inline code and link markup count by their text)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.replace("`", "").lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown page, duplicates numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text()).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(files: list[Path]) -> list[str]:
    """'<file>:<line>: <target>: <why>' for every relative link that does not resolve."""
    problems = []
    for page in files:
        text = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose(page.read_text()))
        for match in LINK.finditer(text):
            target = match.group(1)
            if not target or re.match(r"^(https?:|mailto:)", target, re.I):
                continue
            line = text.count("\n", 0, match.start()) + 1
            where = f"{page.parent.name + '/' if page.parent.name == 'docs' else ''}{page.name}:{line}: {target}"
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                problems.append(f"{where}: no such file")
                continue
            if anchor:
                if linked.suffix != ".md" or linked.is_dir():
                    problems.append(f"{where}: an anchor into a file that is not a Markdown page")
                elif anchor not in anchors(linked):
                    problems.append(f"{where}: no heading with anchor #{anchor} in {linked.name}")
    return problems


def test_every_relative_link_and_anchor_resolves():
    files = pages()
    assert len(files) > 5, files
    problems = broken_links(files)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_under_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; move details into docs/"


def test_the_link_checker_reports_a_broken_file_link_and_a_broken_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Project\n\n"
        "See [the guide](docs/guide.md), [its setup](docs/guide.md#set-up-a-machine),\n"
        "[a missing page](docs/missing.md) and [a missing part](docs/guide.md#no-such-part).\n"
        "[Here](#project) and [mail](mailto:a@b.c) and [web](https://example.com/x.md#y).\n\n"
        "```\n[inside a fence](docs/also-missing.md)\n```\n\n"
        "`[inside code](docs/code-missing.md)`\n"
    )
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Set up a machine\n\n## FAQ\n\n## FAQ\n\n"
        "[back](../README.md#project), [second FAQ](#faq-1), [third FAQ](#faq-2)\n"
    )
    problems = broken_links(pages(tmp_path))
    assert len(problems) == 3, problems
    assert any("docs/missing.md: no such file" in p for p in problems), problems
    assert any("docs/guide.md#no-such-part: no heading" in p for p in problems), problems
    assert any("#faq-2: no heading" in p for p in problems), problems
    assert not any("also-missing" in p or "code-missing" in p for p in problems), problems


def test_github_anchor_rule():
    assert github_anchor("2026-12-03: the paper's share of generated samples (`generated_repeat: 5`)") == (
        "2026-12-03-the-papers-share-of-generated-samples-generated_repeat-5"
    )
    assert github_anchor("6.1 Stages") == "61-stages"
    assert github_anchor("ImageNet backbones: `segmentation.pretrained`") == "imagenet-backbones-segmentationpretrained"
    assert github_anchor("Miniature world: mini_gta5 -> five miniature targets") == (
        "miniature-world-mini_gta5---five-miniature-targets"
    )
