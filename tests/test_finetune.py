"""Style Swap step 1 (finetune-unet): outputs, the empty prompt, augmentation, resume, SIGKILL.

Also holds `tiny_world`, the tiny prior + miniature source (+ U^S and a ControlNet) that the
ControlNet and Style Swap tests share (built once per session).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dginstyle.diffusion import crops, finetune, models
from dginstyle.io import DataError

SPEC = models.TinySpec(
    vae_channels=(8, 16), unet_channels=(16, 32), text_hidden=16, norm_groups=8, unet_attention_head_dim=4, text_heads=2, text_layers=1
)
CROP = 32
FAST = dict(crop_size=CROP, mixed_precision="no", device="cpu", log_every=1)
_WORLD: dict = {}


@contextlib.contextmanager
def single_thread():
    """The stages follow $OMP_NUM_THREADS; tiny models on few, shared CPU cores run fastest on
    one thread (more threads contend with every other process). Restores both afterwards."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def tiny_world(tmp_path_factory) -> dict:
    """Paths of a random tiny prior, a 16-image minicity source (64x32), U^S and a ControlNet."""
    if _WORLD:
        return _WORLD
    with single_thread():
        return _build_world(tmp_path_factory)


def _build_world(tmp_path_factory) -> dict:
    from dginstyle.data.minicity import prepare_minicity
    from dginstyle.diffusion.controlnet import train_controlnet
    from dginstyle.labels import CLASSES

    root = tmp_path_factory.mktemp("tiny_world")
    comps = models.tiny_components(SPEC, [" ".join(CLASSES), "a city street scene"], CROP, root / "tok", seed=0)
    models.save_pipeline(root / "prior", comps, {"kind": "prior", "steps": 0})
    prepare_minicity(root / "src", "game", {"train": 16}, 0, 64, 32, 1, None, 12)
    finetune_unet(root, "us", steps=2, learning_rate=1e-3)
    train_controlnet(
        root / "prior", root / "us", root / "src", root / "cn", root / "ck_cn", steps=2, learning_rate=1e-3,
        batch_size=2, gradient_accumulation=1, rcs_min_pixels=12, **FAST,
    )  # fmt: skip
    _WORLD.update(root=root, prior=root / "prior", source=root / "src", unet=root / "us", controlnet=root / "cn")
    return _WORLD


def finetune_unet(root: Path, name: str, steps: int, checkpoints: str | None = None, **kw) -> dict:
    kw = {**dict(learning_rate=1e-3, batch_size=1, gradient_accumulation=2, checkpoint_every=100), **FAST, **kw}
    return finetune.finetune_unet(root / "prior", root / "src", root / name, root / (checkpoints or f"ck_{name}"), steps=steps, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


def unet_state(folder: Path) -> dict:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder).state_dict()


def test_finetune_writes_a_loadable_unet_with_metadata_and_uses_the_empty_prompt(world, monkeypatch):
    root = world["root"]
    prompts = []
    original = finetune.encode_prompts

    def spy(tokenizer, text_encoder, texts, rt):
        prompts.append(list(texts))
        return original(tokenizer, text_encoder, texts, rt)

    monkeypatch.setattr(finetune, "encode_prompts", spy)
    meta = finetune_unet(root, "ft_a", steps=3)
    assert prompts == [[""]]  # the empty prompt, encoded once
    out = root / "ft_a"
    saved = json.loads((out / models.METADATA).read_text())
    assert saved["kind"] == "unet_source" and saved["steps"] == 3 and saved == json.loads(json.dumps(meta))
    assert saved["hyperparameters"]["prompt"] == "" and saved["hyperparameters"]["learning_rate"] == 1e-3
    assert saved["hyperparameters"]["resize_ratios"] == [0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    assert saved["prior"] == str(world["prior"].resolve()) and saved["prior_metadata"] == {"kind": "prior", "steps": 0}
    assert [entry["step"] for entry in saved["training_log"]] == [1, 2, 3]
    curve = json.loads((out / finetune.LOSS_CURVE).read_text())
    assert curve["step"] == [1, 2, 3] and all(np.isfinite(curve["loss"]))
    assert (out / "diffusion_pytorch_model.safetensors").is_file() and not list(out.glob("*.bin"))
    tuned, prior = unet_state(out), unet_state(world["prior"] / "unet")
    assert tuned.keys() == prior.keys()
    assert any(not torch.equal(tuned[k], prior[k]) for k in tuned)  # the fine-tune changed the UNet


def test_resume_continues_exactly_like_a_straight_run(world):
    root = world["root"]
    straight = finetune_unet(root, "ft_straight", steps=4, checkpoint_every=2)
    finetune_unet(root, "ft_split", steps=2, checkpoints="ck_ft_split")
    resumed = finetune_unet(root, "ft_split", steps=4, checkpoints="ck_ft_split")
    assert resumed["resumed_from"] == [2] and resumed["steps"] == 4
    a, b = unet_state(root / "ft_straight"), unet_state(root / "ft_split")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    curve_a = json.loads((root / "ft_straight" / finetune.LOSS_CURVE).read_text())["loss"]
    curve_b = json.loads((root / "ft_split" / finetune.LOSS_CURVE).read_text())["loss"]
    np.testing.assert_allclose(curve_a, curve_b, rtol=1e-5)
    assert len(straight["training_log"]) == 4
    # last 2 checkpoints kept, atomically named
    names = sorted(p.name for p in (root / "ck_ft_straight").iterdir())
    assert names == ["step_00000002", "step_00000004"]


def test_checkpoints_of_other_settings_or_inputs_are_set_aside_not_resumed(world, caplog):
    # Snakemake reruns a job whose params or inputs changed: its old checkpoints can never be
    # resumed, so they move to <checkpoints>.stale and training starts afresh.
    root = world["root"]
    finetune_unet(root, "ft_c", steps=2)
    fresh = finetune_unet(root, "ft_c", steps=4, learning_rate=5e-4)
    assert fresh["resumed_from"] == [] and "learning_rate" in caplog.text
    assert sorted(p.name for p in (root / "ck_ft_c.stale").iterdir()) == [".dginstyle-stage", "step_00000002"]
    again = finetune_unet(root, "ft_c", steps=1)  # the checkpoint at step 4 lies beyond 1 step
    assert again["resumed_from"] == [] and again["steps"] == 1
    # a retrained prior (another training record) invalidates the fine-tune's checkpoints too
    finetune_unet(root, "ft_d", steps=2)
    record = root / "prior" / "dginstyle.json"
    original = record.read_bytes()
    try:
        record.write_bytes(original.replace(b"{", b'{"retrained": true, ', 1))
        assert finetune_unet(root, "ft_d", steps=4)["resumed_from"] == []
    finally:
        record.write_bytes(original)


SCRIPT = """
import argparse, sys
from dginstyle.diffusion import finetune
parser = argparse.ArgumentParser()
finetune.add_cli(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
args.handler(args)
"""


def sigkill_once(command: list[str], ready: Path, timeout: float = 120) -> None:
    """Start `command` (one thread), SIGKILL it as soon as `ready` exists, and check that it was
    still running then and died of the signal."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready.is_dir():
            time.sleep(0.05)
        assert proc.poll() is None, f"finished or failed before the kill: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_training_then_rerun_completes(world):
    root = world["root"]
    ck, out = root / "ck_kill", root / "ft_kill"
    argv = [
        "finetune-unet", "--prior", str(world["prior"]), "--source", str(world["source"]), "--out", str(out),
        "--checkpoints", str(ck), "--steps", "30", "--crop-size", str(CROP), "--learning-rate", "1e-3",
        "--checkpoint-every", "1", "--device", "cpu", "--mixed-precision", "no",
    ]  # fmt: skip
    sigkill_once([sys.executable, "-c", SCRIPT, *argv], ck / "step_00000002")
    assert not out.exists()  # no half-written output
    killed_at = int(sorted(p.name for p in ck.iterdir() if p.name.startswith("step_"))[-1].split("_")[1])
    assert 2 <= killed_at < 30
    parser = argparse.ArgumentParser()  # the rerun, in this process (same CLI path)
    finetune.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.handler(args)
    meta = json.loads((out / models.METADATA).read_text())
    assert meta["steps"] == 30 and meta["resumed_from"] and meta["resumed_from"][0] >= killed_at
    assert len(json.loads((out / finetune.LOSS_CURVE).read_text())["loss"]) == 30


def test_random_resized_crop_covers_the_crop_without_padding():
    image = Image.fromarray(np.arange(64 * 128 * 3, dtype=np.uint32).reshape(64, 128, 3).astype(np.uint8))
    for seed in range(20):
        crop, info = crops.random_resized_crop(image, [0.5, 0.75, 1.0, 2.0], 64, crops.seeded_rng(seed))
        assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
        assert info["ratio_used"] >= max(info["ratio"], 1.0)  # 64 px high: never below 1 for a 64 crop
    # paper scale: GTA 1914x1052, crop 512 -> every listed ratio used as drawn
    for ratio in finetune.DEFAULT_RESIZE_RATIOS:
        assert crops.resize_ratio_for(ratio, 1052, 1914, 512) == ratio
    x = crops.to_unit_range(np.array([[[0, 255, 128]]], dtype=np.uint8))
    assert x.shape == (3, 1, 1) and x.min() == -1.0 and x.max() == 1.0


def test_epoch_order_visits_every_image_once_per_epoch():
    n = 7
    for epoch in range(3):
        assert sorted(finetune._epoch_order(0, epoch * n + i, n) for i in range(n)) == list(range(n))


def test_cli_registers_the_stage_with_the_paper_defaults(tmp_path):
    parser = argparse.ArgumentParser()
    finetune.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["finetune-unet", "--prior", "p", "--source", "s", "--out", "o", "--checkpoints", "c", "--steps", "30000", "--gradient-checkpointing"]
    )
    assert args.handler is finetune._run_cli
    assert (args.learning_rate, args.batch_size, args.gradient_accumulation, args.max_grad_norm) == (2e-6, 1, 2, 1.0)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.adam_epsilon) == (0.9, 0.999, 1e-2, 1e-8)
    assert args.resize_ratios == (0.5, 0.75, 1.0, 1.25, 1.5, 2.0) and args.crop_size == 512
    assert args.mixed_precision == "fp16" and args.gradient_checkpointing and args.device == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune-unet", "--prior", "p", "--source", "s", "--out", "o", "--checkpoints", "c", "--steps", "1", "--resize-ratios", "0,x"])


def test_bad_inputs_are_data_errors(world, tmp_path):
    root = world["root"]
    with pytest.raises(DataError, match="multiple of 4"):
        finetune_unet(root, "ft_bad", steps=1, crop_size=30)
    with pytest.raises(DataError, match="manifest"):
        finetune.finetune_unet(world["prior"], tmp_path, tmp_path / "o", tmp_path / "c", steps=1, **FAST)


def test_progress_lines_give_rate_and_time_left_and_the_closing_line_repeats_the_last(world, caplog):
    """A person follows a long stage in its log: each progress line has the step, the loss, the
    rate and the time left; the closing line reports the same loss as the last progress line."""
    import logging
    import re

    with caplog.at_level(logging.INFO):
        finetune_unet(world["root"], "ft_log", steps=4, log_every=2)
    progress = re.findall(r"finetune-unet: step (\d)/4 loss ([0-9.]+) \([0-9.]+ s/step, (\d+ s) left\)", caplog.text)
    assert [(step, left.endswith(" s")) for step, _, left in progress] == [("2", True), ("4", True)]
    assert progress[-1][2] == "0 s"
    closing = re.search(r"finetune-unet: wrote .* \(4 steps, loss ([0-9.]+) over the last 2\)", caplog.text)
    assert closing and closing.group(1) == progress[-1][1]
    curve = json.loads((world["root"] / "ft_log" / finetune.LOSS_CURVE).read_text())
    assert np.isclose(float(progress[-1][1]), np.mean(curve["loss"][-2:]), atol=1e-5)


def test_duration_reads_at_a_glance():
    assert [finetune.duration(s) for s in (0, 89.4, 90, 3000, 5399, 5400, 12600)] == ["0 s", "89 s", "2 min", "50 min", "90 min", "1.5 h", "3.5 h"]
    assert finetune.recent_mean([4.0, 1.0, 2.0], 2) == 1.5 and finetune.recent_mean([4.0], 0) == 4.0
    assert np.isnan(finetune.recent_mean([], 5))


def test_the_loss_curve_names_what_the_unet_predicts(world, tmp_path):
    """The curve panel's title says which MSE was minimised: the noise or the velocity."""
    from dginstyle import curves

    meta = json.loads((world["unet"] / models.METADATA).read_text())
    curve = json.loads((world["unet"] / finetune.LOSS_CURVE).read_text())
    assert meta["prediction_type"] == curve["target"] == "epsilon"
    assert curves.read_generator_curve(world["unet"])[2] == "noise (epsilon) MSE"
    assert json.loads((world["controlnet"] / finetune.LOSS_CURVE).read_text())["target"] == "epsilon"
    for target, name in (("v_prediction", "velocity MSE"), (None, "loss")):
        folder = tmp_path / str(target)
        folder.mkdir()
        (folder / finetune.LOSS_CURVE).write_text(json.dumps({"step": [1, 2], "loss": [1.0, 0.5], **({"target": target} if target else {})}))
        assert curves.read_generator_curve(folder)[2] == name
