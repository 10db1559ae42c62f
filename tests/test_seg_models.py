"""The segmentation models besides DAFormer: DeepLabV2 (ResNetV1c + DLV2 head) and SegFormer
(MiT + mmseg's SegformerHead), their tiny variants, per-experiment model choice, and the
converter from public MiT / ResNet checkpoints. Tiny models, 64x64 inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("mmseg")

from dginstyle.cli import main  # noqa: E402
from dginstyle.compat import load_weights, save_weights  # noqa: E402
from dginstyle.io import DataError  # noqa: E402
from dginstyle.labels import NUM_CLASSES  # noqa: E402
from dginstyle.segmentation.catalog import BACKBONES, DEEPLABV2_DILATIONS, MODEL_NAMES, MODELS_  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = ["daformer_tiny", "deeplabv2_tiny", "segformer_tiny", "daformer_tiny_os2"]
CROP = (32, 32)


@pytest.fixture(scope="module")
def registry():
    from mmengine.registry import init_default_scope

    from dginstyle.segmentation import register_modules

    register_modules()
    init_default_scope("mmseg")
    from mmseg.registry import MODELS

    return MODELS


def build(registry, name: str, crop=(64, 64)):
    from dginstyle.segmentation.configs import model_config

    torch.manual_seed(0)
    model = registry.build(model_config(name, crop))
    model.init_weights()
    return model


def batch(n: int = 2, size: int = 64):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(1)
    inputs = torch.randn(n, 3, size, size)
    samples = []
    for _ in range(n):
        sample = SegDataSample()
        label = torch.randint(0, NUM_CLASSES, (1, size, size))
        label[:, :4] = 255
        sample.gt_sem_seg = PixelData(data=label)
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        samples.append(sample)
    return inputs, samples


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dginstyle.data.prepare import prepare

    root = tmp_path_factory.mktemp("seg_models")
    prepare("minicity", root / "source", domain="game", splits="train=4", seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    return root


def train(world: Path, name: str, run: str, **extra) -> Path:
    from dginstyle.segmentation.train import train_segmentation

    out = world / run
    train_segmentation(
        world / "source", [], out, world / f"{run}_work", model=name, iterations=1, batch_size=2, crop_size=CROP,
        warmup_iterations=1, checkpoint_interval=1, log_interval=1, threads=1, **extra,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------- the models


def test_every_model_is_in_the_schema_and_the_cli():
    schema = yaml.safe_load((REPO / "dginstyle" / "assets" / "config.schema.yaml").read_text())["properties"]
    assert schema["segmentation"]["properties"]["model"]["enum"] == list(MODEL_NAMES)
    assert schema["experiments"]["additionalProperties"]["properties"]["model"]["enum"] == list(MODEL_NAMES)
    assert set(MODEL_NAMES) == {"daformer_mitb5", "daformer_tiny", "daformer_tiny_os2", "deeplabv2_r101", "deeplabv2_tiny", "segformer_mitb5", "segformer_tiny",
                                "hrda_daformer_mitb5", "hrda_daformer_tiny", "hrda_deeplabv2_r101", "hrda_deeplabv2_tiny"}  # fmt: skip
    # a tiny variant shares its paper model's backbone class and head
    pairs = [("daformer_tiny", "daformer_mitb5"), ("daformer_tiny_os2", "daformer_mitb5"), ("deeplabv2_tiny", "deeplabv2_r101"), ("segformer_tiny", "segformer_mitb5")]
    for tiny, paper in pairs + [("hrda_daformer_tiny", "hrda_daformer_mitb5"), ("hrda_deeplabv2_tiny", "hrda_deeplabv2_r101")]:
        assert MODELS_[tiny]["head"] == MODELS_[paper]["head"]
        assert BACKBONES[MODELS_[tiny]["backbone"]]["kind"] == BACKBONES[MODELS_[paper]["backbone"]]["kind"]
    from dginstyle.cli import build_parser

    parser = build_parser(["train-segmentation"])
    sub = next(a for a in parser._actions if a.dest == "command").choices["train-segmentation"]
    assert tuple(next(a for a in sub._actions if a.dest == "model").choices) == MODEL_NAMES


def test_paper_size_architectures(registry):
    """The configs of the paper models, checked without building the big networks."""
    from dginstyle.segmentation.configs import model_config

    dlv2 = model_config("deeplabv2_r101", (512, 512))
    assert dlv2["backbone"]["type"] == "ResNetV1c" and dlv2["backbone"]["depth"] == 101
    assert dlv2["backbone"]["dilations"] == (1, 1, 2, 4) and dlv2["backbone"]["strides"] == (1, 2, 1, 1)
    assert dlv2["decode_head"]["type"] == "DLV2Head" and dlv2["decode_head"]["in_channels"] == 2048
    assert dlv2["decode_head"]["dilations"] == DEEPLABV2_DILATIONS == (6, 12)
    segformer = model_config("segformer_mitb5", (512, 512))
    assert segformer["backbone"]["num_layers"] == [3, 6, 40, 3]
    assert segformer["decode_head"]["type"] == "SegformerHead" and segformer["decode_head"]["channels"] == 768
    assert segformer["decode_head"]["in_channels"] == [64, 128, 320, 512]


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_trains_one_step(registry, name):
    model = build(registry, name)
    model.train()
    inputs, samples = batch()
    losses = model.loss(inputs, samples)
    loss = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(inputs, mode="tensor")
    # ResNetV1c dilated: output stride 8; MiT heads at stride 4, or 2 with the stride-2 patch embedding
    stride = 8 if name.startswith("deeplabv2") else 2 if name.endswith("_os2") else 4
    assert out.shape == (2, NUM_CLASSES, 64 // stride, 64 // stride)


def test_dlv2_head_output_is_the_sum_of_its_branches(registry):
    head = registry.build(dict(type="DLV2Head", in_channels=12, in_index=0, dilations=(6, 12, 18, 24), num_classes=NUM_CLASSES))
    head.init_weights()
    feats = [torch.randn(2, 12, 9, 11)]
    branches = head.branch_outputs(feats)
    assert len(branches) == 4 and all(b.shape == (2, NUM_CLASSES, 9, 11) for b in branches)
    torch.testing.assert_close(head(feats), branches[0] + branches[1] + branches[2] + branches[3])
    # each branch: one 3x3 atrous conv straight to class logits; no norm, activation or dropout
    for branch, d in zip(head.aspp_modules, (6, 12, 18, 24)):
        assert branch.conv.kernel_size == (3, 3) and branch.conv.dilation == (d, d) and branch.conv.out_channels == NUM_CLASSES
        assert not branch.with_norm and not branch.with_activation
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.ReLU)) for m in head.modules())
    assert not hasattr(head, "conv_seg") and head.dropout is None
    # N(0, 0.01) start, as DAFormer's config initialises its DeepLabV2 branches
    big = registry.build(dict(type="DLV2Head", in_channels=256, num_classes=NUM_CLASSES))
    big.init_weights()
    assert abs(float(big.aspp_modules[0].conv.weight.detach().std()) - 0.01) < 0.001
    with pytest.raises(ValueError, match="sets channels itself"):
        registry.build(dict(type="DLV2Head", in_channels=8, channels=4, num_classes=NUM_CLASSES))


def test_colour_augmentation_is_in_the_training_pipelines(world):
    """SegFormer's row is "with colour augmentation": PhotoMetricDistortion on both the source
    and the generated pipeline. The DGInStyle release gives every model the same data
    pipelines (its gengtaCAug configs, docs/method.md section 3), so DAFormer's have it too."""
    from dginstyle.segmentation.configs import training_config
    from test_segmentation import make_shard

    shard = make_shard(world / "pipeline_shard" / "shard0", 2)
    pipelines = {}
    for name in ("segformer_tiny", "daformer_tiny", "deeplabv2_tiny"):
        cfg = training_config(
            source=world / "source", generated=[shard], work_dir=world / "unused", model=name, iterations=1, batch_size=2,
            crop_size=CROP, learning_rate=1e-4, weight_decay=0.01, warmup_iterations=0, poly_power=1.0, seed=0,
        )  # fmt: skip
        parts = cfg["train_dataloader"]["dataset"]["datasets"]
        pipelines[name] = [[step["type"] for step in part["pipeline"]] for part in parts]
    assert all("PhotoMetricDistortion" in steps for steps in pipelines["segformer_tiny"])
    assert pipelines["daformer_tiny"] == pipelines["segformer_tiny"] == pipelines["deeplabv2_tiny"]


@pytest.mark.parametrize("name", TINY[1:])
def test_saved_run_loads_with_init_model_and_slides(world, name):
    from mmseg.apis import init_model

    run = train(world, name, f"run_{name}")
    state, _ = load_weights(run / "weights.safetensors")
    model = init_model(str(run / "config.py"), None, device="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    assert model.test_cfg.mode == "slide" and tuple(model.test_cfg.crop_size) == CROP
    image = torch.randn(1, 3, 48, 80)  # not a multiple of the 32x32 window
    meta = dict(img_shape=(48, 80), ori_shape=(48, 80), pad_shape=(48, 80))
    with torch.no_grad():
        logits = model.inference(image, [meta])
    assert logits.shape == (1, NUM_CLASSES, 48, 80) and torch.isfinite(logits).all()
    assert f"'{name}'" in (run / "config.py").read_text() or f'"{name}"' in (run / "config.py").read_text()


# ------------------------------------------------------------------------------ config wiring


def _config(**segmentation):
    config = yaml.safe_load((REPO / "tests" / "configs" / "smoke.yaml").read_text())
    config["segmentation"].update(segmentation)
    return config


def test_experiments_choose_their_model_and_pretrained_weights_follow_the_backbone():
    from dginstyle.config import ConfigError, pretrained_weights, validate_config

    config = validate_config(_config())
    assert config["experiments"]["source_only"]["model"] == "daformer_tiny"  # segmentation.model
    assert config["experiments"]["deeplabv2_source_only"]["model"] == "deeplabv2_tiny"
    assert config["experiments"]["segformer_source_only"]["model"] == "segformer_tiny"
    # one path: the weights of segmentation.model's backbone; another backbone needs its own
    with pytest.raises(ConfigError, match=r"'experiments.deeplabv2_source_only.model': deeplabv2_tiny has backbone resnet_tiny_v1c"):
        validate_config(_config(pretrained="mit.safetensors"))
    config = _config(pretrained={"mit_tiny": "mit.safetensors", "resnet_tiny_v1c": None, "mit_tiny_sr4": None})
    config = validate_config(config)
    assert pretrained_weights(config, "segformer_tiny") == "mit.safetensors" == pretrained_weights(config, "daformer_tiny")
    assert pretrained_weights(config, "deeplabv2_tiny") is None
    with pytest.raises(ConfigError, match=r"'segmentation.pretrained.resnet50': not a backbone name"):
        validate_config(_config(pretrained={"mit_tiny": "a", "resnet50": "b"}))
    bad = _config()
    bad["experiments"]["source_only"]["model"] = "hrda"
    with pytest.raises(ConfigError, match=r"'experiments.source_only.model': 'hrda' is not one of"):
        validate_config(bad)


def test_the_dag_gives_each_experiment_its_model_and_backbone_weights(tmp_path):
    from test_workflow import snakemake, write_config

    config = _config(pretrained={"mit_tiny": "weights/mit tiny.safetensors", "resnet_tiny_v1c": None, "mit_tiny_sr4": None})
    configfile = write_config(tmp_path / "config.yaml", config)
    # The weights are an input of the trainings: a missing file stops the dry run (pretrained.smk).
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mit tiny.safetensors").write_bytes(b"")
    runs = ["source_only", "deeplabv2_source_only", "segformer_source_only"]
    targets = [f"results/segmentation/{r}/seed0" for r in runs]
    result = snakemake(*targets, "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = {r: line for line in result.stdout.splitlines() if "train-segmentation" in line for r in runs if f"/segmentation/{r}/seed0 " in line}
    assert "--model daformer_tiny" in commands["source_only"] and "--pretrained 'weights/mit tiny.safetensors'" in commands["source_only"]
    assert "--model segformer_tiny" in commands["segformer_source_only"] and "--pretrained 'weights/mit tiny.safetensors'" in commands["segformer_source_only"]
    assert "--model deeplabv2_tiny" in commands["deeplabv2_source_only"] and "--pretrained" not in commands["deeplabv2_source_only"]


# ---------------------------------------------------------------------------- the converter


def official_mit_state(embed_dims: int, num_layers: list[int], num_heads: list[int], sr_ratios=(8, 4, 2, 1), classes: int = 10) -> dict:
    """A MiT checkpoint in the SegFormer authors' key layout (NVlabs mit_b*.pth), random values."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    state = {}
    previous = 3
    for i, (layers, heads, sr) in enumerate(zip(num_layers, num_heads, sr_ratios), start=1):
        c, k = embed_dims * heads, 7 if i == 1 else 3
        state |= {f"patch_embed{i}.proj.weight": t(c, previous, k, k), f"patch_embed{i}.proj.bias": t(c),
                  f"patch_embed{i}.norm.weight": t(c), f"patch_embed{i}.norm.bias": t(c)}  # fmt: skip
        for j in range(layers):
            b = f"block{i}.{j}."
            state |= {b + "norm1.weight": t(c), b + "norm1.bias": t(c), b + "attn.q.weight": t(c, c), b + "attn.q.bias": t(c),
                      b + "attn.kv.weight": t(2 * c, c), b + "attn.kv.bias": t(2 * c), b + "attn.proj.weight": t(c, c),
                      b + "attn.proj.bias": t(c), b + "norm2.weight": t(c), b + "norm2.bias": t(c),
                      b + "mlp.fc1.weight": t(4 * c, c), b + "mlp.fc1.bias": t(4 * c),
                      b + "mlp.dwconv.dwconv.weight": t(4 * c, 1, 3, 3), b + "mlp.dwconv.dwconv.bias": t(4 * c),
                      b + "mlp.fc2.weight": t(c, 4 * c), b + "mlp.fc2.bias": t(c)}  # fmt: skip
            if sr > 1:
                state |= {b + "attn.sr.weight": t(c, c, sr, sr), b + "attn.sr.bias": t(c), b + "attn.norm.weight": t(c), b + "attn.norm.bias": t(c)}
        state |= {f"norm{i}.weight": t(c), f"norm{i}.bias": t(c)}
        previous = c
    state |= {"head.weight": t(classes, previous), "head.bias": t(classes)}
    return state


def torchvision_resnet_state(depth_blocks=(3, 4, 6, 3), stem: int = 16, base: int = 8) -> dict:
    """A ResNet checkpoint in torchvision's key layout (7x7 conv1, bn1, layer<i>.<j>.conv1-3,
    bn1-3, downsample.0/1, fc), Bottleneck blocks, random values."""
    g = torch.Generator().manual_seed(0)

    def bn(prefix, c):
        return {prefix + "weight": torch.rand(c, generator=g), prefix + "bias": torch.randn(c, generator=g),
                prefix + "running_mean": torch.randn(c, generator=g), prefix + "running_var": torch.rand(c, generator=g) + 0.5,
                prefix + "num_batches_tracked": torch.tensor(7)}  # fmt: skip

    state = {"conv1.weight": torch.randn(stem, 3, 7, 7, generator=g), **bn("bn1.", stem)}
    inplanes = stem
    for i, blocks in enumerate(depth_blocks, start=1):
        planes = base * 2 ** (i - 1)
        for j in range(blocks):
            p = f"layer{i}.{j}."
            state |= {p + "conv1.weight": torch.randn(planes, inplanes, 1, 1, generator=g), **bn(p + "bn1.", planes),
                      p + "conv2.weight": torch.randn(planes, planes, 3, 3, generator=g), **bn(p + "bn2.", planes),
                      p + "conv3.weight": torch.randn(planes * 4, planes, 1, 1, generator=g), **bn(p + "bn3.", planes * 4)}  # fmt: skip
            if j == 0:
                state |= {p + "downsample.0.weight": torch.randn(planes * 4, inplanes, 1, 1, generator=g), **bn(p + "downsample.1.", planes * 4)}
            inplanes = planes * 4
    state |= {"fc.weight": torch.randn(10, inplanes, generator=g), "fc.bias": torch.randn(10, generator=g)}
    return state


def convert(capsys, fmt: str, src: Path, out: Path, *extra) -> str:
    capsys.readouterr()
    assert main(["convert-pretrained", "--format", fmt, "--in", str(src), "--out", str(out), *extra]) == 0
    return capsys.readouterr().out


def test_official_mit_checkpoint_converts_and_fills_the_tiny_backbone(registry, tmp_path, capsys):
    from dginstyle.segmentation.pretrained import backbone_mismatch

    spec = BACKBONES["mit_tiny"]
    official = official_mit_state(spec["embed_dims"], spec["num_layers"], spec["num_heads"])
    src = tmp_path / "mit_tiny.pth"
    torch.save(official, src)
    line = convert(capsys, "mit", src, tmp_path / "mit_tiny.safetensors", "--model", "segformer_tiny")
    assert "dropped the classifier (2 tensors)" in line
    state, meta = load_weights(tmp_path / "mit_tiny.safetensors")
    for name in ("segformer_tiny", "daformer_tiny"):  # strict: every backbone tensor, nothing else
        backbone = build(registry, name).backbone
        assert backbone_mismatch(backbone, state) is None
        missing, unexpected = backbone.load_state_dict(state, strict=True)
    # the values went where they belong
    torch.testing.assert_close(state["layers.0.1.0.attn.attn.in_proj_weight"], torch.cat([official["block1.0.attn.q.weight"], official["block1.0.attn.kv.weight"]]))
    torch.testing.assert_close(state["layers.2.1.0.attn.attn.in_proj_bias"], torch.cat([official["block3.0.attn.q.bias"], official["block3.0.attn.kv.bias"]]))
    torch.testing.assert_close(state["layers.1.1.0.ffn.layers.0.weight"][:, :, 0, 0], official["block2.0.mlp.fc1.weight"])
    torch.testing.assert_close(state["layers.3.1.0.ffn.layers.4.weight"][:, :, 0, 0], official["block4.0.mlp.fc2.weight"])
    torch.testing.assert_close(state["layers.3.1.0.attn.attn.out_proj.weight"], official["block4.0.attn.proj.weight"])
    torch.testing.assert_close(state["layers.0.0.projection.weight"], official["patch_embed1.proj.weight"])
    torch.testing.assert_close(state["layers.3.2.weight"], official["norm4.weight"])
    assert meta["format"] == "mit" and not any(k.startswith("head") for k in state)


def test_official_mit_pth_as_pretrained_reaches_the_trained_model(world, tmp_path):
    """train-segmentation --pretrained takes the public .pth directly (converted on the fly)."""
    spec = BACKBONES["mit_tiny"]
    src = tmp_path / "mit_tiny.pth"
    torch.save(official_mit_state(spec["embed_dims"], spec["num_layers"], spec["num_heads"]), src)
    from dginstyle.segmentation.pretrained import read_backbone_weights

    expected = read_backbone_weights(src)
    run = train(world, "segformer_tiny", "pretrained_segformer", pretrained=src, learning_rate=1e-9)
    state, _ = load_weights(run / "weights.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(state["backbone." + key], value, atol=1e-5, rtol=0)


def test_resnet_checkpoints_v1c_fills_deeplabv2_and_torchvision_stem_is_refused(registry, world, tmp_path, capsys):
    from mmseg.models.backbones import ResNet

    from dginstyle.segmentation.pretrained import backbone_mismatch

    spec = BACKBONES["resnet_tiny_v1c"]
    # open-mmlab's resnet*_v1c layout: mmseg's ResNetV1c names (deep stem), fc, wrapped with meta
    v1c = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v for k, v in build(registry, "deeplabv2_tiny").backbone.state_dict().items()}
    src = tmp_path / "resnet_v1c.pth"
    torch.save({"meta": {"epoch": 100, "arch": "resnet50_v1c"}, "state_dict": {**v1c, "fc.weight": torch.randn(10, 256), "fc.bias": torch.randn(10)}}, src)
    line = convert(capsys, "resnet", src, tmp_path / "resnet_v1c.safetensors", "--model", "deeplabv2_tiny")
    assert "deep stem" in line
    state, _ = load_weights(tmp_path / "resnet_v1c.safetensors")
    build(registry, "deeplabv2_tiny").backbone.load_state_dict(state, strict=True)
    # torchvision layout: stages map one to one onto mmseg's plain ResNet (V1b) ...
    src = tmp_path / "resnet_tv.pth"
    torch.save(torchvision_resnet_state(stem=spec["stem_channels"], base=spec["base_channels"]), src)
    line = convert(capsys, "resnet", src, tmp_path / "resnet_tv.safetensors")
    assert "7x7 stem" in line
    state, meta = load_weights(tmp_path / "resnet_tv.safetensors")
    assert meta["stem"] == "7x7"
    v1b = ResNet(depth=50, stem_channels=spec["stem_channels"], base_channels=spec["base_channels"])
    v1b.load_state_dict(state, strict=True)
    # ... but its 7x7 stem cannot fill ResNetV1c's deep stem: refused with the reason
    problem = backbone_mismatch(build(registry, "deeplabv2_tiny").backbone, state)
    assert "7x7-stem ResNet" in problem and "resnet101_v1c" in problem
    with pytest.raises(DataError, match="cannot fill the 3-conv deep stem"):
        train(world, "deeplabv2_tiny", "tv_stem", pretrained=tmp_path / "resnet_tv.safetensors")
    assert not (world / "tv_stem").exists()


class Payload:
    """Unpickling this creates a folder: the marker proves whether it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_with_an_object_is_refused_unopened(tmp_path, capsys):
    marker = tmp_path / "RAN"
    src = tmp_path / "mit_b5.pth"
    torch.save({"state_dict": {"patch_embed1.proj.weight": torch.zeros(1)}, "meta": Payload(marker)}, src)
    capsys.readouterr()
    assert main(["convert-pretrained", "--format", "mit", "--in", str(src), "--out", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dginstyle convert-pretrained: error: {src}: refused by the weights-only loader")
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()
    # a weights-only-loadable file that is not a state dict of tensors is refused too
    torch.save({"state_dict": {"patch_embed1.proj.weight": [1.0, 2.0]}}, src)
    assert main(["convert-pretrained", "--format", "mit", "--in", str(src), "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "not a state dict of tensors ('patch_embed1.proj.weight' is a list)" in capsys.readouterr().err
    # the wrong family
    torch.save(torchvision_resnet_state(depth_blocks=(1, 1, 1, 1)), src)
    assert main(["convert-pretrained", "--format", "mit", "--in", str(src), "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "looks like a resnet checkpoint, not mit" in capsys.readouterr().err


def test_converted_weights_roundtrip_through_save_weights(tmp_path):
    """Our own safetensors (backbone. prefix or not) load back as backbone keys."""
    from dginstyle.segmentation.pretrained import read_backbone_weights

    save_weights({"backbone.layers.0.2.weight": torch.ones(3)}, tmp_path / "w.safetensors")
    assert list(read_backbone_weights(tmp_path / "w.safetensors")) == ["layers.0.2.weight"]
    assert np.allclose(read_backbone_weights(tmp_path / "w.safetensors")["layers.0.2.weight"].numpy(), 1.0)
