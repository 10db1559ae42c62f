"""MRLF: condition and mask, the batched sampler against the per-view reference, generate_shard."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dginstyle.data.minicity import prepare_minicity
from dginstyle.diffusion import generate, models, mrlf
from dginstyle.diffusion.layouts import select_layouts
from dginstyle.io import DataError, mark

FAST = mrlf.MRLFSettings(steps=3, scale=2, window=8, stride=4, area_threshold=60, guidance_scale=7.5, max_batch=4)


def build_world(root: Path) -> dict:
    """A tiny generator, a miniature source and a 6-pair plan under `root`."""
    gen = generate.tiny_generator(root / "gen")
    source = root / "game"
    prepare_minicity(source, "game", {"train": 16}, 0, 128, 64, 1, None, 12)
    plan = root / "plan.jsonl"
    select_layouts(source, plan, num_pairs=6, crop_size=32, rcs_min_pixels=12, seed=0)
    return {"root": root, "gen": gen, "source": source, "plan": plan}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("mrlf"))


@pytest.fixture(scope="module")
def components(world):
    return generate.load_generator(world["gen"], torch.device("cpu"))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _street(height=32, width=48):
    """sky on top, road below, a pole and a few ignore pixels."""
    label = np.zeros((height, width), np.uint8)
    label[: height // 3] = 10
    label[height // 2 :, 5:8] = 5
    label[0, :3] = 255
    return label


# ----------------------------------------------------------------------------- condition, mask, views


def test_one_hot_condition():
    label = np.array([[0, 18, 255], [3, 3, 255]], np.uint8)
    c = mrlf.one_hot_condition(label)
    assert c.shape == (1, 20, 2, 3) and set(c.unique().tolist()) == {0.0, 1.0}
    assert (c.sum(1) == 1).all()
    assert c[0, 0, 0, 0] == 1 and c[0, 18, 0, 1] == 1 and c[0, 19, 0, 2] == 1 and c[0, 19, 1, 2] == 1 and c[0, 3, 1, :2].tolist() == [1, 1]
    with pytest.raises(ValueError, match="19"):
        mrlf.one_hot_condition(np.array([[19]], np.uint8))


def test_large_region_mask_by_hand():
    label = np.full((8, 8), 255, np.uint8)  # a huge ignore region never counts
    for i in range(5):
        label[i, i] = 1  # 5 px of class 1, connected only diagonally (8-connectivity)
    label[6, 0:3] = 2  # two separate 3-px pieces of class 2: each too small
    label[6, 5:8] = 2
    label[0, 5:7] = 3  # 2 px of class 3
    mask = mrlf.large_region_mask(label, 4)
    expected = np.zeros((8, 8), bool)
    for i in range(5):
        expected[i, i] = True
    assert (mask == expected).all()
    assert not mrlf.large_region_mask(label, 5).any()  # area must exceed A strictly
    assert (mrlf.large_region_mask(label, 1) == ((label != 255) & (label != 0))).all()


@pytest.mark.parametrize("size,window,stride", [((12, 20), 8, 5), ((16, 16), 8, 4), ((6, 30), 8, 3), ((9, 9), 4, 4)])
def test_views_cover_the_latent(size, window, stride):
    views = mrlf.view_windows(*size, window, stride)
    cover = np.zeros(size, int)
    for y, x, h, w in views:
        assert h == min(window, size[0]) and w == min(window, size[1]) and y + h <= size[0] and x + w <= size[1]
        cover[y : y + h, x : x + w] += 1
    assert (cover > 0).all()
    assert len(mrlf.view_windows(128, 128, 64, 8)) == 81 and len(mrlf.view_windows(128, 128, 64, 16)) == 25


def test_ddim_step_matches_diffusers():
    scheduler = models.noise_scheduler("ddim")
    scheduler.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 5, 5, generator=g), torch.randn(1, 4, 5, 5, generator=g)
    for t in (951, 501, 1):
        ours = mrlf.ddim_step(x, eps, mrlf.alpha_bar(scheduler, t), mrlf.alpha_bar(scheduler, t - 50))
        theirs = scheduler.step(eps, t, x, eta=0.0).prev_sample
        assert torch.allclose(ours, theirs, atol=1e-5)


# ----------------------------------------------------------------------------- sampler


def test_batched_equals_per_view_loop_reference(components):
    label = _street()
    for settings in (FAST, replace(FAST, scale=1, window=4, stride=3, guidance_scale=1.0, fusion_timestep="next_step")):
        loop = mrlf.sample(components, label, "road sky pole", 5, replace(settings, views="loop", skip_masked_views=False))
        batched = mrlf.sample(components, label, "road sky pole", 5, replace(settings, skip_masked_views=False))
        for key in ("z_lo", "z_init", "z_hi"):
            assert torch.allclose(loop[key], batched[key], atol=1e-4, rtol=1e-4), key
        assert np.abs(loop["image"].astype(int) - batched["image"].astype(int)).max() <= 1


def test_skipping_views_inside_the_mask_is_exact(components):
    label = _street()
    stats_skip, stats_all = mrlf.SamplerStats(), mrlf.SamplerStats()
    skip = mrlf.sample(components, label, "road sky pole", 2, FAST, stats_skip)
    full = mrlf.sample(components, label, "road sky pole", 2, replace(FAST, skip_masked_views=False), stats_all)
    assert stats_skip.views_skipped > 0 and stats_skip.unet_samples < stats_all.unet_samples
    assert torch.allclose(skip["z_hi"], full["z_hi"], atol=1e-5)
    assert np.abs(skip["image"].astype(int) - full["image"].astype(int)).max() <= 1
    # the fusion really acts: inside M the result follows z_init, so another A changes it
    other = mrlf.sample(components, label, "road sky pole", 2, replace(FAST, area_threshold=10**6))
    assert not torch.allclose(other["z_hi"], full["z_hi"], atol=1e-3)


@pytest.mark.parametrize("height,width,scale", [(32, 32, 1), (48, 48, 2), (32, 48, 3), (48, 32, 2)])
def test_any_crop_size_and_scale(components, height, width, scale):
    label = _street(height, width)
    stats = mrlf.SamplerStats()
    out = mrlf.sample(components, label, "road sky", 1, replace(FAST, scale=scale, steps=2), stats)
    assert out["image"].shape == (height, width, 3) and out["image"].dtype == np.uint8
    assert out["z_hi"].shape == (1, 4, height * scale // 4, width * scale // 4)
    assert stats.views == len(mrlf.view_windows(height * scale // 4, width * scale // 4, 8, 4))


def test_plain_mode_is_pass_one_and_seeded(components):
    label = _street()
    a = mrlf.generate_image(components, label, "road", 7, replace(FAST, mode="plain"))
    b = mrlf.sample(components, label, "road", 7, FAST)
    c = mrlf.generate_image(components, label, "road", 8, replace(FAST, mode="plain"))
    assert (a == b["x_lo"]).all() and not (a == c).all()
    with pytest.raises(ValueError, match="divisible"):
        mrlf.generate_image(components, _street(30, 32), "road", 0, FAST)


@pytest.mark.parametrize("spacing, timesteps", [("leading", [751, 501, 251, 1]), ("trailing", [999, 749, 499, 249])])
def test_timestep_spacing_walks_the_schedulers_timesteps(components, monkeypatch, spacing, timesteps):
    """Each DDIM step goes from one timestep of the spacing to the next, the last to the final
    alpha; "trailing" starts from pure noise (t = 999), "leading" (SD's, the default) at 751."""
    steps = []
    real_step = mrlf.ddim_step

    def spy(x, eps, a_t, a_prev):
        steps.append((round(float(a_t), 7), round(float(a_prev), 7)))
        return real_step(x, eps, a_t, a_prev)

    monkeypatch.setattr(mrlf, "ddim_step", spy)
    image = mrlf.generate_image(components, _street(), "road", 3, replace(FAST, mode="plain", steps=4, timestep_spacing=spacing))
    scheduler = components["scheduler"]
    alphas = [round(float(mrlf.alpha_bar(scheduler, t)), 7) for t in timesteps + [-1]]
    assert list(dict.fromkeys(steps)) == list(zip(alphas[:-1], alphas[1:]))
    assert scheduler.config.timestep_spacing == "leading"  # the generator's own scheduler is left alone
    if spacing == "trailing":  # another start, another image
        leading = mrlf.generate_image(components, _street(), "road", 3, replace(FAST, mode="plain", steps=4))
        assert not (image == leading).all()
    with pytest.raises(ValueError, match="timestep_spacing"):
        replace(FAST, timestep_spacing="linspace")


# ----------------------------------------------------------------------------- generate_shard


def _shard_kwargs(world, out, **kw):
    args = dict(
        generator=world["gen"], plan=world["plan"], source=world["source"], shard=0, num_shards=1, out=out,
        mode="mrlf", scale=2, steps=3, guidance_scale=7.5, controlnet_scale=1.0, window=8, stride=4,
        area_threshold=60, fusion_timestep="previous_tick", max_batch=4, device="cpu",
    )
    args.update(kw)
    return args


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".png", ".jsonl") and p.name != "contact_sheet.png"}


def test_generate_shard_end_to_end(world, one_thread, tmp_path):
    out = tmp_path / "gen" / "0"
    manifest = generate.generate_shard(**_shard_kwargs(world, out, num_shards=2))
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 2, 4] and manifest["pairs"] == 3
    assert all(r["seed"] == r["id"] and r["mode"] == "mrlf" and r["crop"] and r["rare_class"] for r in rows)
    assert (out / "contact_sheet.png").is_file() and (out / "manifest.json").is_file()
    assert not generate.partial_dir(out).exists()
    from dginstyle.io import read_label_png
    from PIL import Image

    for r in rows:
        label = read_label_png(out / "labels" / f"{r['id']}.png")
        with Image.open(out / "images" / f"{r['id']}.png") as img:
            assert img.mode == "RGB" and img.size == (32, 32)
        assert label.shape == (32, 32)
    # same config -> identical files (CPU); a complete shard is not redone
    again = tmp_path / "again" / "0"
    generate.generate_shard(**_shard_kwargs(world, again, num_shards=2))
    assert _files(out) == _files(again)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    generate.generate_shard(**_shard_kwargs(world, out, num_shards=2))
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    # the CLI flags
    import argparse

    parser = argparse.ArgumentParser()
    generate.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["generate", "--generator", str(world["gen"]), "--plan", str(world["plan"]), "--source", str(world["source"]),
         "--shard", "1", "--num-shards", "2", "--out", str(tmp_path / "cli" / "1"), "--mode", "plain", "--scale", "2",
         "--steps", "2", "--guidance-scale", "3", "--controlnet-scale", "0.5", "--window", "8", "--stride", "4",
         "--area-threshold", "60", "--fusion-timestep", "next_step", "--max-batch", "2", "--device", "cpu"]
    )
    args.handler(args)
    assert [json.loads(x)["id"] for x in (tmp_path / "cli" / "1" / "pairs.jsonl").read_text().splitlines()] == [1, 3, 5]


def test_resume_after_sigkill(world, one_thread, tmp_path):
    ref = tmp_path / "ref" / "0"
    kw = _shard_kwargs(world, ref, stride=2, steps=4)
    generate.generate_shard(**kw)

    out = tmp_path / "run" / "0"
    partial = generate.partial_dir(out)
    proc = start_generate_until_pairs(world, out, 2)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists() and partial.is_dir()
    done = (partial / "pairs.jsonl").read_text().count("\n")
    assert 2 <= done < 6
    # make the worst case certain: a torn row and the files of an uncommitted pair
    shutil.copy(partial / "images" / "0.png", partial / "images" / "5.png")
    (partial / "labels" / ".5.png.tmp").write_bytes(b"half")
    with open(partial / "pairs.jsonl", "a") as handle:
        handle.write('{"id": 5, "seed"')

    generate.generate_shard(**replace_out(kw, out))
    assert not partial.exists()
    assert _files(out) == _files(ref)
    rows = (out / "pairs.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in rows] == list(range(6))


def start_generate_until_pairs(world, out: Path, pairs: int, timeout: float = 120) -> subprocess.Popen:
    """Start `dginstyle generate` (the settings of `_shard_kwargs(stride=2, steps=4)`) on one
    thread and return it, still running, once its partial shard has committed `pairs` pairs."""
    command = [sys.executable, "-m", "dginstyle", "generate", "--generator", str(world["gen"]),
               "--plan", str(world["plan"]), "--source", str(world["source"]), "--out", str(out), "--steps", "4",
               "--window", "8", "--stride", "2", "--area-threshold", "60", "--max-batch", "4", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    committed = generate.partial_dir(out) / "pairs.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if committed.is_file() and committed.read_text().count("\n") >= pairs:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        raise AssertionError(f"generate ended before {pairs} pairs were committed: {proc.stderr.read()[-2000:]}")
    return proc


def replace_out(kw, out):
    return {**kw, "out": out}


def test_changed_config_restarts_partial(world, tmp_path):
    out = tmp_path / "s" / "0"
    partial = generate.partial_dir(out)
    partial.mkdir(parents=True)
    mark(partial, "generate")  # a partial shard an earlier run of generate left
    (partial / "run.json").write_text(json.dumps({"something": "else"}))
    (partial / "pairs.jsonl").write_text('{"id": 0}\n')
    generate.generate_shard(**_shard_kwargs(world, out, mode="plain", steps=2, num_shards=3))
    assert [json.loads(x)["id"] for x in (out / "pairs.jsonl").read_text().splitlines()] == [0, 3]


def test_bad_generator_folders(world, tmp_path):
    missing = tmp_path / "nocn"
    shutil.copytree(world["gen"], missing)
    shutil.rmtree(missing / "controlnet")
    with pytest.raises(DataError, match=r"nocn/controlnet: ControlNet folder not found"):
        generate.generate_shard(**_shard_kwargs(world, tmp_path / "o1", generator=missing))

    wrong = generate.tiny_generator(tmp_path / "rgb", conditioning_channels=3)
    with pytest.raises(DataError, match=r"rgb/controlnet/config.json: ControlNet has conditioning_channels=3"):
        generate.generate_shard(**_shard_kwargs(world, tmp_path / "o2", generator=wrong))

    plan = tmp_path / "odd.jsonl"
    select_layouts(world["source"], plan, num_pairs=2, crop_size=30, rcs_min_pixels=12, seed=0)
    with pytest.raises(DataError, match=r"odd.jsonl: pair 0: crop 30x30 is not divisible by the VAE downsample factor 4"):
        generate.generate_shard(**_shard_kwargs(world, tmp_path / "o3", plan=plan))
    with pytest.raises(DataError, match="generator folder not found"):
        generate.generate_shard(**_shard_kwargs(world, tmp_path / "o4", generator=tmp_path / "nothing"))
