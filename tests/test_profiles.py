"""The Snakemake profiles under workflow/profiles, checked against the rules: default (local,
nothing GPU- or deployment-specific), local-gpu (one GPU per job) and slurm (the executor
plugin). The real-SLURM runs are in test_slurm.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_rules import REPO, shell_rules

PROFILES = REPO / "workflow" / "profiles"


def profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def memory(expression, attempt: int) -> int:
    """A profile's mem_mb: a number, or a Python expression of `attempt` (as Snakemake reads it)."""
    return int(eval(str(expression), {"attempt": attempt}))


def test_default_profile_has_nothing_gpu_or_deployment_specific():
    """Snakemake also loads profiles/default under other executors unless told otherwise:
    `resources: gpu` there would cap SLURM's GPU requests to the local count (snakemake-notes
    §5.3) and a software-deployment method would make every run need conda."""
    default = profile("default")
    assert "gpu" not in yaml.safe_dump({k: default.get(k) for k in ("resources", "default-resources", "set-resources")})
    assert not {"executor", "software-deployment-method", "sdm", "use-conda"} & set(default)


def test_default_profile_is_loaded_wherever_snakemake_runs(tmp_path):
    """Snakemake looks for the default workflow profile in profiles/default beside the Snakefile
    (or in the working directory), not under workflow/: the repository's profiles/default links
    to workflow/profiles/default so that `rerun-incomplete` and the others apply to every run."""
    link = REPO / "profiles" / "default"
    assert link.is_symlink() and link.resolve() == (PROFILES / "default").resolve()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cwd in (tmp_path,):  # never the checkout: a test writes nothing there
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "--cores", "1",
             "--configfile", str(REPO / "tests" / "configs" / "smoke.yaml")],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Using workflow specific profile" in result.stderr and "profiles/default" in result.stderr, result.stderr[:2000]


def test_local_gpu_profile_caps_gpus_and_keeps_the_defaults():
    local_gpu = profile("local-gpu")
    assert local_gpu["resources"]["gpu"] >= 1
    default = profile("default")
    assert {k: local_gpu.get(k) for k in default} == default  # it replaces the default profile


def test_slurm_profile_settings():
    slurm = profile("slurm")
    assert slurm["executor"] == "slurm"
    assert slurm["slurm-status-command"] == "squeue"  # sacct hangs without accounting
    assert slurm["retries"] >= 1 and slurm["slurm-keep-successful-logs"] is True
    assert slurm["slurm-logdir"].startswith("results/logs")
    assert "resources" not in slurm  # a global gpu cap would shrink every sbatch --gpus
    assert memory(slurm["default-resources"]["mem_mb"], 2) > memory(slurm["default-resources"]["mem_mb"], 1)
    assert slurm["default-resources"]["runtime"] > 0
    for settings in slurm["set-resources"].values():
        assert "--gres" not in str(settings.get("slurm_extra", "")), "the plugin rejects --gres in slurm_extra: use gres="


def test_slurm_profile_retries_every_rule_with_more_memory():
    """A rule's own mem_mb would win over default-resources, so each rule that declares one is
    listed in set-resources with the same amount on the first attempt, more on the next."""
    slurm = profile("slurm")["set-resources"]
    for rule in shell_rules().values():
        declared = rule.resources.get("mem_mb")
        if declared is None:
            continue  # default-resources' mem_mb (which grows with the attempt) applies
        assert rule.name in slurm and "mem_mb" in slurm[rule.name], (
            f"rule {rule.name} declares mem_mb={declared}: add `{rule.name}: {{mem_mb: \"{declared} * attempt\"}}` "
            "to set-resources in workflow/profiles/slurm/config.yaml"
        )
        assert memory(slurm[rule.name]["mem_mb"], 1) == declared, f"rule {rule.name}: the profile's first attempt differs from the rule's mem_mb"
        assert memory(slurm[rule.name]["mem_mb"], 2) > declared


def test_slurm_profile_sends_gpu_rules_and_only_them_to_the_gpu_partition():
    slurm = profile("slurm")
    rules = shell_rules()
    assert set(slurm["set-resources"]) <= set(rules), "set-resources names a rule that does not exist"
    assert set(slurm["set-threads"]) <= set(rules), "set-threads names a rule that does not exist"
    for rule in rules.values():
        settings = slurm["set-resources"].get(rule.name, {})
        if rule.gpu:
            assert settings.get("slurm_partition"), f"GPU rule {rule.name} has no GPU partition in the slurm profile"
            assert slurm["set-threads"].get(rule.name, 0) >= 1
        else:
            assert not {"slurm_partition", "gpu", "gpu_model", "gres", "cpus_per_gpu"} & set(settings), rule.name
            assert rule.name not in slurm["set-threads"]


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None, reason="snakemake-executor-plugin-slurm is not installed")
def test_slurm_profile_loads_and_plans_the_smoke_dag(tmp_path):
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n",
        "--workflow-profile", str(PROFILES / "slurm"),
        "--configfile", str(REPO / "tests" / "configs" / "smoke.yaml"),
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gpu=1, slurm_partition=gpu" in result.stdout
