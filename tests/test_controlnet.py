"""Style Swap step 2 (train-controlnet): init from U^S, 20-channel condition, RCS crops, prompts,
validation with U^P, resume."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from test_finetune import _one_thread, CROP, FAST, sigkill_once, tiny_world  # noqa: F401 (_one_thread: autouse fixture)

from dginstyle.diffusion import controlnet as cn_stage
from dginstyle.diffusion import crops, finetune, models
from dginstyle.io import DataError
from dginstyle.labels import CLASSES, IGNORE, NUM_CLASSES


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


def train(world, name: str, steps: int, checkpoints: str | None = None, **kw) -> dict:
    root = world["root"]
    kw = {**dict(learning_rate=1e-3, batch_size=2, gradient_accumulation=2, rcs_min_pixels=12, checkpoint_every=100), **FAST, **kw}
    return cn_stage.train_controlnet(
        world["prior"], world["unet"], world["source"], root / name, root / (checkpoints or f"ck_{name}"), steps=steps, **kw
    )


def controlnet_state(folder) -> dict:
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder).state_dict()


def test_controlnet_starts_as_a_copy_of_the_source_unet_encoder(world):
    from diffusers import UNet2DConditionModel

    meta = train(world, "cn_lr0", steps=1, learning_rate=0.0)  # AdamW with lr 0 changes nothing
    out = world["root"] / "cn_lr0"
    config = json.loads((out / "config.json").read_text())
    assert config["conditioning_channels"] == 20 and meta["conditioning_channels"] == 20
    state = controlnet_state(out)
    unet_s = UNet2DConditionModel.from_pretrained(world["unet"]).state_dict()
    unet_p = UNet2DConditionModel.from_pretrained(world["prior"] / "unet").state_dict()
    shared = [k for k in state if k in unet_s]
    assert any(k.startswith("down_blocks.") for k in shared) and any(k.startswith("mid_block.") for k in shared)
    assert {k.split(".")[0] for k in shared} <= {"conv_in", "time_embedding", "down_blocks", "mid_block"}
    for key in shared:
        assert torch.equal(state[key], unet_s[key]), key
    assert any(not torch.equal(state[k], unet_p[k]) for k in shared)  # U^S, not U^P
    zero = [k for k in state if k.startswith(("controlnet_down_blocks", "controlnet_mid_block"))]
    assert zero and all(not state[k].any() for k in zero)


def test_outputs_metadata_crop_statistics_and_prompts(world, monkeypatch):
    samples, prompts = [], []
    original_sample, original_encode = cn_stage.rcs_sample, finetune.encode_prompts

    def sample_spy(*args, **kwargs):
        sample = original_sample(*args, **kwargs)
        samples.append(sample)
        return sample

    def encode_spy(tokenizer, text_encoder, texts, rt):
        prompts.extend(texts)
        return original_encode(tokenizer, text_encoder, texts, rt)

    monkeypatch.setattr(cn_stage, "rcs_sample", sample_spy)
    monkeypatch.setattr(finetune, "encode_prompts", encode_spy)
    meta = train(world, "cn_a", steps=3, checkpoint_every=2)
    out = world["root"] / "cn_a"
    assert len(samples) == 3 * 2 * 2
    # prompts: the class names of each crop, in train-ID order
    assert prompts == [s["prompt"] for s in samples]
    for s in samples:
        present = [c for c in range(NUM_CLASSES) if (s["label"] == c).any()]
        assert s["prompt"] == " ".join(CLASSES[c] for c in present)
        # crops at native resolution, centred on a pixel of the RCS class (clamped to the image)
        top, left, h, w = s["box"]
        y, x = s["pixel"]
        assert (h, w) == (CROP, CROP) and s["label"].shape == (CROP, CROP) and s["image"].shape == (CROP, CROP, 3)
        assert top <= y < top + h and left <= x < left + w
        assert s["label"][y - top, x - left] == s["rcs_class"]
        assert top == min(max(y - CROP // 2, 0), 32 - CROP) and left == min(max(x - CROP // 2, 0), 64 - CROP)
    stats = json.loads((out / cn_stage.CLASS_STATS).read_text())
    assert stats["crops"] == 12 and stats["crops_holding_rcs_class"] == 12
    assert sum(stats["rcs_class_crops"].values()) == 12 and sum(stats["class_pixels"]) == 12 * CROP * CROP
    counts = np.zeros(NUM_CLASSES + 1, np.int64)
    for s in samples:
        counts += np.bincount(np.where(s["label"] == IGNORE, NUM_CLASSES, s["label"]).ravel(), minlength=NUM_CLASSES + 1)
    assert stats["class_pixels"] == counts.tolist()
    # the checkpoint carries the statistics of the crops seen up to its step
    ck_stats = json.loads((world["root"] / "ck_cn_a" / "step_00000002" / cn_stage.CLASS_STATS).read_text())
    assert ck_stats["crops"] == 8
    saved = json.loads((out / models.METADATA).read_text())
    assert saved["kind"] == "controlnet" and saved["steps"] == 3 and saved == json.loads(json.dumps(meta))
    assert saved["unet"] == str(world["unet"].resolve()) and saved["prior"] == str(world["prior"].resolve())
    assert saved["hyperparameters"]["rcs_temperature"] == 0.01 and saved["hyperparameters"]["rcs_min_pixels"] == 12
    assert saved["unet_metadata"]["kind"] == "unet_source"
    assert len(json.loads((out / finetune.LOSS_CURVE).read_text())["loss"]) == 3
    assert (out / "diffusion_pytorch_model.safetensors").is_file()


def test_rcs_favours_rare_classes(world):
    stats = json.loads((world["source"] / "class_stats" / "train.json").read_text())
    sampler = crops.RareClassSampler(stats, 0.01, 12)
    share = np.asarray(stats["class_pixels"], float) / sum(stats["class_pixels"])
    p = sampler.probabilities
    present = [c for c in range(NUM_CLASSES) if sampler.images_by_class[c]]
    assert abs(p.sum() - 1) < 1e-12 and all(p[c] == 0 for c in range(NUM_CLASSES) if c not in present)
    expected = np.exp((1 - share[present]) / 0.01)
    np.testing.assert_allclose(p[present], expected / expected.sum(), rtol=1e-9)
    rarest, commonest = min(present, key=lambda c: share[c]), max(present, key=lambda c: share[c])
    assert p[rarest] > p[commonest]
    # an image is drawn for class c only when it holds more than min_pixels of c
    strict = crops.RareClassSampler(stats, 0.01, 100)
    for c, stems in strict.images_by_class.items():
        assert all(stats["image_class_pixels"][s][c] > 100 for s in stems)
    with pytest.raises(DataError, match="rcs-min-pixels"):
        crops.RareClassSampler(stats, 0.01, 10**9, "stats.json")


def test_one_hot_condition_and_window():
    label = np.array([[0, 18, 255], [5, 5, 7]], dtype=np.uint8)
    hot = crops.one_hot(label)
    assert hot.shape == (20, 2, 3) and hot.dtype == np.float32
    assert (hot.sum(axis=0) == 1).all() and hot[19, 0, 2] == 1 and hot[18, 0, 1] == 1 and hot[5, 1, 0] == 1
    assert crops.class_prompt(label) == "road pole traffic sign bicycle"
    big = np.zeros((100, 200), np.uint8)
    big[50, 100] = 6
    top, left, y, x = crops.centred_window(big, 6, 32, crops.seeded_rng(0))
    assert (top, left, y, x) == (34, 84, 50, 100)  # centred when not at a border
    big[:] = 0
    big[2, 199] = 6
    assert crops.centred_window(big, 6, 32, crops.seeded_rng(0)) == (0, 168, 2, 199)  # clamped
    with pytest.raises(DataError, match="smaller than the crop"):
        crops.centred_window(big, 6, 128, crops.seeded_rng(0))


def test_validation_images_are_made_with_the_prior_unet(world, monkeypatch):
    from dginstyle.diffusion import mrlf

    calls = []
    original = mrlf.generate_image
    prior_unet = controlnet_unet_state(world["prior"] / "unet")

    def spy(components, label, prompt, seed, settings, stats=None):
        calls.append((components["unet"].state_dict(), components["controlnet"], prompt, settings))
        return original(components, label, prompt, seed, settings, stats)

    monkeypatch.setattr(mrlf, "generate_image", spy)
    meta = train(world, "cn_val", steps=2, validation_every=1, validation_count=2, validation_inference_steps=2, validation_prompts=["car road"])
    assert len(calls) == 2 * 2
    for state, controlnet, prompt, settings in calls:
        assert settings.mode == "plain" and settings.steps == 2
        assert all(torch.equal(state[k], prior_unet[k]) for k in prior_unet)  # U^P, the swap
        assert controlnet.config.conditioning_channels == 20
    assert [c[2] for c in calls][:2] == ["car road", "car road"]
    out = world["root"] / "cn_val"
    assert meta["validation"]["unet"] == "prior" and meta["validation"]["images"] == ["validation/step_00000001.png", "validation/step_00000002.png"]
    from PIL import Image

    with Image.open(out / "validation" / "step_00000002.png") as grid:
        assert grid.size == (2 * CROP + 2, 2 * CROP + 2)
    # the control gain: U^S's loss on the validation layouts without and with the ControlNet
    gain = meta["validation"]["control_gain"]
    assert [row[0] for row in gain] == [1, 2] and all(row[1] > 0 and row[2] > 0 for row in gain)


def test_control_gain_is_zero_for_a_fresh_controlnet(world):
    """A ControlNet straight from U^S has zero convolutions: with or without it, the same loss."""
    from dginstyle.diffusion import controlnet as cn, models
    from dginstyle.diffusion.finetune import Runtime

    components = models.load_components(world["prior"])
    unet_s = cn.load_unet_folder(world["unet"])
    fresh = models.controlnet_from_unet(unet_s, components["vae"])
    layouts = [{"image": np.full((CROP, CROP, 3), 128, np.uint8), "label": np.zeros((CROP, CROP), np.uint8), "prompt": "road"}]
    gain = cn.control_gain(dict(components, unet=unet_s, controlnet=fresh), layouts, Runtime.create("cpu", "no", 0), seed=0)
    assert gain["with_control"] == pytest.approx(gain["without_control"], abs=1e-6)


def controlnet_unet_state(folder) -> dict:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder).state_dict()


def test_resume_continues_exactly_like_a_straight_run(world):
    train(world, "cn_straight", steps=2)
    train(world, "cn_split", steps=1)
    resumed = train(world, "cn_split", steps=2)
    assert resumed["resumed_from"] == [1]
    a, b = controlnet_state(world["root"] / "cn_straight"), controlnet_state(world["root"] / "cn_split")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    sa = json.loads((world["root"] / "cn_straight" / cn_stage.CLASS_STATS).read_text())
    sb = json.loads((world["root"] / "cn_split" / cn_stage.CLASS_STATS).read_text())
    assert sa == sb


def test_cli_and_bad_inputs(world, tmp_path):
    parser = argparse.ArgumentParser()
    cn_stage.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["train-controlnet", "--prior", "p", "--unet", "u", "--source", "s", "--out", "o", "--checkpoints", "c", "--steps", "5",
         "--validation-every", "100", "--validation-prompts", "road car", "sky"]
    )  # fmt: skip
    assert args.handler is cn_stage._run_cli
    assert (args.learning_rate, args.batch_size, args.gradient_accumulation) == (1e-5, 2, 4)
    assert (args.rcs_temperature, args.rcs_min_pixels, args.crop_size) == (0.01, 3000, 512)
    assert args.validation_prompts == ["road car", "sky"]
    with pytest.raises(DataError, match="U\\^S.*not found"):
        cn_stage.train_controlnet(world["prior"], tmp_path / "nope", world["source"], tmp_path / "o", tmp_path / "c", steps=1, rcs_min_pixels=12, **FAST)
    with pytest.raises(DataError, match="smaller than the crop size"):
        train(world, "cn_big", steps=1, crop_size=64)


def test_gradient_checkpointing_gives_the_same_training(world):
    train(world, "cn_gc", steps=2, gradient_checkpointing=True)
    if not (world["root"] / "cn_straight").exists():
        train(world, "cn_straight", steps=2)
    a, b = controlnet_state(world["root"] / "cn_straight"), controlnet_state(world["root"] / "cn_gc")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    meta = json.loads((world["root"] / "cn_gc" / models.METADATA).read_text())
    assert meta["gradient_checkpointing"] is True and meta["compute_dtype"] == "torch.float32"


def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(world):
    """Issue 7: a ControlNet job killed at a checkpoint and run again ends with the weights of a
    run that was never interrupted (optimizer, RNG streams and data draws all resume)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    root = world["root"]

    def argv(name: str) -> list[str]:
        return [
            "train-controlnet", "--prior", str(world["prior"]), "--unet", str(world["unet"]), "--source", str(world["source"]),
            "--out", str(root / name), "--checkpoints", str(root / f"ck_{name}"), "--steps", "12", "--crop-size", str(CROP),
            "--learning-rate", "1e-3", "--batch-size", "2", "--gradient-accumulation", "1", "--rcs-min-pixels", "12",
            "--checkpoint-every", "1", "--device", "cpu", "--mixed-precision", "no",
        ]  # fmt: skip

    command = [sys.executable, "-m", "dginstyle"]
    sigkill_once([*command, *argv("cn_killed")], root / "ck_cn_killed" / "step_00000003")
    assert not (root / "cn_killed").exists()  # nothing a rerun could take as complete
    for name in ("cn_killed", "cn_uninterrupted"):  # the rerun, and a run never interrupted
        done = subprocess.run([*command, *argv(name)], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((root / "cn_killed" / models.METADATA).read_text())
    assert meta["steps"] == 12 and meta["resumed_from"]
    resumed = load_file(root / "cn_killed" / "diffusion_pytorch_model.safetensors")
    straight = load_file(root / "cn_uninterrupted" / "diffusion_pytorch_model.safetensors")
    assert resumed.keys() == straight.keys()
    worst = max(float((resumed[k] - straight[k]).abs().max()) for k in resumed)
    assert worst < 1e-5, worst
