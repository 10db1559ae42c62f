"""dginstyle.segmentation: DAFormer head, datasets (generated data reaches the batches),
training outputs and resume, evaluation, checkpoint refusal. Tiny model, 64x32 images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("mmseg")

from dginstyle.compat import load_trusted_checkpoint, load_weights  # noqa: E402
from dginstyle.data.prepare import prepare  # noqa: E402
from dginstyle.io import DataError, read_label_png  # noqa: E402
from dginstyle.labels import NUM_CLASSES  # noqa: E402
from dginstyle.metrics import confusion_matrix  # noqa: E402

CROP = (32, 32)  # (h, w)
TRAIN = dict(model="daformer_tiny", batch_size=2, crop_size=CROP, warmup_iterations=1, checkpoint_interval=2, log_interval=1, threads=1)


def make_shard(folder: Path, count: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rows = []
    for i in range(count):
        pair_id = f"{seed}{i:05d}"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / f"{pair_id}.png")
        label = rng.integers(0, NUM_CLASSES, (32, 32), dtype=np.uint8)
        label[:4] = 255
        Image.fromarray(label).save(folder / "labels" / f"{pair_id}.png")
        rows.append(json.dumps({"id": pair_id, "prompt": "road car"}))
    (folder / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    common = dict(seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    prepare("minicity", root / "source", domain="game", splits="train=8", **common)
    prepare("minicity", root / "target", domain="cityscapes", splits="val=3", **common)
    shard = make_shard(root / "generated" / "shard0", 4)
    return root, root / "source", root / "target", shard


@pytest.fixture(scope="module")
def trained(world):
    from dginstyle.segmentation.train import train_segmentation

    root, source, _, shard = world
    meta = train_segmentation(source, [shard], root / "run", root / "work", iterations=2, **TRAIN)
    return root / "run", root / "work", meta


def test_daformer_head_shapes():
    from dginstyle.segmentation import register_modules

    register_modules()
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")

    channels = [16, 32, 80, 128]
    for pool in (False, True):
        head = MODELS.build(
            dict(type="DAFormerHead", in_channels=channels, in_index=[0, 1, 2, 3], embed_dims=24, channels=20,
                 num_classes=NUM_CLASSES, pool=pool, norm_cfg=dict(type="BN"))
        )  # fmt: skip
        feats = [torch.randn(2, c, 16 // 2**i, 24 // 2**i) for i, c in enumerate(channels)]
        assert head(feats).shape == (2, NUM_CLASSES, 16, 24)
    # with the tiny MiT backbone through the EncoderDecoder
    from dginstyle.segmentation.configs import model_config

    model = MODELS.build(model_config("daformer_tiny", CROP))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 64), mode="tensor")
    assert out.shape == (1, NUM_CLASSES, 8, 16)
    assert sum(1 for m in model.decode_head.modules() if type(m).__name__ == "DepthwiseSeparableConvModule") == 3


@pytest.mark.parametrize("repeat", [1, 3])
def test_generated_samples_reach_the_batches(world, repeat):
    """Iterate one epoch of the training dataloader and count the batches' sample origins:
    8 source images and 4 generated pairs, the pairs listed `repeat` times (generated_repeat)."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from dginstyle.segmentation import register_modules
    from dginstyle.segmentation.configs import training_config

    register_modules()
    init_default_scope("mmseg")  # the datasets live in mmseg's registry (the Runner sets this when it builds)
    root, source, _, shard = world
    cfg = training_config(
        source=source, generated=[shard], work_dir=root / "unused", model="daformer_tiny", iterations=1, batch_size=2,
        crop_size=CROP, learning_rate=1e-4, weight_decay=0.01, warmup_iterations=0, poly_power=1.0, seed=0,
        generated_repeat=repeat,
    )  # fmt: skip
    loader = Runner.build_dataloader(cfg["train_dataloader"], seed=0)
    assert len(loader.dataset) == 8 + 4 * repeat
    shard_root = str(shard.resolve())
    seen = {"source": 0, "generated": 0}
    batches = iter(loader)
    for _ in range(len(loader.dataset) // 2):  # one epoch of the infinite sampler
        batch = next(batches)
        assert batch["inputs"][0].shape[1:] == CROP
        for sample in batch["data_samples"]:
            seen["generated" if sample.img_path.startswith(shard_root) else "source"] += 1
            assert sample.gt_sem_seg.data.shape[1:] == CROP
    assert seen == {"source": 8, "generated": 4 * repeat}


def test_generated_repeat_below_one_is_refused(world):
    from dginstyle.io import DataError
    from dginstyle.segmentation.configs import mixed_dataset_config

    _, source, _, shard = world
    with pytest.raises(DataError, match="generated_repeat must be >= 1"):
        mixed_dataset_config(source, [shard], generated_repeat=0)


def test_training_outputs_and_init_model(trained):
    from mmseg.apis import init_model

    run, _, meta = trained
    assert {p.name for p in run.iterdir()} == {"weights.safetensors", "config.py", "train_log.jsonl", "metadata.json", ".dginstyle-stage"}
    assert meta["generated_samples"] == 4 and meta["source_samples"] == 8
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert sum(r["samples_seen"]["generated"] + r["samples_seen"]["source"] for r in rows[-1:]) == 4
    state, _ = load_weights(run / "weights.safetensors")
    model = init_model(str(run / "config.py"), None, device="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 64), mode="tensor")
    assert out.shape == (1, NUM_CLASSES, 8, 16) and torch.isfinite(out).all()
    # head lr x10 in the optimizer config
    assert "lr_mult=10.0" in (run / "config.py").read_text().replace(" ", "")


def test_resume_continues_from_checkpoint(trained, world):
    from dginstyle.segmentation.train import train_segmentation

    root, source, _, shard = world
    run, work, _ = trained
    run4 = root / "run4"
    meta = train_segmentation(source, [shard], run4, work, iterations=4, **TRAIN)
    assert meta["resumed_at_iteration"] == 2
    assert Path(meta["resumed_from"]).name == "iter_2.pth"
    assert (work / "iter_4.pth").is_file()
    rows = [json.loads(line) for line in (run4 / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    # the restored schedule was re-synced to the new length (mmengine's closed form), not left at its old end
    from dginstyle.segmentation.train import _schedule_factor

    for row in rows[2:]:
        assert row["lr"] == pytest.approx(6e-5 * _schedule_factor(row["iter"] - 1, 4, 1, 1.0), abs=1e-12)
    assert rows[2]["lr"] > 0
    before, _ = load_weights(run / "weights.safetensors")
    after, _ = load_weights(run4 / "weights.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_rerun_with_other_settings_trains_afresh(trained, world, tmp_path):
    """Snakemake reruns a job whose params changed into the same work folder: the old run's
    checkpoints must not be resumed (it would end at once with the old model under the new name)."""
    import shutil

    from dginstyle.segmentation.train import SETTINGS, train_segmentation

    root, source, _, shard = world
    _, work, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    assert json.loads((copy / SETTINGS).read_text())["learning_rate"] == 6e-5
    meta = train_segmentation(source, [shard], tmp_path / "run", copy, iterations=2, **{**TRAIN, "learning_rate": 1e-4})
    assert meta["resumed_from"] is None and meta["resumed_at_iteration"] == 0
    stale = tmp_path / "work.stale"
    assert (stale / "iter_2.pth").is_file() and json.loads((stale / SETTINGS).read_text())["learning_rate"] == 6e-5
    assert json.loads((copy / SETTINGS).read_text())["learning_rate"] == 1e-4
    # the same settings again resume
    meta = train_segmentation(source, [shard], tmp_path / "run", copy, iterations=2, **{**TRAIN, "learning_rate": 1e-4})
    assert meta["resumed_at_iteration"] == 2
    # new data under the same paths is other settings too (the manifests' hashes differ)
    (shard / "manifest.json").write_text('{"generator": "another"}')
    try:
        meta = train_segmentation(source, [shard], tmp_path / "run", copy, iterations=2, **{**TRAIN, "learning_rate": 1e-4})
    finally:
        (shard / "manifest.json").write_text("{}")
    assert meta["resumed_from"] is None


def test_cli_registers_both_stages():
    import argparse

    from dginstyle.segmentation import evaluate, train

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    train.add_cli(sub)
    evaluate.add_cli(sub)
    args = parser.parse_args(["train-segmentation", "--source", "s", "--out", "o", "--work-dir", "w", "--generated", "a", "b", "--crop-size", "64x32"])
    assert args.generated == [Path("a"), Path("b")] and args.crop_size == (64, 32)
    assert parser.parse_args(["train-segmentation", "--source", "s", "--out", "o", "--work-dir", "w", "--generated"]).generated == []
    args = parser.parse_args(["evaluate", "--run", "r", "--dataset", "d", "--split", "val", "--out", "m.json", "--test-size", "1024x512"])
    assert args.test_size == (1024, 512) and args.handler is evaluate._run


def test_evaluation_matches_saved_predictions(trained, world):
    from dginstyle.segmentation.evaluate import evaluate_segmentation

    root, _, target, _ = world
    run, _, _ = trained
    preds = root / "preds"
    result = evaluate_segmentation(run, target, "val", root / "metrics.json", test_size=(64, 32), save_predictions=preds)
    on_disk = json.loads((root / "metrics.json").read_text())
    assert on_disk["num_images"] == 3 and on_disk["split"] == "val" and on_disk["run"] == str(run)
    assert on_disk["inference"]["window_hw"] == [32, 32] and on_disk["inference"]["stride_hw"] == [16, 16]
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for stem in (target / "val.txt").read_text().split():
        pred = np.asarray(Image.open(preds / f"{stem}.png"))
        label = np.asarray(Image.open(target / "labels" / "val" / f"{stem}.png"))
        assert pred.shape == label.shape
        conf += confusion_matrix(pred, label)
    assert np.array_equal(np.asarray(on_disk["confusion_matrix"]), conf)
    assert result["mIoU"] == on_disk["mIoU"]


def test_batched_prediction_equals_one_image_at_a_time(trained, world):
    """Evaluation predicts images in batches; each image's logits must not depend on its batch."""
    from dginstyle.segmentation.datasets import prepared_samples
    from dginstyle.segmentation.evaluate import load_run, predict_logits, predict_logits_batch, read_bgr

    _, _, target, _ = world
    run, _, _ = trained
    model, cfg = load_run(run)
    images = [read_bgr(image) for _, image, _ in prepared_samples(target, "val")]
    images.append(images[0][:, : images[0].shape[1] // 2 + 8])  # a narrower image: its own group
    sizes = [(image.shape[0], image.shape[1]) for image in images]
    batched = predict_logits_batch(model, cfg, images, sizes)
    for image, size, logits in zip(images, sizes, batched):
        assert logits.shape[2:] == size
        np.testing.assert_allclose(logits.numpy(), predict_logits(model, cfg, image, size).numpy(), atol=1e-4)


def test_evaluation_holds_one_image_of_full_size_logits_at_a_time(trained, world, monkeypatch):
    """Logits at a label's full size (0.9 GB for a large Mapillary label) exist for one image at
    a time, however many images are predicted together at the test size."""
    import weakref

    from dginstyle.segmentation import evaluate
    from dginstyle.segmentation.datasets import prepared_samples

    _, _, target, _ = world
    run, _, _ = trained
    samples = prepared_samples(target, "val")
    assert len(samples) >= 3
    full_size, most_alive = [], [0]
    resize = evaluate.at_size

    def watched(logits, out_hw):
        out = resize(logits, out_hw)
        full_size.append(weakref.ref(out))
        most_alive[0] = max(most_alive[0], sum(ref() is not None for ref in full_size))
        return out

    monkeypatch.setattr(evaluate, "at_size", watched)
    model, cfg = evaluate.load_run(run)
    # A test size other than the labels' size: every label-size tensor is a new one.
    predictions = list(evaluate.iter_predictions(model, cfg, samples, test_size=(128, 64), batch_size=len(samples)))
    assert len(predictions) == len(samples) and len(full_size) == len(samples)
    assert most_alive[0] == 1


def test_checkpoint_outside_the_run_folder_is_refused(world, tmp_path):
    from dginstyle.segmentation.train import train_segmentation

    _, source, _, _ = world
    outside = tmp_path / "elsewhere" / "iter_2.pth"
    outside.parent.mkdir()
    torch.save({"state_dict": {}}, outside)
    work = tmp_path / "work"
    work.mkdir()
    (work / "last_checkpoint").write_text(str(outside))
    with pytest.raises(DataError, match="outside the run folder"):
        train_segmentation(source, [], tmp_path / "run", work, iterations=2, **TRAIN)
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="outside the run folder"):
        load_trusted_checkpoint(outside, work)
    # a symlink inside work_dir that resolves outside is refused too
    (work / "iter_2.pth").symlink_to(outside)
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    with pytest.raises(DataError, match="outside the run folder"):
        train_segmentation(source, [], tmp_path / "run", work, iterations=2, **TRAIN)


def test_a_moved_run_folder_resumes_from_its_own_checkpoint(tmp_path):
    from dginstyle.segmentation.train import latest_checkpoint

    old, work = tmp_path / "old", tmp_path / "moved"
    work.mkdir()
    (work / "iter_4.pth").write_bytes(b"x")
    (work / "last_checkpoint").write_text(str(old / "iter_4.pth"))  # the absolute path mmengine wrote before the move
    assert latest_checkpoint(work) == (work / "iter_4.pth").resolve()
    (work / "last_checkpoint").write_text(str(old / "iter_8.pth"))  # no file of that name here: still refused
    with pytest.raises(DataError, match="outside the run folder"):
        latest_checkpoint(work)


def test_filter_label_by_class_recall_and_by_confident_pixel():
    from dginstyle.segmentation.quality_control import filter_label

    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], dtype=np.uint8)
    prediction = np.array([[0, 0, 1, 0], [0, 2, 0, 3]])
    probs = np.full((NUM_CLASSES, 2, 4), 0.01, dtype=np.float32)
    confidence = np.array([[0.9, 0.9, 0.9, 0.9], [0.9, 0.4, 0.9, 0.9]], dtype=np.float32)
    for y in range(2):
        for x in range(4):
            probs[prediction[y, x], y, x] = confidence[y, x]
    # class 0: 3 of 4 pixels recognised (0.75); class 1: 1 of 3 (0.33)
    kept = filter_label(label, probs, "class", 0.5)
    assert kept.tolist() == [[0, 0, 255, 255], [0, 0, 255, 255]]
    assert (filter_label(label, probs, "class", 0.0) == label).all()
    # pixel: disagreements at (0,3) and (1,2) are confident; (1,1) is unsure; (1,3) is ignore already
    assert filter_label(label, probs, "pixel", 0.5).tolist() == [[0, 0, 1, 255], [0, 0, 255, 255]]
    with pytest.raises(ValueError, match="mode"):
        filter_label(label, probs, "image", 0.5)


def test_quality_control_writes_a_whole_filtered_shard(trained, world, tmp_path):
    from dginstyle.segmentation.datasets import generated_samples
    from dginstyle.segmentation.quality_control import REPORT, quality_control

    run = trained[0]
    shard = world[3]
    report = quality_control(shard, run, tmp_path / "qc", mode="pixel", threshold=0.0)
    out = generated_samples(tmp_path / "qc")
    original = generated_samples(shard)
    assert [s[0] for s in out] == [s[0] for s in original]
    removed = labelled = 0
    for (_, img, lab), (_, img0, lab0) in zip(out, original):
        assert img.read_bytes() == img0.read_bytes()
        new, old = read_label_png(lab), read_label_png(lab0)
        assert ((new == old) | (new == 255)).all()  # only ever sets ignore
        removed += int(((new == 255) & (old != 255)).sum())
        labelled += int((old != 255).sum())
    assert report["filtered_fraction"] == pytest.approx(removed / labelled, abs=1e-6)
    assert removed > 0  # threshold 0: every disagreement of a 2-iteration segmenter goes
    saved = json.loads((tmp_path / "qc" / REPORT).read_text())
    assert saved["pairs"] == len(original) and saved["mode"] == "pixel"
    manifest = json.loads((tmp_path / "qc" / "manifest.json").read_text())
    assert manifest["quality_control"]["threshold"] == 0.0
    # it records the hashes of its own files, which train-segmentation checks (shard_check.py)
    from dginstyle.segmentation.shard_check import verify_shard

    for pair_id, img, lab in out:
        assert manifest["label_sha256"][pair_id] == hashlib.sha256(lab.read_bytes()).hexdigest()
        assert manifest["image_sha256"][pair_id] == hashlib.sha256(img.read_bytes()).hexdigest()
    assert "unfiltered_label_sha256" in manifest
    verify_shard(tmp_path / "qc", out)
    # nothing filtered when no class is required to be recognised
    assert quality_control(shard, run, tmp_path / "qc0", mode="class", threshold=0.0)["filtered_fraction"] == 0.0
