"""Style Swap step 3 (style-swap): the three variants, metadata, checks, load_generator."""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pytest
import torch
from test_finetune import _one_thread, SPEC, tiny_world  # noqa: F401 (_one_thread: autouse fixture)

from dginstyle.diffusion import models, style_swap
from dginstyle.io import DataError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="module")
def generators(world):
    out = {}
    for variant in style_swap.VARIANTS:
        folder = world["root"] / f"gen_{variant}"
        meta = style_swap.assemble_generator(world["prior"], world["unet"], world["controlnet"], folder, variant)
        out[variant] = (folder, meta)
    return out


def unet_state(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder).state_dict()


def controlnet_state(folder):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder).state_dict()


def test_variants_hold_the_right_weights(world, generators):
    up, us = unet_state(world["prior"] / "unet"), unet_state(world["unet"])
    cn = controlnet_state(world["controlnet"])
    plain, rebase, no_swap = (generators[v][0] for v in ("plain", "rebase", "no_swap"))
    in_plain, in_no_swap, in_rebase = (unet_state(g / "unet") for g in (plain, no_swap, rebase))
    assert all(torch.equal(in_plain[k], up[k]) for k in up)
    assert all(torch.equal(in_no_swap[k], us[k]) for k in us)
    assert all(torch.equal(in_rebase[k], up[k]) for k in up)
    assert any(not torch.equal(up[k], us[k]) for k in up)  # U^S really differs
    for folder in (plain, no_swap):
        kept = controlnet_state(folder / "controlnet")
        assert all(torch.equal(kept[k], cn[k]) for k in cn)
    rebased = controlnet_state(rebase / "controlnet")
    for key in ("conv_in.weight", "time_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight", "mid_block.resnets.0.conv2.bias"):
        torch.testing.assert_close(rebased[key], cn[key] + (up[key] - us[key]), rtol=0, atol=1e-7)
    for key in ("controlnet_cond_embedding.conv_in.weight", "controlnet_down_blocks.0.weight", "controlnet_mid_block.weight"):
        assert torch.equal(rebased[key], cn[key])  # not shared with the UNet: untouched
    meta = generators["rebase"][1]
    assert meta["rebased_modules"] == ["conv_in", "down_blocks", "mid_block", "time_embedding"]
    assert meta["rebased_parameters"] == len([k for k in cn if k in up])


def test_generator_metadata(world, generators):
    for variant, (folder, meta) in generators.items():
        saved = json.loads((folder / models.METADATA).read_text())
        assert saved == json.loads(json.dumps(meta))
        assert saved["kind"] == "generator" and saved["variant"] == variant
        assert saved["unet_in_generator"] == ("U^S" if variant == "no_swap" else "U^P")
        assert saved["prior"] == str(world["prior"].resolve()) and saved["prior_metadata"]["kind"] == "prior"
        assert saved["unet_source"] == str(world["unet"].resolve()) and saved["unet_source_steps"] == 2
        assert saved["controlnet"] == str(world["controlnet"].resolve()) and saved["controlnet_steps"] == 2
        assert saved["conditioning_channels"] == 20
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
        assert sorted(saved["weights_sha256"]) == files and "controlnet/diffusion_pytorch_model.safetensors" in files
        for name, digest in saved["weights_sha256"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
        assert not list(folder.rglob("*.bin"))
        index = json.loads((folder / "model_index.json").read_text())
        assert index["controlnet"] == ["diffusers", "ControlNetModel"] and index["safety_checker"] == [None, None]


def test_load_generator_gives_components_that_sample(generators):
    from dginstyle.diffusion import mrlf

    folder = generators["plain"][0]
    gen = style_swap.load_generator(folder)
    assert set(gen) == {"vae", "text_encoder", "tokenizer", "unet", "scheduler", "controlnet", "metadata"}
    assert gen["metadata"]["variant"] == "plain" and gen["controlnet"].config.conditioning_channels == 20
    label = np.zeros((32, 32), np.uint8)
    label[:, 16:] = 13
    image = mrlf.generate_image(gen, label, "road car", 0, mrlf.MRLFSettings(mode="plain", steps=2))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_wrong_channel_or_mismatched_controlnet_and_missing_folders_are_data_errors(world, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(world["unet"])
    rgb = tmp_path / "cn_rgb"
    ControlNetModel.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=(16, 32)).save_pretrained(rgb)
    with pytest.raises(DataError, match=r"cn_rgb/config.json: ControlNet has conditioning_channels=3, expected 20"):
        style_swap.assemble_generator(world["prior"], world["unet"], rgb, tmp_path / "g1")
    stages = tmp_path / "cn_stages"
    ControlNetModel.from_unet(unet, conditioning_channels=20, conditioning_embedding_out_channels=(16, 32, 96)).save_pretrained(stages)
    with pytest.raises(DataError, match="3 stages but the VAE has 2 levels"):
        style_swap.assemble_generator(world["prior"], world["unet"], stages, tmp_path / "g2")
    wide = tmp_path / "cn_wide"
    other = models.tiny_unet(models.TinySpec(unet_channels=(16, 48), text_hidden=SPEC.text_hidden, norm_groups=8), 16)
    ControlNetModel.from_unet(other, conditioning_channels=20, conditioning_embedding_out_channels=(16, 32)).save_pretrained(wide)
    with pytest.raises(DataError, match=r"cn_wide: ControlNet does not fit the UNet .*block_out_channels"):
        style_swap.assemble_generator(world["prior"], world["unet"], wide, tmp_path / "g3")
    with pytest.raises(DataError, match=r"nope: ControlNet folder not found"):
        style_swap.assemble_generator(world["prior"], world["unet"], tmp_path / "nope", tmp_path / "g4")
    with pytest.raises(DataError, match=r"nope: U\^S \(source UNet\) folder not found"):
        style_swap.assemble_generator(world["prior"], tmp_path / "nope", world["controlnet"], tmp_path / "g5")
    with pytest.raises(DataError, match="generator folder not found"):
        style_swap.load_generator(tmp_path / "nope")
    with pytest.raises(DataError, match="not a generator folder"):
        style_swap.load_generator(world["prior"])
    assert not any((tmp_path / f"g{i}").exists() for i in range(1, 6))


def test_cli():
    parser = argparse.ArgumentParser()
    style_swap.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["style-swap", "--prior", "p", "--unet", "u", "--controlnet", "c", "--variant", "rebase", "--out", "o"])
    assert args.handler is style_swap._run_cli and args.variant == "rebase"
    assert parser.parse_args(["style-swap", "--prior", "p", "--unet", "u", "--controlnet", "c", "--out", "o"]).variant == "plain"
    with pytest.raises(SystemExit):
        parser.parse_args(["style-swap", "--prior", "p", "--unet", "u", "--controlnet", "c", "--variant", "x", "--out", "o"])


def test_look_measures_saturation_and_brightness():
    from dginstyle.diffusion import figures

    grey = np.full((4, 4, 3), 128, np.uint8)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert figures.saturation(grey) == 0 and figures.saturation(np.zeros_like(grey)) == 0 and figures.saturation(red) == 1
    assert figures.look([grey, red]) == {"saturation": 0.5, "brightness": round((128 / 255 + 1 / 3) / 2, 4)}


def test_control_transfer_compares_the_two_generators_on_the_same_crops(world, generators):
    from dginstyle.diffusion import figures

    no_swap, plain = (style_swap.load_generator(generators[v][0]) for v in ("no_swap", "plain"))
    same = figures.control_transfer(no_swap, no_swap, world["source"], crops_count=3)
    assert same["loss_unswapped"] == same["loss_swapped"] and same["crops"] == 3
    assert same["kept"] is None if same["loss_drop_unswapped"] <= 0 else same["kept"] == 1.0
    swapped = figures.control_transfer(no_swap, plain, world["source"], crops_count=3)
    assert swapped["loss_unswapped"] == same["loss_unswapped"]  # same crops, noise and timesteps
    assert swapped["loss_swapped"]["without_control"] != swapped["loss_unswapped"]["without_control"]  # U^P is not U^S
    with pytest.raises(DataError, match="transfer-crops"):
        figures.control_transfer(no_swap, plain, world["source"], crops_count=0)
