"""How long Snakemake takes to plan the paper-scale DAG, and to decide a rerun has nothing to do.

    python benchmarks/plan.py [--cores N]

Builds fake dataset trees of the real sizes in a temporary folder (file names only, no pixels:
24,966 GTA5 pairs; 500 Cityscapes, 1,000 BDD100K, 2,000 Mapillary, 406 ACDC, 50 Dark Zurich
validation pairs), points workflow/configs/paper.yaml at them and times, best of three:
  plan    `snakemake -n` of the whole DAG (config validation, layout checks, DAG, job stats);
  no-op   `snakemake -n` once every output exists and is up to date (made empty, then
          `snakemake --touch`): it must say "Nothing to be done".
Prints both and writes results/benchmarks/plan.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from fake_trees import make_tree  # noqa: E402

# the paper's splits (docs/method.md): the source's training set, each target's validation set
SIZES = {
    "gta5": {"train": 24966},
    "cityscapes": {"val": 500},
    "bdd100k": {"val": 1000},
    "mapillary": {"val": 2000},
    "acdc": {"val": 406},
    "darkzurich": {"val": 50},
}


def snakemake(workdir: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed, result


def job_count(output: str) -> int:
    match = re.search(r"^total\s+(\d+)\s*$", output, re.M)
    return int(match.group(1)) if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dginstyle-plan-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        config = yaml.safe_load((REPO / "workflow" / "configs" / "paper.yaml").read_text())
        for name, entry in config["datasets"].items():
            root = tmp / "data" / name
            make_tree(entry["format"], root, count=SIZES[entry["format"]], names_only=True)
            entry["root"] = str(root)
        configfile = tmp / "paper.yaml"
        configfile.write_text(yaml.safe_dump(config))
        trees_s = time.perf_counter() - start
        workdir = tmp / "run"
        workdir.mkdir()
        common = ["--cores", args.cores, "--configfile", str(configfile)]

        plans = [snakemake(workdir, "-n", *common) for _ in range(args.repeats)]
        jobs = job_count(plans[0][1].stdout)

        # every output, made empty (a folder where the rule declares directory()), then marked
        # up to date by Snakemake itself
        _, summary = snakemake(workdir, "--summary", *common)
        rows = [line.split("\t") for line in summary.stdout.splitlines()[1:] if "\t" in line]
        for path, *_ in rows:
            target = workdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if Path(path).suffix:
                target.touch()
            else:
                target.mkdir(exist_ok=True)
        snakemake(workdir, "--touch", *common)
        noops = [snakemake(workdir, "-n", *common) for _ in range(args.repeats)]
        nothing = all("Nothing to be done" in r.stdout + r.stderr for _, r in noops)

    figures = {
        "jobs": jobs,
        "outputs": len(rows),
        "fake_trees_s": round(trees_s, 1),
        "plan_s": round(min(t for t, _ in plans), 2),
        "noop_s": round(min(t for t, _ in noops), 2),
        "noop_says_nothing_to_do": nothing,
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
    }
    print(json.dumps(figures, indent=2))
    out = REPO / "results" / "benchmarks" / "plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
