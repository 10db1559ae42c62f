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
        "--configfile", str(REPO / "tests" / "configs" / "smoke.yaml"),
        "--cores", "2", "results/generator/prior",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prior_log = (tmp_path / "results" / "logs" / "pretrain_prior.log").read_text()
    assert "using GPU 7" in prior_log
    assert (tmp_path / "tmp" / "dginstyle-gpu-locks" / "gpu-7.lock").exists()
    prepare_log = (tmp_path / "results" / "logs" / "prepare" / "mini_prior.log").read_text()
    assert "using GPU" not in prepare_log


# --- Which device a stage runs on (faked CUDA: the tests run without a GPU) ---------------


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch reports two CUDA devices; nothing is ever placed on them in these tests."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_auto_is_cuda_when_torch_sees_a_gpu(fake_cuda):
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_device("cuda:1") == "cuda:1"
    assert devices.resolve_device("cpu") == "cpu"


def test_auto_is_cpu_without_a_gpu(no_cuda):
    assert devices.resolve_device("auto") == "cpu"


@pytest.mark.parametrize(
    "requested, gpu, words",
    [("cuda", False, "no CUDA GPU"), ("cuda:2", True, "only 2 CUDA"), ("tpu", True, "expected auto"), ("cuda:x", True, "expected auto")],
)
def test_a_device_that_is_not_there_is_one_line(requested, gpu, words, monkeypatch):
    import torch

    from dginstyle.io import DataError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if gpu else 0)
    with pytest.raises(DataError, match=words) as caught:
        devices.resolve_device(requested)
    assert "\n" not in str(caught.value)


class Placed(Exception):
    """Raised by a stand-in for mmseg's init_model: carries the device it was asked for."""


def test_segmentation_runs_load_onto_the_gpu_when_present(fake_cuda, tmp_path, monkeypatch):
    from dginstyle.compat import import_mmseg
    from dginstyle.segmentation.evaluate import load_run

    import_mmseg()  # before mmseg: mmcv-lite lacks the compiled ops
    import mmseg.apis

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.py").write_text("model = dict(data_preprocessor=dict(size=(64, 64)), test_cfg=dict())\n")

    def init_model(cfg, checkpoint, device):
        raise Placed(device)

    monkeypatch.setattr(mmseg.apis, "init_model", init_model)
    with pytest.raises(Placed, match="^cuda$"):
        load_run(run)
    with pytest.raises(Placed, match="^cpu$"):
        load_run(run, device="cpu")


@pytest.mark.parametrize("stage", ["evaluate", "quality-control"])
def test_evaluate_and_quality_control_pass_their_device_on(stage, fake_cuda, tmp_path, monkeypatch):
    """The default is auto (the GPU when present); --device overrides it."""
    from dginstyle.cli import main
    from dginstyle.segmentation import evaluate, quality_control, shard_check

    asked = []

    def load_run(run, *, device="auto", **_):
        asked.append(devices.resolve_device(device))
        raise Placed(device)

    monkeypatch.setattr(evaluate, "load_run", load_run)
    monkeypatch.setattr(quality_control, "generated_samples", lambda shard: [], raising=False)
    monkeypatch.setattr(shard_check, "verify_shard", lambda *a, **k: None)
    import dginstyle.segmentation.datasets as datasets

    monkeypatch.setattr(datasets, "prepared_samples", lambda dataset, split: [("a", tmp_path / "a.png", tmp_path / "a_l.png")])
    monkeypatch.setattr(datasets, "generated_samples", lambda shard: [])
    import dginstyle.data.contract as contract

    monkeypatch.setattr(contract, "read_manifest", lambda dataset: {})
    for name in ("run", "data"):
        (tmp_path / name).mkdir()
    if stage == "evaluate":
        argv = ["evaluate", "--run", str(tmp_path / "run"), "--dataset", str(tmp_path / "data"), "--split", "val", "--out", str(tmp_path / "m.json")]
    else:
        argv = ["quality-control", "--shard", str(tmp_path / "data"), "--run", str(tmp_path / "run"), "--out", str(tmp_path / "qc")]
    for extra, expected in (([], "cuda"), (["--device", "cpu"], "cpu"), (["--device", "cuda:1"], "cuda:1")):
        with pytest.raises(Placed):
            main(argv + extra)
        assert asked[-1] == expected


def test_diffusion_stages_choose_the_gpu_when_present(fake_cuda):
    """generate, the figures and both diffusion trainings resolve their --device through
    models.pick_device, whose default is auto."""
    from dginstyle.cli import build_parser
    from dginstyle.diffusion import models

    assert models.pick_device("auto").type == "cuda"
    for stage in ("generate", "style-swap-figure", "finetune-unet", "train-controlnet", "pretrain-prior", "evaluate", "quality-control"):
        parser = build_parser([stage])
        sub = next(a for a in parser._actions if a.dest == "command").choices[stage]
        device = next((a for a in sub._actions if a.dest == "device"), None)
        assert device is not None and device.default == "auto", stage


def test_segmentation_training_follows_cuda():
    """train-segmentation builds an mmengine Runner, which places the model on the device
    mmengine found when it was imported: CUDA when present. Nothing of ours pins it to the CPU."""
    probe = "import torch; torch.cuda.is_available = lambda: True; import mmengine.device.utils as u; print(u.DEVICE)"
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "cuda"
    text = (REPO / "dginstyle" / "segmentation" / "train.py").read_text()
    assert 'device="cpu"' not in text and "device='cpu'" not in text
