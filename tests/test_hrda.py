"""HRDA (HRDAEncoderDecoder + HRDAHead) on mmseg 1.x: the training losses and their weights,
the scale attention, the exactness of the fusion, multi-resolution sliding inference, the
configs, and a train + evaluate run of the tiny HRDA on a prepared miniature dataset.
Tiny models, 32x32 training crops (context 16, detail crop 16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("mmseg")

import torch.nn.functional as F  # noqa: E402

from dginstyle.labels import NUM_CLASSES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CROP = (32, 32)
TINY = ["hrda_daformer_tiny", "hrda_deeplabv2_tiny"]
BOX = (0, 16, 16, 32)  # a detail crop (y1, y2, x1, x2) in a 32x32 crop, on the 16-pixel lattice (both models)


@pytest.fixture(scope="module")
def registry():
    from mmengine.registry import init_default_scope

    from dginstyle.segmentation import register_modules

    register_modules()
    init_default_scope("mmseg")
    from mmseg.registry import MODELS

    return MODELS


def build(registry, name: str, crop=CROP, **head):
    from mmengine.config import ConfigDict

    from dginstyle.segmentation.configs import model_config

    config = model_config(name, crop)
    config["decode_head"].update(head)
    torch.manual_seed(0)
    model = registry.build(ConfigDict(config))  # attribute access to test_cfg, as from a config file
    model.init_weights()
    return model


def batch(n: int = 2, size=CROP):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(1)
    inputs = torch.randn(n, 3, *size)
    samples = []
    for _ in range(n):
        sample = SegDataSample()
        label = torch.randint(0, NUM_CLASSES, (1, *size))
        label[:, :3] = 255
        sample.gt_sem_seg = PixelData(data=label)
        sample.set_metainfo(dict(img_shape=size, ori_shape=size, pad_shape=size))
        samples.append(sample)
    return inputs, samples


def head_outputs(model, inputs, box=BOX):
    y1, y2, x1, x2 = box
    return model.decode_head.forward(
        dict(
            context=model.extract_feat(inputs),
            detail=model.extract_unscaled_feat(inputs[:, :, y1:y2, x1:x2]),
            boxes=[box],
            image_size=tuple(inputs.shape[2:]),
            restrict_attention=True,
        )
    )


def ce(logits, label):
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, label.squeeze(1), ignore_index=255)


# ------------------------------------------------------------------------------- configs


def test_configs_follow_the_dginstyle_hrda_setting():
    from dginstyle.segmentation.catalog import MODELS_
    from dginstyle.segmentation.configs import model_config

    # DGInStyle's HRDA rows: crop 1024, context at 0.5 (-> 512), detail crop 512, lambda_d 0.1
    cfg = model_config("hrda_daformer_mitb5", (1024, 1024))
    assert cfg["type"] == "HRDAEncoderDecoder" and cfg["context_scale"] == 0.5
    assert cfg["hr_crop_size"] == (512, 512) and cfg["crop_coord_divisible"] == 8 and cfg["hr_slide_inference"]
    head = cfg["decode_head"]
    assert head["type"] == "HRDAHead" and head["hr_loss_weight"] == 0.1 and head["lr_loss_weight"] == 0.0
    assert head["attention_classwise"] and head["attention_embed_dims"] == 256 and head["output_stride"] == 4
    assert head["base_head"]["type"] == "DAFormerHead" and head["base_head"]["dilations"] == (1, 6, 12, 18)
    assert cfg["backbone"] == model_config("daformer_mitb5", (1024, 1024))["backbone"]
    assert cfg["test_cfg"] == dict(mode="slide", crop_size=(1024, 1024), stride=(512, 512))
    # DeepLabV2: output stride 8, so detail crops on a 16-pixel lattice
    dlv2 = model_config("hrda_deeplabv2_r101", (1024, 1024))
    assert dlv2["decode_head"]["base_head"]["type"] == "DLV2Head" and dlv2["decode_head"]["output_stride"] == 8
    assert dlv2["crop_coord_divisible"] == 16 and dlv2["hr_crop_size"] == (512, 512)
    # tiny: the miniature crop 64 gives a 32 detail crop, the smoke crop 32 a 16 one
    assert model_config("hrda_daformer_tiny", (64, 64))["hr_crop_size"] == (32, 32)
    assert model_config("hrda_daformer_tiny", (32, 32))["hr_crop_size"] == (16, 16)
    assert model_config("hrda_deeplabv2_tiny", (32, 64))["hr_crop_size"] == (16, 32)
    # a detail crop as large as the crop: the release supervises the context prediction too
    whole = model_config("hrda_daformer_tiny", (8, 8))
    assert whole["hr_crop_size"] == (8, 8) and whole["decode_head"]["lr_loss_weight"] == 0.1
    for name in ("hrda_daformer_mitb5", "hrda_daformer_tiny", "hrda_deeplabv2_r101", "hrda_deeplabv2_tiny"):
        base = name.replace("hrda_", "")
        assert MODELS_[name]["head"] == MODELS_[base]["head"] and MODELS_[name]["head_channels"] == MODELS_[base]["head_channels"]
        assert MODELS_[name]["backbone"] == MODELS_[base]["backbone"] or name == "hrda_daformer_tiny"
    # the tiny DAFormer-HRDA: mit_tiny but for MiT's attention reductions, so that it takes 16 px
    tiny = model_config("hrda_daformer_tiny", (32, 32))["backbone"]
    assert tiny == dict(model_config("daformer_tiny", (32, 32))["backbone"], sr_ratios=[4, 2, 1, 1])
    assert model_config("daformer_tiny", (32, 32))["backbone"]["sr_ratios"] == [8, 4, 2, 1]


def test_smoke_config_trains_hrda():
    from dginstyle.config import validate_config

    config = validate_config(yaml.safe_load((REPO / "tests" / "configs" / "smoke.yaml").read_text()))
    experiment = config["experiments"]["hrda_source_only"]
    assert experiment["data"] == "source" and experiment["model"] == "hrda_daformer_tiny"


# -------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", TINY)
def test_train_step_gives_finite_named_losses_and_gradients(registry, name):
    model = build(registry, name)
    model.train()
    inputs, samples = batch()
    losses = model.loss(inputs, samples)
    loss_terms = {k for k in losses if "loss" in k}
    assert loss_terms == {"decode.loss_ce", "decode.hr.loss_ce"}  # fused + detail (release: no context loss here)
    assert all(torch.isfinite(losses[k]) for k in loss_terms)
    sum(losses[k] for k in loss_terms).backward()
    for part in (model.backbone, model.decode_head.head, model.decode_head.scale_attention):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", TINY)
def test_loss_weights_fused_detail_and_context(registry, name, monkeypatch):
    """loss_ce = (1 - l_hr - l_lr) CE(fused), hr.loss_ce = l_hr CE(detail, cropped labels),
    lr.loss_ce = l_lr CE(context); eval mode so that the forwards are deterministic."""
    inputs, samples = batch()
    label = torch.stack([s.gt_sem_seg.data for s in samples])
    y1, y2, x1, x2 = BOX
    for lr_weight in (0.0, 0.2):
        model = build(registry, name, lr_loss_weight=lr_weight)
        model.eval()
        monkeypatch.setattr(model, "sample_detail_box", lambda h, w: BOX)
        with torch.no_grad():
            losses = model.loss(inputs, samples)
            out = head_outputs(model, inputs)
        expected = {
            "decode.loss_ce": (0.9 - lr_weight) * ce(out["fused"], label),
            "decode.hr.loss_ce": 0.1 * ce(out["detail"], label[:, :, y1:y2, x1:x2]),
        }
        if lr_weight:
            expected["decode.lr.loss_ce"] = lr_weight * ce(out["context"], label)
        assert {k for k in losses if "loss" in k} == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6)


def test_detail_crops_lie_on_the_lattice_and_reach_both_ends(registry):
    model = build(registry, "hrda_daformer_tiny", crop=(32, 64))
    assert model.hr_crop_size == (16, 32) and model.crop_coord_divisible == 8
    torch.manual_seed(0)
    boxes = {model.sample_detail_box(32, 64) for _ in range(200)}
    assert all(y1 % 8 == 0 and x1 % 8 == 0 and y2 - y1 == 16 and x2 - x1 == 32 for y1, y2, x1, x2 in boxes)
    assert {b[0] for b in boxes} == {0, 8, 16} and {b[2] for b in boxes} == {0, 8, 16, 24, 32}


# ------------------------------------------------------------------------ attention and fusion


@pytest.mark.parametrize("name", TINY)
def test_scale_attention_is_in_unit_interval_with_the_context_shape(registry, name):
    model = build(registry, name)
    model.eval()
    inputs, _ = batch()
    with torch.no_grad():
        context = model.extract_feat(inputs)
        att = model.decode_head.get_scale_attention(context)
        lr = model.decode_head.head(context)
    stride = model.decode_head.output_stride
    assert att.shape == lr.shape == (2, NUM_CLASSES, 16 // stride, 16 // stride)  # class-wise, on the context grid
    assert float(att.min()) >= 0 and float(att.max()) <= 1
    single = build(registry, name, attention_classwise=False)
    with torch.no_grad():
        assert single.decode_head.get_scale_attention(single.extract_feat(inputs)).shape == (2, 1, *att.shape[2:])


@pytest.mark.parametrize("name", TINY)
def test_fusion_is_the_context_prediction_outside_the_detail_crop(registry, name, monkeypatch):
    model = build(registry, name)
    model.eval()
    head = model.decode_head
    inputs, _ = batch()
    grid = head.fused_grid(CROP)
    s = head.output_stride
    gy1, gy2, gx1, gx2 = (c // s for c in BOX)
    with torch.no_grad():
        out = head_outputs(model, inputs)
        up_lr = F.interpolate(out["context"], size=grid, mode="bilinear", align_corners=False)
    assert out["fused"].shape == (2, NUM_CLASSES, *grid)
    # the masked attention: zero outside the box's cells on the context grid
    ly1, ly2, lx1, lx2 = (c * out["attention"].shape[2] // CROP[0] for c in BOX)
    box_lr = torch.zeros(out["attention"].shape[2:])
    box_lr[ly1:ly2, lx1:lx2] = 1
    assert out["attention"][:, :, box_lr == 0].abs().max() == 0
    # where the bilinearly upsampled box mask is 0 (outside the detail crop and the one cell
    # around it that interpolation reaches) the fused prediction is the upsampled context one
    up_box = F.interpolate(box_lr[None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
    far, inner = up_box == 0, up_box == 1
    dilated = torch.zeros(grid, dtype=torch.bool)
    dilated[max(gy1 - 1, 0) : gy2 + 1, max(gx1 - 1, 0) : gx2 + 1] = True
    assert far.any() and inner.any() and bool((far | dilated).all())
    torch.testing.assert_close(out["fused"][:, :, far], up_lr[:, :, far], rtol=0, atol=1e-6)
    # attention forced to 0: fused is the context prediction everywhere; forced to 1: where the
    # upsampled box mask is 1, fused is the detail prediction inserted at its box, exactly
    for value in (0.0, 1.0):
        monkeypatch.setattr(head, "get_scale_attention", lambda feats, v=value: torch.full_like(head.head(feats), v))
        with torch.no_grad():
            forced = head_outputs(model, inputs)
        if value == 0.0:
            torch.testing.assert_close(forced["fused"], up_lr, rtol=0, atol=1e-6)
        else:
            inserted = torch.zeros_like(forced["fused"])
            inserted[:, :, gy1:gy2, gx1:gx2] = forced["detail"]
            torch.testing.assert_close(forced["fused"][:, :, inner], inserted[:, :, inner], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- inference


def test_slide_boxes_cover_the_image_with_half_overlap():
    from dginstyle.segmentation.hrda_encoder_decoder import slide_boxes

    boxes = slide_boxes((48, 80), (16, 32), (8, 16))
    assert all(y2 - y1 == 16 and x2 - x1 == 32 for y1, y2, x1, x2 in boxes)
    assert sorted({b[0] for b in boxes}) == [0, 8, 16, 24, 32] and sorted({b[2] for b in boxes}) == [0, 16, 32, 48]
    covered = np.zeros((48, 80), dtype=int)
    for y1, y2, x1, x2 in boxes:
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert slide_boxes((10, 12), (16, 32), (8, 16)) == [(0, 10, 0, 12)]  # a crop larger than the image


@pytest.mark.parametrize("name", TINY)
def test_inference_returns_the_input_size(registry, name):
    from mmengine.config import ConfigDict

    model = build(registry, name)
    model.eval()
    for size, mode in [((48, 80), "slide"), ((32, 32), "whole"), ((36, 52), "whole"), ((36, 52), "slide")]:
        model.test_cfg = ConfigDict(mode="slide", crop_size=CROP, stride=(16, 16)) if mode == "slide" else ConfigDict(mode="whole")
        image = torch.randn(2, 3, *size)
        meta = dict(img_shape=size, ori_shape=size, pad_shape=size, padding_size=[0, 0, 0, 0])
        with torch.no_grad():
            logits = model.inference(image, [dict(meta), dict(meta)])
        assert logits.shape == (2, NUM_CLASSES, *size) and torch.isfinite(logits).all()
    with torch.no_grad():
        tensor = model(torch.randn(1, 3, 32, 64), mode="tensor")
    stride = model.decode_head.output_stride
    assert tensor.shape == (1, NUM_CLASSES, 32 // stride, 64 // stride)


def test_inference_fuses_sliding_detail_windows_and_batching_changes_nothing(registry, monkeypatch):
    model = build(registry, "hrda_daformer_tiny")
    model.eval()
    image = torch.randn(2, 3, 32, 48)
    seen = []
    original = model.extract_unscaled_feat
    monkeypatch.setattr(model, "extract_unscaled_feat", lambda x: (seen.append(tuple(x.shape)), original(x))[1])
    with torch.no_grad():
        fused = model.multires_forward(image)["fused"]
    # the context pass on the downscaled image, then the 3 x 5 detail windows (16, stride 8) of both images at once
    assert seen == [(2, 3, 16, 24), (30, 3, 16, 16)]
    model.hr_slide_batch = 4
    seen.clear()
    with torch.no_grad():
        chunked = model.multires_forward(image)["fused"]
    assert seen[0] == (2, 3, 16, 24) and [s[0] for s in seen[1:]] == [4] * 7 + [2]
    torch.testing.assert_close(chunked, fused, rtol=1e-5, atol=1e-5)
    # each image's prediction does not depend on its batch
    with torch.no_grad():
        alone = model.multires_forward(image[1:])["fused"]
    torch.testing.assert_close(alone[0], fused[1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- training run, evaluation


@pytest.fixture(scope="module")
def hrda_run(tmp_path_factory):
    from dginstyle.data.prepare import prepare
    from dginstyle.segmentation.train import train_segmentation

    root = tmp_path_factory.mktemp("hrda")
    common = dict(seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    prepare("minicity", root / "source", domain="game", splits="train=4", **common)
    prepare("minicity", root / "target", domain="cityscapes", splits="val=2", **common)
    meta = train_segmentation(
        root / "source", [], root / "run", root / "work", model="hrda_daformer_tiny", iterations=2, batch_size=2,
        crop_size=CROP, warmup_iterations=1, checkpoint_interval=2, log_interval=1, threads=1,
    )  # fmt: skip
    return root, meta


def test_saved_hrda_run_loads_with_init_model(hrda_run):
    from mmseg.apis import init_model

    from dginstyle.compat import load_weights
    from dginstyle.segmentation.hrda_encoder_decoder import HRDAEncoderDecoder

    root, meta = hrda_run
    run = root / "run"
    assert meta["model"] == "hrda_daformer_tiny"
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["decode.loss_ce"]) and np.isfinite(r["decode.hr.loss_ce"]) for r in rows)
    state, _ = load_weights(run / "weights.safetensors")
    model = init_model(str(run / "config.py"), None, device="cpu")
    assert isinstance(model, HRDAEncoderDecoder) and model.hr_crop_size == (16, 16)
    model.load_state_dict(state, strict=True)
    assert any(k.startswith("decode_head.scale_attention.") for k in state)
    model.eval()
    image = torch.randn(1, 3, 32, 64)
    meta = dict(img_shape=(32, 64), ori_shape=(32, 64), pad_shape=(32, 64))
    with torch.no_grad():
        logits = model.inference(image, [meta])
    assert logits.shape == (1, NUM_CLASSES, 32, 64) and torch.isfinite(logits).all()


def test_hrda_run_evaluates(hrda_run):
    from dginstyle.segmentation.evaluate import evaluate_segmentation

    root, _ = hrda_run
    result = evaluate_segmentation(root / "run", root / "target", "val", root / "metrics.json", test_size=(64, 32), save_predictions=root / "preds")
    on_disk = json.loads((root / "metrics.json").read_text())
    assert on_disk["num_images"] == 2 and on_disk["inference"]["window_hw"] == [32, 32]
    assert np.isfinite(result["mIoU"]) and np.asarray(on_disk["confusion_matrix"]).sum() > 0
    assert len(list((root / "preds").glob("*.png"))) == 2
