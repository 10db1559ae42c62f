"""A non-editable install carries everything the package reads: the default DAG plans with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_non_editable_install_plans_the_default_dag(tmp_path):
    # Build from a copy: an in-tree build would write build/ and *.egg-info into the checkout.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy2(REPO / "pyproject.toml", source)
    shutil.copy2(REPO / "README.md", source)
    shutil.copytree(REPO / "dginstyle", source / "dginstyle", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run([*install, "--target", str(site), str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.rmtree(source)  # nothing may be read from the sources any more

    # The installed copy comes first on the path (before the checkout's editable install).
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # The workflow without the package's sources beside it (python -c and Snakemake put the
    # current and the Snakefile's folder on the path): only the install can provide dginstyle.
    work = tmp_path / "work"
    work.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, work)
    for name in ("workflow", "envs"):
        shutil.copytree(REPO / name, work / name)
    where = subprocess.run([sys.executable, "-c", "import dginstyle.config as c; print(c.__file__); print(c.SCHEMA_PATH)"], cwd=work, env=env, capture_output=True, text=True)
    module, schema = where.stdout.split()
    assert Path(module).is_relative_to(site) and Path(schema).is_relative_to(site) and Path(schema).is_file(), where.stdout + where.stderr

    plan = [sys.executable, "-m", "snakemake", "-n", "--cores", "2"]
    result = subprocess.run(plan, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train_segmentation" in result.stdout and "install_prior" in result.stdout
