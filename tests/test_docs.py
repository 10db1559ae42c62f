"""The repository cites only documents it contains: every reference to the method page is to
docs/method.md (and to a section that page has), and nothing outside `.ci/` points into a
private folder beside the checkout."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs/method.md"
PAGE = "method" + ".md"
PRIVATE = ("../" + "shared", "/work/" + "shared")  # split so this file does not match itself
SKIP_DIRS = {".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "mutants"}


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), else a walk that skips build outputs."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
        files = [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            files.extend(Path(folder) / n for n in names)
    return [f for f in files if f.is_file()]


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="ignore")


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return {f.relative_to(ROOT).as_posix(): _text(f) for f in repository_files()}


def test_the_method_page_exists_and_is_self_contained():
    text = METHOD.read_text()
    for heading in ("## 1.", "### 1.1", "### 1.4", "### 1.6", "## 2.", "## 3.", "## 4.", "## 5."):
        assert any(line.startswith(heading + " ") for line in text.splitlines()), heading
    assert not any(p in text for p in PRIVATE)


def test_every_method_reference_points_to_docs_method_md(texts):
    assert "docs/method.md" in texts, "docs/method.md is not in the repository"
    bad = []
    for name, text in texts.items():
        in_docs = name.startswith("docs/")
        for match in re.finditer(re.escape(PAGE), text):
            before = text[: match.start()]
            if before.endswith("docs/"):
                continue
            if in_docs and not re.search(r"[\w./\\-]$", before):
                continue  # a relative link from docs/ itself
            line = text.count("\n", 0, match.start()) + 1
            bad.append(f"{name}:{line}")
    assert not bad, f"references to a {PAGE} that does not exist (write docs/{PAGE}): {', '.join(bad)}"


def test_cited_sections_of_docs_method_md_exist(texts):
    """'docs/method.md 1.4', 'docs/method.md section 5', 'docs/method.md sections 1-2' and
    'docs/method.md 1.2/1.5': each number is a heading of the page."""
    headings = set()
    for line in METHOD.read_text().splitlines():
        found = re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line)
        if found:
            headings.add(found.group(1))
    cite = re.compile(r"docs/" + re.escape(PAGE) + r",? (?:sections? )?(\d+(?:\.\d+)?(?:\s*(?:[-/,]|and)\s*\d+(?:\.\d+)?)*)")
    missing = []
    for name, text in texts.items():
        for match in cite.finditer(text):
            for number in re.findall(r"\d+(?:\.\d+)?", match.group(1)):
                if number not in headings:
                    missing.append(f"{name}: {match.group(0)!r} (no section {number})")
    assert not missing, "; ".join(missing)


def test_nothing_outside_ci_points_to_a_private_folder(texts):
    bad = [
        f"{name}: {p}"
        for name, text in texts.items()
        if not name.startswith(".ci/")
        for p in PRIVATE
        if p in text
    ]
    assert not bad, f"paths outside the repository: {', '.join(bad)}"
