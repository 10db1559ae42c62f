"""Source-only training extras of the paper's setting (DAFormer's): the ImageNet feature
distance on thing classes, rare class sampling of the source images, their config wiring, and
a real `train-segmentation` process killed with SIGKILL and resumed from its checkpoint.
Tiny models, 32x64 images."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("mmseg")

from dginstyle.compat import load_weights, save_weights  # noqa: E402
from dginstyle.data import contract  # noqa: E402
from dginstyle.io import DataError  # noqa: E402
from dginstyle.labels import NUM_CLASSES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CROP = (32, 32)  # (h, w)
RARE, RARE2 = 16, 17  # train in one image of the RCS world, motorcycle in two others
RARE2_IMAGES = (3, 12)
ROAD, BUILDING, PERSON, CAR, BICYCLE = 0, 2, 11, 13, 18
TRAIN = dict(model="daformer_tiny", batch_size=2, crop_size=CROP, warmup_iterations=1, log_interval=1, threads=1)


@pytest.fixture(scope="module")
def registry():
    from mmengine.registry import init_default_scope

    from dginstyle.segmentation import register_modules

    register_modules()
    import dginstyle.segmentation.rcs  # noqa: F401  (registers the RCS dataset and sampler)

    init_default_scope("mmseg")
    from mmseg.registry import MODELS

    return MODELS


def build(registry, name: str = "daformer_tiny", crop=(64, 64)):
    from dginstyle.segmentation.configs import model_config

    torch.manual_seed(0)
    model = registry.build(model_config(name, crop))
    model.init_weights()
    return model


def samples_for(labels: torch.Tensor) -> list:
    """SegDataSamples holding (B, H, W) labels."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    out = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label[None].long())
        h, w = label.shape
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        out.append(sample)
    return out


def make_rcs_world(out: Path, count: int = 20, rare_index: int = 7, min_pixels: int = 3) -> tuple[Path, str]:
    """A prepared source of `count` 64x32 images: building above road; in one image an 8x8 patch
    of train (class 16) at the left edge of the road, in two others (RARE2_IMAGES) an 8x16 patch
    of motorcycle (17). Returns (dataset, the stem of the train image)."""
    rng = np.random.default_rng(0)
    staging = contract.start(out)
    records = []
    for i in range(count):
        stem = f"img{i:03d}"
        label = np.full((32, 64), ROAD, dtype=np.uint8)
        label[:16] = BUILDING
        if i == rare_index:
            label[20:28, 0:8] = RARE
        if i in RARE2_IMAGES:
            label[20:28, 0:16] = RARE2
        records.append(contract.write_label(staging, "train", stem, label))
        contract.write_image(staging, "train", stem, rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    contract.finalize(staging, out, records, {"dataset": "rcs_world", "format": "test"}, rcs_min_pixels=min_pixels)
    return out, f"img{rare_index:03d}"


def make_shard(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(1)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rows = []
    for i in range(count):
        from PIL import Image

        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / f"g{i}.png")
        Image.fromarray(np.full((32, 32), ROAD, dtype=np.uint8)).save(folder / "labels" / f"g{i}.png")
        rows.append(json.dumps({"id": f"g{i}", "prompt": "road"}))
    (folder / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def rcs_world(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("rcs")
    source, rare = make_rcs_world(root / "source")
    shard = make_shard(root / "generated" / "shard0", 6)
    return root, source, rare, shard


def dataloader_config(root: Path, source: Path, generated: list[Path], rcs: dict | None):
    from dginstyle.segmentation.configs import training_config
    from dginstyle.segmentation.rcs import with_rare_class_sampling

    cfg = training_config(
        source=source, generated=generated, work_dir=root / "unused", model="daformer_tiny", iterations=1, batch_size=2,
        crop_size=CROP, learning_rate=1e-4, weight_decay=0.01, warmup_iterations=0, poly_power=1.0, seed=0,
    )  # fmt: skip
    loader = cfg["train_dataloader"]
    return with_rare_class_sampling(loader, **rcs) if rcs is not None else loader


def sampled_stems(loader, batches: int) -> list[str]:
    """The stems of the images in the next `batches` batches the loader really yields."""
    stems = []
    for batch in itertools.islice(iter(loader), batches):
        stems += [Path(sample.img_path).stem for sample in batch["data_samples"]]
    return stems


# ------------------------------------------------------------------------- rare class sampling


def test_rcs_draws_rare_class_images_far_more_often_and_is_seeded(rcs_world):
    from mmengine.runner import Runner

    root, source, rare, _ = rcs_world
    rcs = dict(temperature=0.01, min_pixels=None, min_crop_ratio=0.5)
    plain = Runner.build_dataloader(dataloader_config(root, source, [], None), seed=0)
    with_rcs = Runner.build_dataloader(dataloader_config(root, source, [], rcs), seed=0)
    assert type(with_rcs.sampler).__name__ == "RareClassSampler" and type(with_rcs.dataset).__name__ == "RareClassDataset"
    assert with_rcs.dataset.min_pixels == 3  # the threshold the dataset was prepared with
    n = 20  # batches of 2: two passes over the 20 source images
    plain_stems, rcs_stems = sampled_stems(plain, n), sampled_stems(with_rcs, n)
    rare_images = {rare} | {f"img{i:03d}" for i in RARE2_IMAGES}

    def count(stems):
        return sum(stem in rare_images for stem in stems)

    assert count(plain_stems) == 6  # each of the 3 images once per pass of the shuffled concatenation
    # softmax((1 - f_c) / 0.01) gives train and motorcycle (f_c ~ 0.002-0.003) nearly all the
    # mass (road and building: f_c ~ 0.5, e^-49 of it): nearly every draw is a rare-class image
    assert count(rcs_stems) >= 36, rcs_stems
    assert rcs_stems.count(rare) >= 8 and count(rcs_stems) - rcs_stems.count(rare) >= 8  # both classes drawn
    # seeded: the same seed gives the same draws, another seed others
    again = Runner.build_dataloader(dataloader_config(root, source, [], rcs), seed=0)
    assert sampled_stems(again, n) == rcs_stems
    from dginstyle.segmentation.rcs import RareClassSampler

    first = list(itertools.islice(iter(RareClassSampler(with_rcs.dataset, seed=0)), 200))
    assert first == list(itertools.islice(iter(RareClassSampler(with_rcs.dataset, seed=0)), 200))
    assert first != list(itertools.islice(iter(RareClassSampler(with_rcs.dataset, seed=1)), 200))


def test_rcs_probabilities_follow_the_class_statistics(rcs_world):
    from dginstyle.segmentation.rcs import read_class_draws

    _, source, rare, _ = rcs_world
    draws, _ = read_class_draws(source, "train", 0.01)
    stats = json.loads((source / "class_stats" / "train.json").read_text())
    freq = np.asarray(stats["class_pixels"], dtype=np.float64) / sum(stats["class_pixels"])
    present = [c for c in range(NUM_CLASSES) if stats["class_pixels"][c] > 0]
    logits = np.asarray([(1 - freq[c]) / 0.01 for c in present])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(draws.probabilities[present], expected, rtol=1e-9)
    assert draws.images_by_class[RARE] == [rare]
    # a higher threshold than any image holds leaves the class out of the draws
    assert read_class_draws(source, "train", 0.01, min_pixels=64)[0].probabilities[RARE] == 0
    with pytest.raises(DataError, match="temperature"):
        read_class_draws(source, "train", 0.0)
    with pytest.raises(DataError, match="class statistics not found"):
        read_class_draws(source, "val", 0.01)


def test_rcs_keeps_the_generated_concatenation(rcs_world):
    """Per pass of len(source + generated) draws: every generated pair once, and as many RCS
    source draws as there are source images (the mix still follows the sizes)."""
    from mmengine.runner import Runner

    from dginstyle.segmentation.rcs import RareClassSampler

    root, source, rare, shard = rcs_world
    loader = Runner.build_dataloader(dataloader_config(root, source, [shard], dict(temperature=0.01)), seed=0)
    dataset = loader.dataset
    assert len(dataset) == 20 + 6 and dataset.num_source == 20
    indices = list(itertools.islice(iter(RareClassSampler(dataset, seed=3)), 3 * 26))
    for p in range(3):
        one_pass = indices[p * 26 : (p + 1) * 26]
        generated = sorted(i for i in one_pass if 20 <= i < 26)
        draws = [divmod(i - 26, NUM_CLASSES) for i in one_pass if i >= 26]
        assert generated == list(range(20, 26)) and len(draws) == 20
        assert all(0 <= s < 20 and 0 <= c < NUM_CLASSES for s, c in draws)
    # generated samples really reach the batches
    shard_root = str(shard.resolve())
    paths = [s.img_path for b in itertools.islice(iter(loader), 13) for s in b["data_samples"]]
    assert sum(p.startswith(shard_root) for p in paths) == 6


def test_rcs_recrops_until_the_crop_holds_the_class(rcs_world):
    """DAFormer's min_crop_ratio: a drawn image is loaded again (new random crop, at most 10
    times) while its crop holds no more than ratio x min_pixels pixels of the drawn class."""
    from mmengine.runner import Runner

    root, source, rare, _ = rcs_world
    counts = {}
    for ratio in (0.5, 0.0):
        dataset = Runner.build_dataloader(dataloader_config(root, source, [], dict(temperature=0.01, min_crop_ratio=ratio)), seed=0).dataset
        index = len(dataset) + dataset.index_of[rare] * NUM_CLASSES + RARE
        np.random.seed(0)  # the pipeline's crops draw from numpy's global generator
        hits = 0
        for _ in range(30):
            sample = dataset[index]
            assert Path(sample["data_samples"].img_path).stem == rare
            hits += int((sample["data_samples"].gt_sem_seg.data == RARE).sum()) > 1.5
        counts[ratio] = hits
    # the 8-pixel-wide patch lies in about 1 in 4 random 32-wide crops of the 64-wide image
    assert counts[0.5] >= 24 and counts[0.0] <= 16, counts


# ---------------------------------------------------------------------------- feature distance


def test_downscale_label_ratio_takes_the_majority_or_ignore():
    from dginstyle.segmentation.feature_distance import downscale_label_ratio

    label = torch.full((1, 8, 8), ROAD)
    label[0, :4, :4] = CAR  # all car
    label[0, 4:, :4] = PERSON
    label[0, 4:7, :4] = 255  # ignore in 12 of 16 pixels, person in 4
    label[0, 4:, 4:] = BICYCLE
    label[0, 4, 4:7] = ROAD  # bicycle in 13 of 16
    out = downscale_label_ratio(label, (2, 2), 0.75)
    assert out.tolist() == [[[CAR, ROAD], [255, BICYCLE]]]
    assert downscale_label_ratio(label, (2, 2), 0.0).tolist() == [[[CAR, ROAD], [255, BICYCLE]]]  # that cell's majority is ignore
    label[0, 4:, :4] = PERSON
    label[0, 4, :4] = ROAD  # person 12 of 16: exactly 0.75
    assert downscale_label_ratio(label, (2, 2), 0.75)[0, 1, 0] == PERSON
    assert downscale_label_ratio(label, (2, 2), 0.8)[0, 1, 0] == 255


def test_feature_distance_is_lambda_times_the_thing_pixel_mean(registry):
    from dginstyle.segmentation.feature_distance import LOSS_KEY, FeatureDistance, frozen_backbone

    model = build(registry)
    keys = set(model.state_dict())
    params = {id(p) for p in model.parameters()}
    pretrained = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    teacher = frozen_backbone(model.backbone, pretrained, Path("imagenet.safetensors"))
    fd = FeatureDistance(teacher).attach(model)
    # the frozen copy is no part of the model: not in its state dict, not among its parameters
    assert set(model.state_dict()) == keys and {id(p) for p in model.parameters()} == params
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training

    torch.manual_seed(1)
    inputs = torch.randn(2, 3, 64, 64)
    labels = torch.full((2, 64, 64), ROAD)
    labels[:, :32, :32] = CAR  # feature cell (0, 0): thing
    labels[:, 32:, :32] = PERSON
    labels[:, 32:44, :32] = ROAD  # cell (1, 0): person 62.5% < 0.75 -> ignore
    labels[:, 32:, 32:] = BICYCLE  # cell (1, 1): thing; cell (0, 1): road
    model.eval()  # no drop path: the features are deterministic
    losses = model.loss(inputs, samples_for(labels))
    # the model still holds the ImageNet weights (not bit-exact: without gradients, torch takes
    # the fused fast path of nn.MultiheadAttention for the frozen copy)
    assert losses[LOSS_KEY].item() < 1e-6
    with torch.no_grad():
        for p in model.backbone.layers[3].parameters():
            p.add_(0.05 * torch.randn_like(p))
    losses = model.loss(inputs, samples_for(labels))
    assert fd.extra_forwards == 0  # the features of the model's own forward were reused
    with torch.no_grad():
        dist = torch.linalg.vector_norm(model.backbone(inputs)[-1] - teacher(inputs)[-1], dim=1)  # (2, 2, 2)
    assert dist.shape == (2, 2, 2)
    expected = 0.005 * torch.cat([dist[:, 0, 0], dist[:, 1, 1]]).mean()
    assert losses[LOSS_KEY].item() == pytest.approx(expected.item(), rel=1e-5) and expected > 0
    model.zero_grad()
    losses[LOSS_KEY].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.layers[3].parameters())
    assert all(p.grad is None for p in model.decode_head.parameters()) and all(p.grad is None for p in teacher.parameters())
    # no thing pixel in the batch: zero, with a finite (zero) gradient
    model.zero_grad()
    losses = model.loss(inputs, samples_for(torch.full((2, 64, 64), ROAD)))
    assert losses[LOSS_KEY].item() == 0.0
    losses[LOSS_KEY].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.backbone.parameters() if p.grad is not None)


def test_feature_distance_on_hrda_uses_the_context_features(registry):
    """HRDA's feature distance is on the features of the downscaled context input."""
    from dginstyle.segmentation.catalog import MODELS_
    from dginstyle.segmentation.feature_distance import LOSS_KEY, FeatureDistance, frozen_backbone

    if "hrda_daformer_tiny" not in MODELS_:
        pytest.skip("no HRDA model in this tree")
    model = build(registry, "hrda_daformer_tiny", crop=(128, 128))
    teacher = frozen_backbone(model.backbone, {k: v.clone() for k, v in model.backbone.state_dict().items()}, Path("w"))
    fd = FeatureDistance(teacher).attach(model)
    seen = []
    teacher.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    labels = torch.full((2, 128, 128), CAR)
    losses = model.loss(torch.randn(2, 3, 128, 128), samples_for(labels))
    assert fd.extra_forwards == 0 and torch.isfinite(losses[LOSS_KEY])
    assert seen == [torch.Size([2, 3, 64, 64])]  # context: 0.5 x the 128 crop


@pytest.fixture(scope="module")
def pretrained_tiny(tmp_path_factory, registry):
    """'ImageNet' weights for mit_tiny: a tiny backbone's own initialisation, as safetensors."""
    path = tmp_path_factory.mktemp("pretrained") / "mit_tiny.safetensors"
    torch.manual_seed(5)
    backbone = build(registry).backbone
    save_weights({k: v.contiguous() for k, v in backbone.state_dict().items()}, path, metadata={"format": "test"})
    return path


def test_training_with_feature_distance_and_rcs_saves_the_plain_model(rcs_world, pretrained_tiny, registry, tmp_path):
    from mmseg.apis import init_model

    from dginstyle.segmentation.feature_distance import LOSS_KEY
    from dginstyle.segmentation.train import train_segmentation

    _, source, _, shard = rcs_world
    run = tmp_path / "run"
    meta = train_segmentation(
        source, [shard], run, tmp_path / "work", iterations=2, checkpoint_interval=2, pretrained=pretrained_tiny,
        feature_distance=True, rare_class_sampling=True, **TRAIN,
    )  # fmt: skip
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2] and all(np.isfinite(r[LOSS_KEY]) and r[LOSS_KEY] >= 0 for r in rows)
    assert meta["feature_distance"]["lambda"] == 0.005 and meta["feature_distance"]["classes"] == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    assert meta["feature_distance"]["extra_backbone_forwards"] == 0
    assert meta["rare_class_sampling"]["temperature"] == 0.01 and meta["rare_class_sampling"]["min_pixels"] == 3
    probabilities = meta["rare_class_sampling"]["class_probabilities"]
    assert probabilities["train"] + probabilities["motorcycle"] > 0.99 and probabilities["train"] > probabilities["motorcycle"]
    # weights.safetensors and the checkpoint hold the trained model only, and the saved config
    # builds the plain model with init_model
    state, _ = load_weights(run / "weights.safetensors")
    assert set(state) == set(build(registry, crop=CROP).state_dict())
    from dginstyle.compat import load_trusted_checkpoint

    checkpoint = load_trusted_checkpoint(tmp_path / "work" / "iter_2.pth", tmp_path / "work")
    assert set(checkpoint["state_dict"]) == set(state)
    model = init_model(str(run / "config.py"), None, device="cpu")
    model.load_state_dict(state, strict=True)
    assert type(model).__name__ == "EncoderDecoder" and not hasattr(model, "_dginstyle_feature_distance")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 64), mode="tensor").shape == (1, NUM_CLASSES, 8, 16)


def test_feature_distance_without_pretrained_weights_is_refused(rcs_world, tmp_path):
    from dginstyle.segmentation.train import train_segmentation

    _, source, _, _ = rcs_world
    with pytest.raises(DataError, match="--feature-distance needs --pretrained"):
        train_segmentation(source, [], tmp_path / "run", tmp_path / "work", iterations=2, feature_distance=True, **TRAIN)
    assert not (tmp_path / "work").exists() and not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="lambda must be > 0"):
        from dginstyle.segmentation.feature_distance import check_settings

        check_settings(0.0, [6], 0.75)


# ------------------------------------------------------------------------------ config wiring


def smoke(**segmentation) -> dict:
    config = yaml.safe_load((REPO / "tests" / "configs" / "smoke.yaml").read_text())
    config["segmentation"].update(segmentation)
    return config


def mit_tiny_weights_only(config: dict, path: str) -> dict:
    """segmentation.pretrained naming `path` for mit_tiny and null (from scratch) for every other
    backbone the config's experiments use."""
    from dginstyle.segmentation.catalog import backbone_of

    models = [config["segmentation"]["model"]] + [e.get("model", config["segmentation"]["model"]) for e in config["experiments"].values()]
    return {backbone_of(m): (path if backbone_of(m) == "mit_tiny" else None) for m in models}


def test_config_refuses_feature_distance_without_weights_and_paper_sets_the_extras_per_row():
    from dginstyle.config import ConfigError, validate_config
    from dginstyle.segmentation.catalog import backbone_of

    config = validate_config(smoke())
    assert not any(e["feature_distance"] or e["rare_class_sampling"] for e in config["experiments"].values())
    with pytest.raises(ConfigError, match=r"config key 'segmentation.feature_distance': the ImageNet feature distance needs pretrained weights"):
        validate_config(smoke(feature_distance=True))
    config = smoke(feature_distance=True, rare_class_sampling=True)
    config["segmentation"]["pretrained"] = mit_tiny_weights_only(config, "mit.safetensors")
    with pytest.raises(ConfigError, match=r"experiment 'deeplabv2_source_only' \(deeplabv2_tiny, backbone resnet_tiny_v1c\) trains from scratch"):
        validate_config(config)
    for experiment in config["experiments"].values():
        if backbone_of(experiment.get("model", "daformer_tiny")) != "mit_tiny":
            experiment["feature_distance"] = False
    config = validate_config(config)
    assert config["experiments"]["source_only"]["feature_distance"] and not config["experiments"]["deeplabv2_source_only"]["feature_distance"]
    assert all(e["rare_class_sampling"] for e in config["experiments"].values())
    bad = smoke()
    bad["experiments"]["source_only"]["feature_distance"] = True
    with pytest.raises(ConfigError, match=r"config key 'experiments.source_only.feature_distance'"):
        validate_config(bad)
    paper = validate_config(yaml.safe_load((REPO / "workflow" / "configs" / "paper.yaml").read_text()), check_roots=False)
    seg = paper["segmentation"]
    assert (seg["feature_distance_lambda"], seg["rcs_temperature"], seg["rcs_min_pixels"]) == (0.005, 0.01, 3000)
    assert seg["feature_distance_classes"] == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    # every row but the plain DeepLabV2 ones, which the release trains with colour augmentation
    # only, and the SegFormer ones, which measure the network without DAFormer's extras
    plain = {name for name, e in paper["experiments"].items() if e["model"] in ("deeplabv2_r101", "segformer_mitb5")}
    assert plain == {"deeplabv2_source_only", "deeplabv2_dginstyle", "segformer_source_only", "segformer_dginstyle"}
    assert all(e["feature_distance"] for name, e in paper["experiments"].items() if name not in plain)
    assert not any(paper["experiments"][name]["feature_distance"] or paper["experiments"][name]["rare_class_sampling"] for name in plain)
    # online RCS on the HRDA rows only (all of GTA5, min crop 2.0); the 512 rows draw their source
    # by class once instead (the presampled subset, tests/test_presample.py)
    rcs = {name for name, e in paper["experiments"].items() if e["rare_class_sampling"]}
    assert rcs == {name for name in paper["experiments"] if name.startswith("hrda_")}
    assert all(paper["experiments"][name]["rcs_min_crop_ratio"] == 2.0 and paper["experiments"][name]["source_sampling"] == "full" for name in rcs)


def test_the_dag_passes_the_extras_to_train_segmentation(tmp_path):
    from test_workflow import snakemake, write_config

    from dginstyle.segmentation.catalog import backbone_of

    config = smoke(feature_distance=True, rare_class_sampling=True)
    config["segmentation"]["pretrained"] = mit_tiny_weights_only(config, "w/mit.safetensors")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mit.safetensors").write_bytes(b"")  # the DAG takes the weights as an input: they must exist
    for experiment in config["experiments"].values():
        if backbone_of(experiment.get("model", "daformer_tiny")) != "mit_tiny":
            experiment["feature_distance"] = False
    configfile = write_config(tmp_path / "config.yaml", config)
    runs = ["source_only", "deeplabv2_source_only"]
    result = snakemake(*[f"results/segmentation/{r}/seed0" for r in runs], "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = {r: line for line in result.stdout.splitlines() if "train-segmentation" in line for r in runs if f"/segmentation/{r}/seed0 " in line}
    assert "--feature-distance --fd-lambda 0.005 --fd-classes 6,7,11,12,13,14,15,16,17,18 --fd-min-ratio 0.75" in commands["source_only"]
    assert "--feature-distance" not in commands["deeplabv2_source_only"]
    for run in runs:
        assert "--rare-class-sampling --rcs-temperature 0.01 --rcs-min-crop-ratio 0.5" in commands[run]
        assert "--rcs-min-pixels" not in commands[run]  # null: the prepared threshold


def test_cli_flags():
    import argparse

    from dginstyle.segmentation import train

    parser = argparse.ArgumentParser()
    train.add_cli(parser.add_subparsers(dest="command"))
    base = ["train-segmentation", "--source", "s", "--out", "o", "--work-dir", "w"]
    args = parser.parse_args(base)
    assert not args.feature_distance and not args.rare_class_sampling and args.rcs_min_pixels is None and args.fd_classes is None
    args = parser.parse_args(base + ["--feature-distance", "--fd-classes", "6,7,11", "--rare-class-sampling", "--rcs-min-pixels", "12"])
    assert args.feature_distance and args.fd_classes == [6, 7, 11] and args.rare_class_sampling and args.rcs_min_pixels == 12


# ------------------------------------------------------------------- kill and resume (a process)


@pytest.mark.slow
def test_train_segmentation_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    """A real `python -m dginstyle train-segmentation` is SIGKILLed once a checkpoint exists;
    the same command run again resumes from that checkpoint and completes the run folder."""
    from dginstyle.data.prepare import prepare

    prepare("minicity", tmp_path / "source", domain="game", splits="train=6", seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    base = tmp_path / "runs"
    base.mkdir()
    run, work, iterations = base / "run", base / "work", 100
    command = [
        sys.executable, "-m", "dginstyle", "train-segmentation", "--source", str(tmp_path / "source"), "--out", str(run),
        "--work-dir", str(work), "--model", "daformer_tiny", "--iterations", str(iterations), "--batch-size", "2",
        "--crop-size", "32", "--warmup-iterations", "1", "--checkpoint-interval", "2", "--log-interval", "1", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (work / "last_checkpoint").is_file():
                assert first.poll() is None, f"ended before its first checkpoint:\n{log.read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.02)
            first.send_signal(signal.SIGKILL)
        finally:
            if first.poll() is None:
                first.kill()
            first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, log.read_text()
    assert not run.exists()  # a killed run leaves no run folder
    pointer = Path((work / "last_checkpoint").read_text().strip())
    resumed_at = int(pointer.stem.split("_")[-1])
    assert pointer.is_file() and 2 <= resumed_at < iterations and resumed_at % 2 == 0

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert {p.name for p in run.iterdir()} == {"weights.safetensors", "config.py", "train_log.jsonl", "metadata.json", ".dginstyle-stage"}
    assert sorted(p.name for p in base.iterdir()) == ["run", "work"]  # no partial run folder beside it
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["iterations"] == iterations
    assert Path(meta["resumed_from"]).name == pointer.name == f"iter_{resumed_at}.pth"
    assert meta["resumed_at_iteration"] == resumed_at
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(1, iterations + 1))  # no row lost or repeated
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert (work / f"iter_{iterations}.pth").is_file()
    state, meta_w = load_weights(run / "weights.safetensors")
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
