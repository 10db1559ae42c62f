"""The whole default DAG (`snakemake --cores all`): wall time, and time per stage.

    python benchmarks/end_to_end.py [--workdir DIR] [--cores N]       # run it, then summarise
    python benchmarks/end_to_end.py --summarise-only --workdir DIR     # a run that already happened

Runs the default config in `--workdir` (default: a fresh temporary folder, so that nothing of
yours is reused or overwritten; the repository itself when `--workdir .`), timing the whole
run. Then reads Snakemake's per-job benchmark files (`results/benchmarks/rules/<rule>/...tsv`,
one per job, `s` = wall seconds) and adds them up per rule. Jobs that ran before this
invocation (cached outputs) have older TSVs; `--summarise-only` reports them all without a
total wall time. Writes results/benchmarks/end_to_end.json (in the repository).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "results" / "benchmarks" / "end_to_end.json"


def rule_times(workdir: Path, since: float | None = None) -> dict[str, dict]:
    """{rule: {jobs, seconds, max_seconds}} from the per-job benchmark TSVs (newer than `since`)."""
    per_rule: dict[str, dict] = {}
    root = workdir / "results" / "benchmarks" / "rules"
    for tsv in sorted(root.rglob("*.tsv")):
        if since is not None and tsv.stat().st_mtime < since:
            continue
        first = tsv.relative_to(root).parts[0]  # a rule's folder, or <rule>.tsv for a job without wildcards
        rule = first.removesuffix(".tsv")
        with tsv.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        seconds = float(rows[-1]["s"])
        entry = per_rule.setdefault(rule, {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0})
        entry["jobs"] += 1
        entry["seconds"] = round(entry["seconds"] + seconds, 1)
        entry["max_seconds"] = round(max(entry["max_seconds"], seconds), 1)
    return dict(sorted(per_rule.items(), key=lambda kv: -kv[1]["seconds"]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None, help="where results/ is written (default: a fresh temporary folder)")
    p.add_argument("--cores", default="all")
    p.add_argument("--summarise-only", action="store_true", help="do not run; report the benchmark files of an earlier run")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)

    temporary = None
    if args.workdir is None:
        if args.summarise_only:
            raise SystemExit("--summarise-only needs --workdir")
        temporary = tempfile.TemporaryDirectory(prefix="dginstyle-e2e-")
        workdir = Path(temporary.name)
    else:
        workdir = args.workdir.resolve()
    wall = None
    started = time.time()
    if not args.summarise_only:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                   "--configfile", str(REPO / "config.yaml"), "--cores", str(args.cores)]
        t0 = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = round(time.perf_counter() - t0, 1)
        if result.returncode != 0:
            raise SystemExit(f"snakemake failed after {wall} s:\n{result.stderr[-3000:]}")
        if "Nothing to be done" in result.stdout + result.stderr:
            raise SystemExit(f"{workdir}: every output was already there; use a fresh --workdir or --summarise-only")
    per_rule = rule_times(workdir, None if args.summarise_only else started - 1)
    report = {
        "benchmark": "end_to_end",
        "config": "config.yaml (the miniature world)",
        "workdir": str(workdir) if temporary is None else "(temporary)",
        "wall_seconds": wall,
        "sum_of_job_seconds": round(sum(v["seconds"] for v in per_rule.values()), 1),
        "per_rule": per_rule,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(), "cores": args.cores},
    }
    if temporary is not None:
        temporary.cleanup()
    print(f"wall {wall} s; per rule (jobs, total s, longest s):")
    for rule, v in per_rule.items():
        print(f"  {rule:22s} {v['jobs']:4d} {v['seconds']:9.1f} {v['max_seconds']:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
