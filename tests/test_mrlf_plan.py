"""MRLF, exactly: the settings and their refusals, the view plan's counts, the DDIM and fusion
arithmetic in closed form, and what each sampler call costs (so a changed plan cannot pass)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dginstyle.diffusion import generate, models, mrlf
from test_mrlf import FAST, _street  # the sampler settings and the crop label of the sampler tests


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """A tiny random generator whose ControlNet acts: its zero-initialised output convolutions
    (an untrained ControlNet adds nothing) get small random weights, so the condition, its tiles
    and the ControlNet scale all reach the UNet."""
    parts = generate.load_generator(generate.tiny_generator(tmp_path_factory.mktemp("mrlf_plan") / "gen"), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in parts["controlnet"].parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return parts


# ----------------------------------------------------------------------------- settings


def test_the_defaults_are_the_papers_512_px_generation():
    s = mrlf.MRLFSettings()
    assert s.as_dict() == dict(
        mode="mrlf", scale=2, steps=20, guidance_scale=7.5, controlnet_scale=1.0, window=64, stride=8, area_threshold=20000,
        fusion_timestep="previous_tick", timestep_spacing="leading", max_batch=8, views="batched", skip_masked_views=True,
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mode", "tiled", "mode must be one of ('mrlf', 'plain'), got 'tiled'"),
        ("fusion_timestep", "now", "fusion_timestep must be one of ('previous_tick', 'next_step'), got 'now'"),
        ("timestep_spacing", "linspace", "timestep_spacing must be one of ('leading', 'trailing'), got 'linspace'"),
        ("views", "grid", "views must be one of ('batched', 'loop'), got 'grid'"),
        ("scale", 0, "scale must be >= 1, got 0"),
        ("steps", 0, "steps must be >= 1, got 0"),
        ("window", 0, "window must be >= 1, got 0"),
        ("stride", -2, "stride must be >= 1, got -2"),
        ("max_batch", 0, "max_batch must be >= 1, got 0"),
    ],
)
def test_each_bad_setting_is_refused_by_name(field, value, message):
    with pytest.raises(ValueError) as error:
        mrlf.MRLFSettings(**{field: value})
    assert str(error.value) == message
    for ok in (1, 2):  # the smallest allowed value passes
        if field in ("scale", "steps", "window", "stride", "max_batch"):
            assert getattr(mrlf.MRLFSettings(**{field: ok}), field) == ok


# ----------------------------------------------------------------------------- inputs and views


def test_one_hot_refuses_values_that_are_not_train_ids_and_names_them():
    with pytest.raises(ValueError) as error:
        mrlf.one_hot_condition(np.array([[0, 19, 254], [20, 255, 19]], np.uint8))
    assert str(error.value) == "label holds values [19, 20, 254] that are neither train IDs nor 255"
    c = mrlf.one_hot_condition(np.array([[18, 255]], np.uint8))
    assert c.dtype == torch.float32 and c.shape == (1, 20, 1, 2)


def test_the_large_region_mask_is_per_class_and_eight_connected():
    label = np.full((6, 6), 255, np.uint8)
    label[:3, :3] = 4  # 9 px
    label[3:, 3:] = 4  # 9 px of the same class touching only at a corner: one 18 px component
    label[0, 5] = 7
    assert mrlf.large_region_mask(label, 17).sum() == 18 and not mrlf.large_region_mask(label, 18).any()
    assert mrlf.large_region_mask(label, 17).dtype == bool
    assert not mrlf.large_region_mask(np.full((4, 4), 255, np.uint8), 0).any()


@pytest.mark.parametrize(
    "height, width, window, stride, expected",
    [
        (10, 10, 4, 3, [0, 3, 6]),  # 6 = 10 - 4 is on the stride: no extra start
        (10, 10, 4, 4, [0, 4, 6]),  # the last start added so the border is covered
        (3, 3, 8, 2, [0]),  # a window larger than the latent is clamped to it
        (8, 8, 8, 1, [0]),
    ],
)
def test_view_starts_cover_the_border_once(height, width, window, stride, expected):
    views = mrlf.view_windows(height, width, window, stride)
    size = min(window, height)
    assert views == [(y, x, size, size) for y in expected for x in expected]


def test_view_windows_of_a_rectangle():
    assert mrlf.view_windows(4, 10, 4, 4) == [(0, 0, 4, 4), (0, 4, 4, 4), (0, 6, 4, 4)]


# ----------------------------------------------------------------------------- arithmetic


def test_ddim_arithmetic_in_closed_form():
    x, eps = torch.tensor([2.0]), torch.tensor([0.5])
    a, a_prev = torch.tensor(0.64), torch.tensor(0.81)
    x0 = (2.0 - 0.6 * 0.5) / 0.8
    assert torch.allclose(mrlf.x0_from_epsilon(x, eps, a), torch.tensor([x0]))
    assert torch.allclose(mrlf.ddim_step(x, eps, a, a_prev), torch.tensor([0.9 * x0 + (0.19**0.5) * 0.5]))
    assert torch.allclose(mrlf.add_noise(torch.tensor([3.0]), torch.tensor([-1.0]), a), torch.tensor([0.8 * 3.0 - 0.6]))
    scheduler = models.noise_scheduler("ddim")
    assert mrlf.alpha_bar(scheduler, -1) == scheduler.final_alpha_cumprod
    assert mrlf.alpha_bar(scheduler, 0) == scheduler.alphas_cumprod[0] and mrlf.alpha_bar(scheduler, 999) == scheduler.alphas_cumprod[999]


def test_lanczos_keeps_an_image_of_the_right_size_and_resizes_others():
    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    assert mrlf.lanczos(image, (12, 8)) is image
    assert mrlf.lanczos(image, (6, 4)).shape == (4, 6, 3) and mrlf.lanczos(image, (24, 16)).dtype == np.uint8


def test_check_size_names_the_crop_and_the_factor():
    mrlf.check_size(32, 48, 4)
    for height, width in ((30, 32), (32, 30)):
        with pytest.raises(ValueError) as error:
            mrlf.check_size(height, width, 4)
        assert str(error.value) == f"crop {width}x{height} is not divisible by the VAE downsample factor 4"


# ----------------------------------------------------------------------------- what a sample costs


def test_a_plain_sample_costs_one_batched_call_per_step(components):
    stats = mrlf.SamplerStats()
    out = mrlf.sample(components, _street(), "road", 0, replace(FAST, mode="plain"), stats)
    assert set(out) == {"image", "x_lo", "z_lo"} and out["image"] is out["x_lo"]
    assert (stats.unet_calls, stats.unet_samples, stats.views, stats.views_run, stats.views_skipped) == (3, 6, 0, 3, 0)
    no_cfg = mrlf.SamplerStats()
    mrlf.sample(components, _street(), "road", 0, replace(FAST, mode="plain", guidance_scale=1.0), no_cfg)
    assert (no_cfg.unet_calls, no_cfg.unet_samples) == (3, 3)  # guidance 1: no unconditional half


def test_an_mrlf_sample_costs_what_its_view_plan_says(components):
    label = _street()  # 32 x 48 crop: latent 8 x 12, pass 2 at 16 x 24
    views = mrlf.view_windows(16, 24, 8, 4)
    assert len(views) == 3 * 5
    mask = mrlf.large_region_mask(label, 60)
    m = torch.from_numpy(mask)[None, None].float()
    m = torch.nn.functional.interpolate(m, size=(16, 24), mode="nearest").bool()
    inside = sum(bool(m[..., y : y + h, x : x + w].all()) for y, x, h, w in views)
    assert inside > 0
    active = len(views) - inside
    for settings, calls_per_step, samples_per_step in (
        (FAST, 1 + -(-active // 4), 2 + 2 * active),  # batched: pass 1 + ceil(active / max_batch); x2 for CFG
        (replace(FAST, views="loop"), 2 + 2 * active, 2 + 2 * active),  # loop: one call per view and CFG half
        (replace(FAST, skip_masked_views=False), 1 + -(-len(views) // 4), 2 + 2 * len(views)),
    ):
        stats = mrlf.SamplerStats()
        out = mrlf.sample(components, label, "road sky pole", 4, settings, stats)
        skipped = 0 if not settings.skip_masked_views else inside
        assert stats.views == len(views) and stats.views_skipped == skipped * 3
        assert stats.views_run == 3 * (1 + len(views) - skipped)
        assert (stats.unet_calls, stats.unet_samples) == (3 * calls_per_step, 3 * samples_per_step), settings
        assert set(out) == {"image", "x_lo", "z_lo", "z_init", "z_hi", "mask"} and (out["mask"] == mask).all()
        assert out["z_init"].shape == out["z_hi"].shape == (1, 4, 16, 24) and out["image"].shape == (32, 48, 3)


def test_the_fusion_timestep_guidance_controlnet_scale_prompt_and_condition_change_the_image(components):
    label = _street()
    base = mrlf.sample(components, label, "road", 1, FAST)
    for other in (replace(FAST, fusion_timestep="next_step"), replace(FAST, controlnet_scale=0.0), replace(FAST, guidance_scale=2.0)):
        assert not torch.allclose(mrlf.sample(components, label, "road", 1, other)["z_hi"], base["z_hi"], atol=1e-4), other
    # the prompt reaches the model, and the seed the noise
    assert not torch.allclose(mrlf.sample(components, label, "sky", 1, FAST)["z_hi"], base["z_hi"], atol=1e-4)
    assert torch.equal(mrlf.sample(components, label, "road", 1, FAST)["z_hi"], base["z_hi"])
    shifted = np.roll(label, 5, axis=1)  # the same classes elsewhere: the condition reaches the ControlNet
    assert not torch.allclose(mrlf.sample(components, shifted, "road", 1, replace(FAST, area_threshold=10**6))["z_hi"], mrlf.sample(components, label, "road", 1, replace(FAST, area_threshold=10**6))["z_hi"], atol=1e-4)


def test_inside_the_mask_the_last_fusion_leaves_z_init_noised_to_the_final_timestep(components, monkeypatch):
    """After the last step z_hi = m * add_noise(z_init, noise, a(t_fuse)) + (1 - m) * z: with
    "previous_tick" t_fuse = t_last - 1, so z_hi inside M is z_init up to a tiny noise."""
    label = _street()
    drawn = []
    real = mrlf.randn

    def spy(shape, generator, device):
        noise = real(shape, generator, device)
        drawn.append(noise)
        return noise

    monkeypatch.setattr(mrlf, "randn", spy)
    out = mrlf.sample(components, label, "road", 2, FAST)
    # draws: pass-1 noise, the VAE posterior noise, pass-2 noise, then one fusion noise per step
    assert len(drawn) == 3 + FAST.steps
    scheduler = components["scheduler"]
    scheduler.set_timesteps(FAST.steps)
    t_last = scheduler.timesteps.tolist()[-1]
    m = torch.nn.functional.interpolate(torch.from_numpy(out["mask"])[None, None].float(), size=(16, 24), mode="nearest").bool()
    expected = mrlf.add_noise(out["z_init"], drawn[-1], mrlf.alpha_bar(scheduler, t_last - 1))
    assert torch.allclose(out["z_hi"][m.expand_as(out["z_hi"])], expected[m.expand_as(expected)], atol=1e-6)
    drawn.clear()
    nxt = mrlf.sample(components, label, "road", 2, replace(FAST, fusion_timestep="next_step"))
    expected = mrlf.add_noise(nxt["z_init"], drawn[-1], mrlf.alpha_bar(scheduler, -1))
    assert torch.allclose(nxt["z_hi"][m.expand_as(nxt["z_hi"])], expected[m.expand_as(expected)], atol=1e-6)


def test_generate_image_counts_into_the_callers_stats(components):
    stats = mrlf.SamplerStats()
    image = mrlf.generate_image(components, _street(), "road", 0, replace(FAST, mode="plain"), stats)
    assert image.shape == (32, 48, 3) and (stats.unet_calls, stats.unet_samples, stats.views_run) == (3, 6, 3)
