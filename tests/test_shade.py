"""SHADE style hallucination (dginstyle/segmentation/shade.py): the hallucinated features carry
the mixed basis statistics, the JS style consistency, farthest point sampling, gradients, the
plain saved model, a 2-iteration HRDA training with SHADE that evaluates and resumes with its
basis, and the config wiring (only the experiment that asks for SHADE gets the flags).
Tiny models, 32x32 crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("mmseg")

from dginstyle.io import DataError  # noqa: E402
from dginstyle.labels import NUM_CLASSES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CROP = (32, 32)
CAR, ROAD = 13, 0


# The model builder, labels-to-samples helper and registry fixture of the other segmentation
# extras' tests (registry: a fixture, imported so pytest finds it here too).
from test_seg_extras import build as build_model, registry, samples_for  # noqa: E402, F401


def build(registry, name: str = "daformer_tiny"):
    """A seeded model of `name` at this file's crop."""
    return build_model(registry, name, CROP)


def data_batches(count: int = 4, crop=CROP):
    """mmengine data batches (uint8-range images, as the data preprocessor expects)."""
    torch.manual_seed(3)
    labels = torch.full((2, *crop), ROAD)
    return [dict(inputs=[torch.rand(3, *crop) * 255 * (1 + i) for _ in range(2)], data_samples=samples_for(labels)) for i in range(count)]


def attached(registry, name="daformer_tiny", teacher=None, rc_weight=0.0):
    from dginstyle.segmentation.shade import StyleHallucination

    model = build(registry, name)
    shade = StyleHallucination(teacher, rc_weight=rc_weight).attach(model)
    shade.refresh_basis(model, data_batches())
    model.train()
    return model, shade


# ------------------------------------------------------------------------------ the SHM itself


@pytest.mark.parametrize("layout", ["nchw", "nlc"])
def test_hallucinated_features_carry_the_mixed_basis_statistics(layout):
    from dginstyle.segmentation.shade import channel_style, hallucinate

    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 7) * 4 + 2 if layout == "nchw" else torch.randn(3, 42, 5) * 4 + 2
    basis_mean, basis_std = torch.randn(4, 5), torch.rand(4, 5) + 0.5
    weights = torch.distributions.Dirichlet(torch.full((4,), 0.5)).sample((3,))
    out = hallucinate(x, basis_mean, basis_std, weights, layout)
    mean, std = channel_style(out, layout)
    torch.testing.assert_close(mean, weights @ basis_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, weights @ basis_std, atol=1e-5, rtol=1e-5)
    # a one-hot weight gives that basis style exactly; the content (normalised map) is x's
    one_hot = torch.eye(4)[[2, 0, 3]]
    out = hallucinate(x, basis_mean, basis_std, one_hot, layout)
    torch.testing.assert_close(channel_style(out, layout)[0], basis_mean[[2, 0, 3]], atol=1e-5, rtol=1e-5)
    dims = (2, 3) if layout == "nchw" else (1,)
    standardised = lambda t: (t - t.mean(dim=dims, keepdim=True)) / t.std(dim=dims, keepdim=True)  # noqa: E731
    torch.testing.assert_close(standardised(out), standardised(x), atol=1e-4, rtol=1e-4)


def test_the_attached_shm_doubles_the_batch_with_basis_mixes_after_stage_one(registry):
    """Inside a training loss the stage-1 output is [x; x restyled by the drawn mixes]; the
    second half's channel statistics are the Dirichlet weights times the basis."""
    from dginstyle.segmentation.shade import channel_style

    model, shade = attached(registry)
    assert shade.basis_mean.shape == (8, 16) == shade.basis_std.shape  # 8 collected styles < K = 64: all of them, 16 channels
    seen = []
    model.backbone.layers[1][0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    labels = torch.full((2, *CROP), ROAD)
    model.loss(torch.randn(2, 3, *CROP), samples_for(labels))
    tokens = seen[0]  # stage 2's patch embedding input: stage 1's features, (2B, C, h, w)
    assert tokens.shape[0] == 4
    mean, std = channel_style(tokens[2:])
    weights = shade.last_weights
    assert weights.shape == (2, 8) and torch.allclose(weights.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(mean, weights @ shade.basis_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(std, weights @ shade.basis_std, atol=1e-4, rtol=1e-4)
    # outside a training loss the backbone is untouched: one output per image
    seen.clear()
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, *CROP), mode="tensor")
    assert seen[0].shape[0] == 2


def test_shm_on_resnet_sits_after_the_stem(registry):
    from dginstyle.segmentation.shade import insertion_point

    model, shade = attached(registry, "deeplabv2_tiny")
    module, layout = insertion_point(model.backbone)
    assert module is model.backbone.maxpool and layout == "nchw"
    seen = []
    model.backbone.layer1.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    losses = model.loss(torch.randn(2, 3, *CROP), samples_for(torch.full((2, *CROP), ROAD)))
    assert seen[0][0] == 4 and torch.isfinite(losses["loss_style_consistency"])


def test_js_divergence_is_zero_for_identical_predictions_and_positive_otherwise():
    from dginstyle.segmentation.shade import js_divergence

    torch.manual_seed(0)
    a = torch.randn(2, NUM_CLASSES, 4, 5)
    assert abs(js_divergence(a, a.clone()).item()) < 1e-7
    assert abs(js_divergence(a, a + 3.0).item()) < 1e-7  # the same softmax
    b = torch.randn(2, NUM_CLASSES, 4, 5)
    value = js_divergence(a, b).item()
    assert value > 0 and value == pytest.approx(js_divergence(b, a).item(), rel=1e-5)
    # by hand: mean over pixels of (KL(p||m) + KL(q||m)) / 2
    p, q = a.softmax(1), b.softmax(1)
    m = (p + q) / 2
    expected = (((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)) / 2).mean()
    assert value == pytest.approx(expected.item(), rel=1e-4)
    assert value <= np.log(2) + 1e-6


def test_farthest_point_sampling_picks_spread_out_styles():
    from dginstyle.segmentation.shade import farthest_point_sampling

    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 10.0], [0.05, 0.05], [10.0, 10.0]])
    picked = farthest_point_sampling(points, 4, torch.Generator().manual_seed(0))
    assert len(set(picked)) == 4 and {2, 3, 5} <= set(picked)
    assert farthest_point_sampling(points, 10) == list(range(6))


def test_gradients_flow_through_both_halves_and_the_style_consistency(registry):
    model, shade = attached(registry)
    labels = torch.full((2, *CROP), ROAD)
    labels[:, :16] = CAR
    losses = model.loss(torch.randn(2, 3, *CROP), samples_for(labels))
    assert losses["loss_style_consistency"].item() > 0
    model.zero_grad()
    losses["loss_style_consistency"].backward()
    stage1 = list(model.backbone.layers[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage1)  # through the normalised content
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decode_head.parameters())
    model.zero_grad()
    losses = model.loss(torch.randn(2, 3, *CROP), samples_for(labels))
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert shade.basis_mean.grad is None and not shade.basis_mean.requires_grad


def test_retrospection_consistency_against_the_frozen_copy(registry):
    from dginstyle.segmentation.feature_distance import frozen_backbone
    from dginstyle.segmentation.shade import RC_KEY, StyleHallucination

    source = build(registry)
    teacher = frozen_backbone(source.backbone, {k: v.clone() for k, v in source.backbone.state_dict().items()}, Path("w"))
    model, shade = attached(registry, teacher=teacher, rc_weight=1.0)
    labels = torch.full((2, *CROP), CAR)  # every feature pixel a thing
    losses = model.loss(torch.randn(2, 3, *CROP), samples_for(labels))
    # the model holds the teacher's weights: the original half agrees with it, the hallucinated
    # half does not, so the mean over both is positive
    assert losses[RC_KEY].item() > 0
    model.zero_grad()
    losses[RC_KEY].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in model.decode_head.parameters())
    # no thing pixel: zero
    losses = model.loss(torch.randn(2, 3, *CROP), samples_for(torch.full((2, *CROP), ROAD)))
    assert losses[RC_KEY].item() == 0.0
    with pytest.raises(DataError, match="retrospection consistency needs the frozen ImageNet backbone"):
        StyleHallucination(None, rc_weight=1.0)


def test_feature_distance_covers_both_halves_of_the_doubled_batch(registry):
    """With SHADE on, the ImageNet feature distance compares both halves with the frozen copy's
    features of the original images (the DGInStyle release's retrospection term)."""
    from dginstyle.segmentation.feature_distance import LOSS_KEY, FeatureDistance, frozen_backbone
    from dginstyle.segmentation.shade import StyleHallucination

    model = build(registry)
    teacher = frozen_backbone(model.backbone, {k: v.clone() for k, v in model.backbone.state_dict().items()}, Path("w"))
    FeatureDistance(teacher).attach(model)
    shade = StyleHallucination(None, rc_weight=0.0).attach(model)  # after the feature distance, as train.py does
    shade.refresh_basis(model, data_batches())
    model.train()
    student = []
    model.backbone.register_forward_hook(lambda module, args, output: student.append(output[-1].detach()))
    inputs = torch.randn(2, 3, *CROP)
    losses = model.loss(inputs, samples_for(torch.full((2, *CROP), CAR)))  # every feature pixel a thing
    assert student[0].shape[0] == 4
    with torch.no_grad():
        reference = teacher(inputs)[-1]
    expected = 0.005 * torch.linalg.vector_norm(student[0] - torch.cat([reference, reference]), dim=1).mean()
    assert losses[LOSS_KEY].item() == pytest.approx(expected.item(), rel=1e-5)


def test_attaching_keeps_the_model_plain(registry):
    model = build(registry, "hrda_daformer_tiny")
    keys, params = set(model.state_dict()), {id(p) for p in model.parameters()}
    model.eval()
    image = torch.randn(1, 3, *CROP)
    with torch.no_grad():
        before = model(image, mode="tensor")
    from dginstyle.segmentation.shade import StyleHallucination

    shade = StyleHallucination(None, rc_weight=0.0).attach(model)
    shade.refresh_basis(model, data_batches())
    assert set(model.state_dict()) == keys and {id(p) for p in model.parameters()} == params
    with torch.no_grad():
        torch.testing.assert_close(model(image, mode="tensor"), before)  # inference unchanged
    assert not model.training  # the collection pass restores the mode


# ------------------------------------------------------------------- training run, evaluation


@pytest.fixture(scope="module")
def shade_run(tmp_path_factory, registry):
    """hrda_daformer_tiny, 2 iterations with SHADE (retrospection on) and the feature distance,
    'ImageNet' weights = a tiny backbone's own initialisation."""
    from dginstyle.compat import save_weights
    from dginstyle.data.prepare import prepare
    from dginstyle.segmentation.train import train_segmentation

    root = tmp_path_factory.mktemp("shade")
    common = dict(seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    prepare("minicity", root / "source", domain="game", splits="train=4", **common)
    prepare("minicity", root / "target", domain="cityscapes", splits="val=2", **common)
    torch.manual_seed(5)
    backbone = build(registry, "hrda_daformer_tiny").backbone
    pretrained = root / "mit_tiny_sr4.safetensors"
    save_weights({k: v.contiguous() for k, v in backbone.state_dict().items()}, pretrained, metadata={"format": "test"})
    settings = dict(
        model="hrda_daformer_tiny", batch_size=2, crop_size=CROP, warmup_iterations=1, checkpoint_interval=1, log_interval=1,
        threads=1, pretrained=pretrained, feature_distance=True, shade=True, shade_basis_interval=2, shade_basis_samples=3,
    )  # fmt: skip
    meta = train_segmentation(root / "source", [], root / "run", root / "work", iterations=2, **settings)
    return root, meta, settings


def test_shade_training_logs_its_losses_and_saves_the_plain_model(shade_run, registry):
    from mmseg.apis import init_model

    from dginstyle.compat import load_trusted_checkpoint, load_weights
    from dginstyle.segmentation.hrda_encoder_decoder import HRDAEncoderDecoder
    from dginstyle.segmentation.shade import CHECKPOINT_KEY, RC_KEY, SC_KEY

    root, meta, _ = shade_run
    run = root / "run"
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2]
    for row in rows:
        assert all(np.isfinite(row[k]) and row[k] >= 0 for k in (SC_KEY, RC_KEY, "loss_imnet_feat_dist", "decode.loss_ce"))
    assert meta["feature_distance"]["extra_backbone_forwards"] == 0  # it reused the (doubled) context features
    shade = meta["shade"]
    assert shade["insertion"] == "MiT stage 1 output" and shade["concentration"] == 0.0156
    assert shade["style_consistency_weight"] == 10.0 and shade["retrospection_weight"] == 1.0
    # at the start, then at iteration 2 (interval 2) the loop ends before it runs; 3 images each
    assert shade["basis_refreshes"] == 1 and shade["styles_collected_this_process"] == [3] and shade["basis_size"] == 3
    config = (run / "config.py").read_text()
    assert "shade" in config and "StyleHallucination" not in config
    state, _ = load_weights(run / "weights.safetensors")
    assert set(state) == set(build(registry, "hrda_daformer_tiny").state_dict())
    checkpoint = load_trusted_checkpoint(root / "work" / "iter_2.pth", root / "work")
    assert set(checkpoint["state_dict"]) == set(state) and checkpoint[CHECKPOINT_KEY]["mean"].shape == (3, 16)
    model = init_model(str(run / "config.py"), None, device="cpu")
    model.load_state_dict(state, strict=True)
    assert isinstance(model, HRDAEncoderDecoder) and not hasattr(model, "_dginstyle_shade")


def test_shade_run_evaluates(shade_run):
    from dginstyle.segmentation.evaluate import evaluate_segmentation

    root, _, _ = shade_run
    result = evaluate_segmentation(root / "run", root / "target", "val", root / "metrics.json", test_size=(64, 32))
    assert result["num_images"] == 2 and np.isfinite(result["mIoU"])


def test_a_resumed_shade_run_keeps_its_basis_and_refreshes_on_schedule(shade_run, tmp_path):
    """Resumed at iteration 2 (a multiple of the interval 2): the basis comes back from the
    checkpoint, and the refresh due at iteration 2 runs, as in an uninterrupted run."""
    from dginstyle.segmentation.train import train_segmentation

    root, _, settings = shade_run
    meta = train_segmentation(root / "source", [], tmp_path / "run", root / "work", iterations=3, **settings)
    assert meta["resumed_at_iteration"] == 2
    assert meta["shade"]["basis_refreshes"] == 2 and meta["shade"]["styles_collected_this_process"] == [3]


def test_shade_retrospection_without_pretrained_weights_is_refused(shade_run, tmp_path):
    from dginstyle.segmentation.train import train_segmentation

    root, _, settings = shade_run
    settings = {**settings, "pretrained": None, "feature_distance": False}
    with pytest.raises(DataError, match="--shade with --shade-rc-weight > 0 needs --pretrained"):
        train_segmentation(root / "source", [], tmp_path / "run", tmp_path / "work", iterations=2, **settings)
    assert not (tmp_path / "work").exists()
    with pytest.raises(DataError, match="concentration must be > 0"):
        train_segmentation(root / "source", [], tmp_path / "run", tmp_path / "work", iterations=2, **{**settings, "shade_concentration": 0.0})


def test_cli_flags():
    import argparse

    from dginstyle.segmentation import train

    parser = argparse.ArgumentParser()
    train.add_cli(parser.add_subparsers(dest="command"))
    base = ["train-segmentation", "--source", "s", "--out", "o", "--work-dir", "w"]
    args = parser.parse_args(base)
    assert not args.shade and args.shade_basis_styles == 64 and args.shade_concentration == 0.0156
    assert (args.shade_basis_interval, args.shade_basis_samples, args.shade_sc_weight, args.shade_rc_weight) == (4000, None, 10.0, 1.0)
    args = parser.parse_args(base + ["--shade", "--shade-rc-weight", "0", "--shade-basis-samples", "100"])
    assert args.shade and args.shade_rc_weight == 0.0 and args.shade_basis_samples == 100


# ------------------------------------------------------------------------------ config wiring


def smoke() -> dict:
    return yaml.safe_load((REPO / "tests" / "configs" / "smoke.yaml").read_text())


def train_commands(config: dict, tmp_path: Path, name: str) -> dict[str, str]:
    """The train-segmentation command line of every experiment (seed 0), from a dry run."""
    from test_workflow import snakemake, write_config

    configfile = write_config(tmp_path / f"{name}.yaml", config)
    targets = [f"results/segmentation/{e}/seed0" for e in config["experiments"]]
    result = snakemake(*targets, "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "train-segmentation" in line]
    return {e: next(line for line in lines if f"/segmentation/{e}/seed0 " in line) for e in config["experiments"]}


def test_turning_shade_on_changes_only_that_experiments_train_command(tmp_path):
    with_shade = smoke()  # the smoke config trains its tiny HRDA row with SHADE
    base = smoke()
    base["experiments"]["hrda_source_only"]["shade"] = False
    # the smoke world trains from scratch: no retrospection term
    for config in (base, with_shade):
        config["segmentation"].update(shade_retrospection_weight=0.0, shade_basis_interval=500)
    before, after = train_commands(base, tmp_path, "base"), train_commands(with_shade, tmp_path, "shade")
    changed = {e for e in before if before[e] != after[e]}
    assert changed == {"hrda_source_only"}
    assert "--shade " not in before["hrda_source_only"]
    assert "--shade --shade-basis-styles 8 --shade-concentration 0.0156 --shade-basis-interval 500 --shade-sc-weight 10.0 --shade-rc-weight 0.0" in after["hrda_source_only"]


def test_config_refuses_shade_retrospection_without_weights():
    from dginstyle.config import ConfigError, validate_config

    config = smoke()
    config["experiments"]["hrda_source_only"]["shade"] = True
    config["segmentation"]["shade_retrospection_weight"] = 1.0  # SHADE's own; the smoke config has 0
    with pytest.raises(ConfigError, match=r"config key 'segmentation.shade_retrospection_weight'.*'hrda_source_only'"):
        validate_config(config)
    config["segmentation"]["shade_retrospection_weight"] = 0
    config = validate_config(config)
    assert config["experiments"]["hrda_source_only"]["shade"] and not config["experiments"]["source_only"]["shade"]
