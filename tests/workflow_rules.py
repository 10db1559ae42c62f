"""The workflow's rules read statically from workflow/rules/*.smk (name, conda env, dginstyle
stage, threads, resources), for tests that check them against envs/, the CLI and the profiles
without running Snakemake. The rule files are snakefmt-formatted, which keeps this simple."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "workflow" / "rules"

_HEADER = re.compile(r"^(?P<indent>[ \t]*)(?:rule|checkpoint) (?P<name>\w+):[ \t]*$", re.M)


@dataclass
class Rule:
    name: str
    file: Path
    text: str
    conda: str | None = None  # as written, relative to the rule file
    stage: str | None = None  # the `python -m dginstyle <stage>` of its shell command
    threads: int | None = None
    resources: dict[str, int] = field(default_factory=dict)

    @property
    def env_file(self) -> Path | None:
        return (self.file.parent / self.conda).resolve() if self.conda else None

    @property
    def gpu(self) -> int:
        return self.resources.get("gpu", 0)


def _block(text: str, start: int, indent: str) -> str:
    """The rule's body: every following line indented deeper than its header (or blank)."""
    lines = []
    for line in text[start:].splitlines()[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
            break
        lines.append(line)
    return "\n".join(lines)


def read_rules(rules_dir: Path = RULES_DIR) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for path in sorted(rules_dir.glob("*.smk")):
        text = path.read_text()
        for header in _HEADER.finditer(text):
            body = _block(text, header.start(), header.group("indent"))
            rule = Rule(header.group("name"), path, body)
            if conda := re.search(r"^\s*conda:\s*\n\s*\"([^\"]+)\"", body, re.M):
                rule.conda = conda.group(1)
            if stage := re.search(r"python -m dginstyle ([a-z][a-z0-9-]*)", body):
                rule.stage = stage.group(1)
            if threads := re.search(r"^\s*threads:\s*(\d+)\s*$", body, re.M):
                rule.threads = int(threads.group(1))
            if resources := re.search(r"^(\s*)resources:\s*\n((?:\1\s+\w+=.*\n?)+)", body, re.M):
                for name, value in re.findall(r"(\w+)=(\d+)", resources.group(2)):
                    rule.resources[name] = int(value)
            rules[rule.name] = rule
    return rules


def shell_rules() -> dict[str, Rule]:
    """The rules that run a command (not `all`)."""
    return {name: rule for name, rule in read_rules().items() if rule.stage is not None}
