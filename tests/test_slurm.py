"""The workflow on a real SLURM (single node, started here from Debian's packages, fake GPUs)
with the shipped profile `workflow/profiles/slurm`: GPU rules are submitted with a GPU in the
GPU partition and CPU rules without, outputs equal a local run's, and a job cancelled mid-run
(scancel) is resubmitted with more memory, resumes from its checkpoint, and the DAG completes.

Select with `-m slurm`. They skip (saying why, in one line) where SLURM is not installed (the
tests install nothing: `bash .ci/install-slurm` does, and CI runs it) or where the machine runs a
SLURM of its own that must not be touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from slurm_cluster import ClusterError, ClusterUnavailable, SlurmCluster, missing_reason
from workflow_rules import REPO, shell_rules

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SMOKE = REPO / "tests" / "configs" / "smoke.yaml"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
# A subset of the smoke DAG, two levels: preparation, contact sheet and layout plan (CPU) and
# the prior (GPU). Every level costs SLURM scheduling and polling time, and the whole smoke DAG
# has eight (docs/performance.md).
TARGETS = [
    "results/datasets/mini_gta5",
    "results/figures/contact_sheets/mini_gta5.png",
    "results/generated/dginstyle/plan.jsonl",
    "results/generator/prior",
]
# What a CPU produces byte for byte whatever runs it, compared with a local run of just these
# (the prior's weights depend on thread counts).
DETERMINISTIC = [
    "results/datasets/mini_gta5",
    "results/datasets/mini_prior",
    "results/figures/contact_sheets/mini_gta5.png",
    "results/generated/dginstyle/plan.jsonl",
]


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory) -> SlurmCluster:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(cluster.stop)  # stops whatever started, even after a failed start
    try:
        cluster.start()
    except ClusterUnavailable as error:
        pytest.skip(str(error))
    except ClusterError as error:
        pytest.fail(str(error))
    return cluster


def snakemake_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """Targets first: --configfile takes every value after it."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    # Jobs (also inside SLURM jobs: sbatch --export=ALL) call `python`: make it this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return command, env


def on_slurm(*args: str) -> tuple[list[str], dict[str, str]]:
    """The shipped profile as a user runs it, only with a short first status check (the
    plugin's default waits 40 s before it looks at a job)."""
    return snakemake_command("--workflow-profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "2", *args)


def profile_retries() -> int:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())["retries"]


def run(command_env: tuple[list[str], dict[str, str]], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    command, env = command_env
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp")
    return {str(p.relative_to(path)) if p != path else p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@dataclass
class SlurmRun:
    workdir: Path
    config: dict
    result: subprocess.CompletedProcess
    jobs: list  # the jobs this run submitted, oldest first
    cancelled: int | None  # the job the test cancelled
    wall_s: float

    def by_rule(self) -> dict[str, list]:
        rules = list(shell_rules())
        grouped: dict[str, list] = {}
        for job in self.jobs:
            grouped.setdefault(job.rule(rules), []).append(job)
        return grouped


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory) -> SlurmRun:
    """One run of TARGETS with the shipped profile, during which the prior's job is cancelled
    with scancel (as a preemption or time limit would end it, without requeue) once it has
    written a checkpoint. One run serves every test here: each SLURM run costs minutes."""
    config = yaml.safe_load(SMOKE.read_text())
    # long enough that the job is still training when its first checkpoint appears
    config["prior"]["training"].update(vae_steps=40, checkpoint_every=5)
    workdir = tmp_path_factory.mktemp("slurm-run")
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    checkpoints = workdir / "results" / "checkpoints" / "pretrain_prior" / "vae"

    before = {job.id for job in cluster.jobs()}
    command, env = on_slurm(*TARGETS, "--configfile", str(configfile))
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cancelled = None
    try:
        while process.poll() is None and time.monotonic() - started < 900:
            running = [i for i, state, comment in cluster.queue() if comment == "rule_pretrain_prior" and state == "RUNNING"]
            if running and list(checkpoints.glob("step_*/state.json")):
                subprocess.run(["scancel", str(running[0])], check=True)
                cancelled = running[0]
                break
            time.sleep(0.2)
        stdout, stderr = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            stdout, stderr = process.communicate()
    wall = time.monotonic() - started
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    run = SlurmRun(workdir, config, result, [job for job in cluster.jobs() if job.id not in before], cancelled, wall)
    print(f"\nSLURM run of {len(TARGETS)} targets: {wall:.0f} s, cancelled job {cancelled}")
    for rule, jobs in run.by_rule().items():
        for job in jobs:
            print(f"  job {job.id} {rule}: {job.state} partition={job.partition} gpus={job.gpus} "
                  f"cpus={job.fields.get('NumCPUs')} mem={job.mem_mb} MB")
    return run


def test_the_dag_completes_on_slurm(slurm_run, cluster):
    result = slurm_run.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + cluster.logs()
    assert (slurm_run.workdir / "results" / "generator" / "prior" / "model_index.json").is_file()


def test_gpu_rules_get_a_gpu_and_cpu_rules_none(slurm_run):
    rules = shell_rules()
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    by_rule = slurm_run.by_rule()
    assert {rule: len(jobs) for rule, jobs in by_rule.items()} == {
        "prepare_dataset": 2,  # the source and the prior's corpus
        "contact_sheet": 1,
        "select_layouts": 1,
    } | {"pretrain_prior": len(by_rule["pretrain_prior"])}
    assert len(by_rule["pretrain_prior"]) >= 2  # cancelled once, resubmitted
    for rule, jobs in by_rule.items():
        for job in jobs:
            if rules[rule].gpu:
                assert job.gpus == 1 and job.partition == "gpu", job.fields
                assert int(job.fields["NumCPUs"]) == profile["set-threads"][rule]
            else:
                assert job.gpus == 0 and job.partition == "debug", job.fields
                assert int(job.fields["NumCPUs"]) == rules[rule].threads
                assert job.state == "COMPLETED" and job.mem_mb == rules[rule].resources["mem_mb"]
            # the profile keeps every job's SLURM log
            assert list((slurm_run.workdir / "results" / "logs" / "slurm").rglob(f"{job.id}.log")), job.id


def test_outputs_equal_a_local_run(slurm_run, tmp_path):
    local = run(snakemake_command(*DETERMINISTIC, "--cores", "2", "--configfile", str(SMOKE)), tmp_path)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    for path in DETERMINISTIC:
        assert (slurm_run.workdir / path).exists(), path
        assert digest(slurm_run.workdir / path) == digest(tmp_path / path), path


def test_a_job_cancelled_mid_run_is_resubmitted_with_more_memory_and_resumes(slurm_run):
    assert slurm_run.cancelled is not None, "the prior's job finished before the test could cancel it"
    prior_jobs = slurm_run.by_rule()["pretrain_prior"]
    # normally [CANCELLED, COMPLETED]; a further failed attempt is within the profile's retries
    assert prior_jobs[0].state == "CANCELLED" and prior_jobs[-1].state == "COMPLETED"
    assert len(prior_jobs) <= 1 + profile_retries()
    assert prior_jobs[0].id == slurm_run.cancelled
    declared = shell_rules()["pretrain_prior"].resources["mem_mb"]
    # mem_mb grows with the attempt: the rule's own value, then twice, three times that
    assert [job.mem_mb for job in prior_jobs] == [declared * attempt for attempt in range(1, len(prior_jobs) + 1)]
    metadata = json.loads((slurm_run.workdir / "results" / "generator" / "prior" / "dginstyle.json").read_text())
    assert metadata["resumed_from"]["vae"] is not None, metadata["resumed_from"]  # from its last checkpoint
