"""A generated shard is checked whole before train-segmentation (or quality-control) uses it:
every image and label decodes and matches the sha256 its manifest records. A damaged file is
one error line naming it, before the run writes anything (no checkpoint, no output)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import test_bad_input as bad_input
from dginstyle.cli import main
from dginstyle.io import DataError

pytest.importorskip("torch")
pytest.importorskip("mmseg")


def make_shard(folder: Path, count: int = 3) -> Path:
    """A shard as `generate` writes it: images, labels, pairs.jsonl and a manifest with the
    sha256 of every file."""
    bad_input.make_shard(folder, count)
    digest = {kind: {str(i): hashlib.sha256((folder / kind / f"{i}.png").read_bytes()).hexdigest() for i in range(count)} for kind in ("images", "labels")}
    manifest = {"config": {"generator": "test"}, "pairs": count, "ids": list(range(count)), "label_sha256": digest["labels"], "image_sha256": digest["images"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from dginstyle.data.prepare import prepare

    root = tmp_path_factory.mktemp("shard_integrity")
    prepare("minicity", root / "source", domain="game", splits="train=4", seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    return root / "source"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def change_one_pixel(path: Path) -> None:
    """A valid PNG that differs from the recorded one (one pixel's value)."""
    with Image.open(path) as img:
        pixels = np.array(img)
    pixels.flat[0] = (int(pixels.flat[0]) + 1) % 19
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize(
    "file, damage, cause",
    [
        ("images/1.png", truncate, "generated image is corrupt or truncated, it cannot be decoded"),
        ("labels/1.png", truncate, "generated label is corrupt or truncated, it cannot be decoded"),
        ("labels/2.png", change_one_pixel, "generated label's checksum differs from the one in"),
        ("images/0.png", lambda p: p.write_bytes(p.read_bytes() + b"\0"), "generated image's checksum differs from the one in"),
    ],
    ids=["truncated-image", "truncated-label", "altered-label", "altered-image"],
)
def test_a_damaged_shard_file_stops_train_segmentation_before_training(source, tmp_path, capsys, file, damage, cause):
    shard = make_shard(tmp_path / "generated" / "shard0")
    damage(shard / file)
    work, out = tmp_path / "work", tmp_path / "run"
    capsys.readouterr()
    argv = [
        "train-segmentation", "--source", source, "--generated", shard, "--out", out, "--work-dir", work,
        "--model", "daformer_tiny", "--iterations", 2, "--batch-size", 2, "--crop-size", 32, "--threads", 1,
        "--checkpoint-interval", 1,
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dginstyle train-segmentation: error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and "Traceback" not in err, err
    assert lines[0].startswith(f"dginstyle train-segmentation: error: {shard / file}: {cause}"), lines[0]
    if "checksum" in cause:
        assert str(shard / "manifest.json") in lines[0]
    # nothing trained: no settings record, no checkpoint (the CLI may have made and marked the work folder)
    assert not out.exists() and not (work.exists() and {p.name for p in work.iterdir()} & {"settings.json", "last_checkpoint"})
    assert not list(work.glob("*.pth")) and not list(work.glob(".*.tmp"))


def test_a_good_shard_passes_in_a_pool_and_damage_is_found_there_too(tmp_path):
    from dginstyle.segmentation.datasets import generated_samples
    from dginstyle.segmentation.shard_check import verify_shard

    shard = make_shard(tmp_path / "shard0", count=6)
    verify_shard(shard, generated_samples(shard), workers=2)
    truncate(shard / "labels" / "4.png")
    with pytest.raises(DataError, match=re.escape(f"{shard / 'labels' / '4.png'}: generated label is corrupt or truncated")):
        verify_shard(shard, generated_samples(shard), workers=2)


def test_what_a_manifest_records_decides_what_is_compared(tmp_path):
    from dginstyle.segmentation.datasets import generated_samples
    from dginstyle.segmentation.shard_check import verify_shard

    shard = make_shard(tmp_path / "shard0")
    manifest = json.loads((shard / "manifest.json").read_text())
    change_one_pixel(shard / "labels" / "0.png")
    samples = generated_samples(shard)
    # a copy made by an older quality-control: its label hashes are the unfiltered labels', not compared
    (shard / "manifest.json").write_text(json.dumps({**manifest, "quality_control": {"mode": "class"}}))
    verify_shard(shard, samples)
    # quality-control now records the hashes of its own labels: compared
    (shard / "manifest.json").write_text(json.dumps({**manifest, "quality_control": {"mode": "class"}, "unfiltered_label_sha256": {}}))
    with pytest.raises(DataError, match="checksum differs"):
        verify_shard(shard, samples)
    # no hashes recorded (a shard made by hand): decoded only
    (shard / "manifest.json").write_text("{}")
    verify_shard(shard, samples)
    (shard / "manifest.json").unlink()
    verify_shard(shard, samples)
    # hashes recorded, but not for this pair
    del manifest["image_sha256"]["2"]
    (shard / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=re.escape(f"{shard / 'images' / '2.png'}: {shard / 'manifest.json'} records no sha256 of this image (pair 2)")):
        verify_shard(shard, samples)
    # an RGB label is no label map
    Image.new("RGB", (32, 32)).save(shard / "labels" / "1.png")
    (shard / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match=re.escape(f"{shard / 'labels' / '1.png'}: generated label has mode RGB")):
        verify_shard(shard, samples)
