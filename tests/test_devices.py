"""One GPU per job on a multi-GPU workstation (dginstyle.devices, the local-gpu profile), tested
without GPUs: fake device folders and CUDA_VISIBLE_DEVICES lists stand in for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dginstyle import devices
from dginstyle.cli import GPU_STAGES
from workflow_rules import REPO, shell_rules


def fake_dev(tmp_path: Path, count: int) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in [f"nvidia{i}" for i in range(count)] + ["nvidiactl", "nvidia-uvm", "nvidia-modeset", "null"]:
        (dev / name).touch()
    return dev


def test_pool_counts_nvidia_devices(tmp_path):
    assert devices.device_pool({}, fake_dev(tmp_path, 3)) == ["0", "1", "2"]


def test_pool_follows_cuda_visible_devices(tmp_path):
    dev = fake_dev(tmp_path, 4)
    assert devices.device_pool({"CUDA_VISIBLE_DEVICES": "2,3"}, dev) == ["2", "3"]
    assert devices.device_pool({"CUDA_VISIBLE_DEVICES": "GPU-a1b2, MIG-c3"}, dev) == ["GPU-a1b2", "MIG-c3"]
    assert devices.device_pool({"CUDA_VISIBLE_DEVICES": ""}, dev) == []  # none visible, by choice


def test_claims_take_distinct_devices_until_none_is_free(tmp_path):
    locks = tmp_path / "locks"
    first = devices.try_claim(["0", "1"], locks)
    second = devices.try_claim(["0", "1"], locks)
    assert (first.device, second.device) == ("0", "1")
    assert devices.try_claim(["0", "1"], locks) is None
    first.release()
    again = devices.try_claim(["0", "1"], locks)
    assert again.device == "0"
    for claim in (second, again):
        claim.release()


def test_device_ids_become_plain_lock_file_names(tmp_path):
    claim = devices.try_claim(["MIG-3/0:1"], tmp_path)
    assert claim.lock_file.parent == tmp_path and "/" not in claim.lock_file.name
    claim.release()


def test_claim_waits_for_a_device_and_times_out(tmp_path):
    held = devices.try_claim(["0"], tmp_path)
    naps = []

    def sleep(seconds):  # fake clock: frees the device on the third nap
        naps.append(seconds)
        if len(naps) == 3:
            held.release()

    claim = devices.claim(["0"], tmp_path, poll_seconds=5, sleep=sleep)
    assert claim.device == "0" and naps == [5, 5, 5]
    with pytest.raises(TimeoutError, match="stayed busy"):
        devices.claim(["0"], tmp_path, timeout=10, poll_seconds=5, sleep=lambda s: None)
    claim.release()


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dginstyle.devices import claim
    held = claim(sys.argv[2].split(","), Path(sys.argv[1]), timeout=0)
    print(held.device, flush=True)
    sys.stdin.read()  # hold the device until the test closes stdin or kills us
    """
)


def test_processes_get_distinct_devices_and_a_killed_one_frees_its_device(tmp_path):
    """The real situation: one process per job; SIGKILL (no cleanup at all) still frees."""
    locks = tmp_path / "locks"

    def start():
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(locks), "0,1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        return process, process.stdout.readline().strip()

    first, device_a = start()
    second, device_b = start()
    assert {device_a, device_b} == {"0", "1"}
    third = subprocess.run([sys.executable, "-c", HOLDER, str(locks), "0,1"], capture_output=True, text=True, cwd=REPO, input="")
    assert third.returncode != 0 and "stayed busy" in third.stderr  # both held: timeout=0 gives up
    first.send_signal(signal.SIGKILL)
    first.wait()
    fourth, device_c = start()
    assert device_c == device_a
    for process in (second, fourth):
        process.stdin.close()
        process.wait()


def test_claim_for_job_sets_the_visible_device(tmp_path):
    environ = {devices.LOCKS_VARIABLE: str(tmp_path / "locks")}
    held = devices.claim_for_job(environ, fake_dev(tmp_path, 2))
    assert environ["CUDA_VISIBLE_DEVICES"] == held.device == "0"
    held.release()


@pytest.mark.parametrize(
    "environ",
    [{}, {"SLURM_JOB_ID": "42"}],
    ids=["not-asked", "under-slurm"],
)
def test_claim_for_job_does_nothing_unless_asked_and_never_under_slurm(tmp_path, environ):
    if environ:
        environ[devices.LOCKS_VARIABLE] = str(tmp_path / "locks")
    assert devices.claim_for_job(environ, fake_dev(tmp_path, 2)) is None
    assert "CUDA_VISIBLE_DEVICES" not in environ


def test_claim_for_job_without_gpus_runs_on_cpu(tmp_path):
    environ = {devices.LOCKS_VARIABLE: str(tmp_path / "locks")}
    assert devices.claim_for_job(environ, fake_dev(tmp_path, 0)) is None
    assert "CUDA_VISIBLE_DEVICES" not in environ


def test_gpu_stages_are_exactly_the_rules_that_declare_a_gpu():
    """cli.GPU_STAGES decides which commands claim a device: it must follow the rules."""
    declared = {rule.stage for rule in shell_rules().values() if rule.gpu}
    cpu_only = {rule.stage for rule in shell_rules().values() if not rule.gpu}
    assert declared, "no rule declares gpu=1"
    assert declared <= GPU_STAGES, f"rules declare gpu=1 for {sorted(declared - GPU_STAGES)}: add them to dginstyle.cli.GPU_STAGES"
    assert not (GPU_STAGES & cpu_only), f"GPU_STAGES lists {sorted(GPU_STAGES & cpu_only)}, whose rules declare no GPU"


@pytest.mark.slow
def test_local_gpu_profile_gives_a_gpu_job_its_own_device(tmp_path):
    """The smoke config's prior (a GPU rule) under the local-gpu profile, with a pretend pool of
    two devices: the job claims one and says so in its log; a CPU job claims nothing."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CUDA_VISIBLE_DEVICES": "7,5",
        "TMPDIR": str(tmp_path / "tmp"),  # a lock folder of this test's own
    }
    (tmp_path / "tmp").mkdir()
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--workflow-profile", str(REPO / "workflow" / "profiles" / "local-gpu"),
        "--configfile", str(REPO / "workflow" / "configs" / "smoke.yaml"),
        "--cores", "2", "results/generator/prior",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prior_log = (tmp_path / "results" / "logs" / "pretrain_prior.log").read_text()
    assert "using GPU 7" in prior_log
    assert (tmp_path / "tmp" / "dginstyle-gpu-locks" / "gpu-7.lock").exists()
    prepare_log = (tmp_path / "results" / "logs" / "prepare" / "mini_prior.log").read_text()
    assert "using GPU" not in prepare_log
