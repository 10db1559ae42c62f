"""`dginstyle prepare <real format>`: fake trees in each official layout -> the contract.

Expectations are computed here, independently of dginstyle.labels: the ID -> train-ID pairs
below are copied by hand from the official Cityscapes label definition
(cityscapesScripts helpers/labels.py) and from the Mapillary v1.2 list in docs/method.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dginstyle.cli import main
from dginstyle.io import DataError
from fake_trees import (
    corrupt_png_crc,
    make_tree,
    truncate,
    write_image,
    write_label_png,
)

REPO = Path(__file__).resolve().parent.parent

# Cityscapes label ID -> train ID (official definition), a hand-picked subset.
CITYSCAPES = {0: 255, 7: 0, 8: 1, 9: 255, 11: 2, 17: 5, 20: 7, 23: 10, 24: 11, 26: 13, 33: 18}
# Mapillary Vistas v1.2 index -> train ID (docs/method.md section 4), plus a few unmapped classes.
MAPILLARY = {
    13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
    29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17,
    52: 18, 0: 255, 1: 255, 44: 255, 65: 255,
}
# BDD100K masks are already train IDs.
BDD = {0: 0, 5: 5, 11: 11, 13: 13, 18: 18, 255: 255}

EXPECTED_MAP = {
    "gta5": CITYSCAPES,
    "cityscapes": CITYSCAPES,
    "acdc": CITYSCAPES,
    "darkzurich": CITYSCAPES,
    "bdd100k": BDD,
    "mapillary": MAPILLARY,
}
IMAGE_EXT = {"gta5": ".png", "cityscapes": ".png", "acdc": ".png", "darkzurich": ".png", "bdd100k": ".jpg", "mapillary": ".jpg"}
CLASSES = 19


def run(*args) -> int:
    return main(["prepare", *map(str, args)])


def expected_labels(raw: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(raw)
    for (y, x), value in np.ndenumerate(raw):
        out[y, x] = mapping[int(value)]
    return out


def build(fmt, tmp_path, count=3, **kw):
    return make_tree(fmt, tmp_path / "raw" / fmt, count=count, label_values=tuple(EXPECTED_MAP[fmt]), **kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_staging_left(out: Path) -> bool:
    return not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


# ------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize(
    "fmt,workers",
    [("gta5", 2), ("cityscapes", 2), ("bdd100k", 1), ("mapillary", 2), ("acdc", 1), ("darkzurich", 1)],
)
def test_every_format_converts_pixel_for_pixel(tmp_path, fmt, workers):
    tree = build(fmt, tmp_path, count=5 if fmt == "acdc" else 3)
    out = tmp_path / "prepared" / fmt
    assert run(fmt, "--root", tree.root, "--out", out, "--workers", workers, "--name", f"my-{fmt}") == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == f"my-{fmt}"
    assert manifest["format"] == fmt
    assert manifest["source_root"] == str(tree.root.resolve())
    assert manifest["splits"] == {s: len(tree.split(s)) for s in tree.splits}
    assert manifest["skipped"] == []
    for raw, train_id in EXPECTED_MAP[fmt].items():
        if train_id != 255:
            assert manifest["mapping"][str(raw)] == train_id

    for split in tree.splits:
        samples = tree.split(split)
        # the split list: sorted stems, and nothing from the sibling files the reader ignores
        assert (out / f"{split}.txt").read_text().splitlines() == [s.stem for s in samples]
        stats = json.loads((out / "class_stats" / f"{split}.json").read_text())
        totals = np.zeros(CLASSES, dtype=np.int64)
        for sample in samples:
            label_file = out / "labels" / split / f"{sample.stem}.png"
            with Image.open(label_file) as img:
                assert img.mode == "L"
                written = np.asarray(img)
            expected = expected_labels(sample.raw, EXPECTED_MAP[fmt])
            np.testing.assert_array_equal(written, expected)
            # the image is a symlink to the original, not a copy
            link = out / "images" / split / f"{sample.stem}{IMAGE_EXT[fmt]}"
            assert link.is_symlink()
            assert Path(os.readlink(link)) == sample.image.resolve()
            # checksums recomputed from the written file
            assert manifest["label_sha256"][f"{split}/{sample.stem}"] == sha256(label_file)
            counts = np.bincount(expected.ravel(), minlength=256)[:CLASSES]
            assert stats["image_class_pixels"][sample.stem] == counts.tolist()
            totals += counts
        assert stats["class_pixels"] == totals.tolist()
        assert len(list((out / "labels" / split).iterdir())) == len(samples)
    assert len(manifest["label_sha256"]) == len(tree.samples)
    if fmt == "acdc":
        for split in tree.splits:
            conditions: dict[str, int] = {}
            for s in tree.split(split):
                conditions[s.condition] = conditions.get(s.condition, 0) + 1
            assert manifest["conditions"][split] == dict(sorted(conditions.items()))
            per_stem = json.loads((out / "conditions.json").read_text())[split]
            assert per_stem == {s.stem: s.condition for s in tree.split(split)}
    assert no_staging_left(out)


def test_split_selection_and_rcs_threshold(tmp_path):
    tree = build("cityscapes", tmp_path)
    out = tmp_path / "cs"
    assert run("cityscapes", "--root", tree.root, "--out", out, "--splits", "val", "--rcs-min-pixels", "5", "--workers", 1) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"val": 3}
    assert not (out / "train.txt").exists()
    stats = json.loads((out / "class_stats" / "val.json").read_text())
    for c, stems in enumerate(stats["images_by_class"].values()):
        assert stems == sorted(s for s, counts in stats["image_class_pixels"].items() if counts[c] > 5)


# ------------------------------------------------------------------------------ bad input


def error_of(capsys, *args) -> str:
    assert run(*args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dginstyle prepare: error: ")
    return err


def test_missing_root(tmp_path, capsys):
    err = error_of(capsys, "gta5", "--root", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert f"{tmp_path / 'nowhere'}: dataset root does not exist" in err
    assert not (tmp_path / "out").exists()


def test_layout_of_another_dataset(tmp_path, capsys):
    tree = build("cityscapes", tmp_path)
    err = error_of(capsys, "gta5", "--root", tree.root, "--out", tmp_path / "out")
    assert str(tree.root) in err and "not a gta5 dataset root" in err
    assert f"{tree.root / 'images'}: missing folder" in err
    assert "images/<5-digit>.png" in err  # what gta5 expects
    assert "looks like a cityscapes root" in err


def test_unknown_split(tmp_path, capsys):
    tree = build("darkzurich", tmp_path)
    err = error_of(capsys, "darkzurich", "--root", tree.root, "--out", tmp_path / "out", "--splits", "train")
    assert "'train'" in err and "labelled splits are val" in err


def test_image_without_label_and_label_without_image(tmp_path, capsys):
    tree = build("cityscapes", tmp_path)
    victim = tree.split("train")[1]
    victim.label.unlink()
    err = error_of(capsys, "cityscapes", "--root", tree.root, "--out", tmp_path / "out")
    assert f"{victim.image}: image without its label (expected {victim.label})" in err

    tree = build("bdd100k", tmp_path)
    victim = tree.split("val")[0]
    victim.image.unlink()
    err = error_of(capsys, "bdd100k", "--root", tree.root, "--out", tmp_path / "out2")
    assert f"{victim.label}: label without its image (expected {victim.image})" in err
    assert no_staging_left(tmp_path / "out2")


@pytest.mark.parametrize(
    "fmt,which,damage,words",
    [
        ("cityscapes", "image", corrupt_png_crc, "corrupt or truncated image"),
        ("acdc", "image", truncate, "corrupt or truncated image"),
        ("gta5", "label", truncate, "corrupt or truncated"),
        ("cityscapes", "label", corrupt_png_crc, "corrupt or truncated"),
        ("bdd100k", "image", truncate, "truncated JPEG"),
        ("mapillary", "image", lambda p: truncate(p, keep=0.95), "truncated JPEG"),
    ],
)
def test_corrupt_or_truncated_files(tmp_path, capsys, fmt, which, damage, words):
    tree = build(fmt, tmp_path, count=4 if fmt == "acdc" else 3)
    victim = tree.samples[-1]
    damage(getattr(victim, which))
    out = tmp_path / "out"
    err = error_of(capsys, fmt, "--root", tree.root, "--out", out, "--workers", 2)
    assert f"{getattr(victim, which)}: " in err and words in err
    assert not out.exists() and no_staging_left(out)


def test_label_values_outside_the_id_range(tmp_path, capsys):
    tree = build("cityscapes", tmp_path)
    victim = tree.split("val")[0]
    raw = victim.raw.copy()
    raw[0, 0], raw[1, 1] = 34, 200
    write_label_png(victim.label, raw)
    err = error_of(capsys, "cityscapes", "--root", tree.root, "--out", tmp_path / "out", "--workers", 2)
    assert f"{victim.label}: label values [34, 200] are outside the cityscapes ID range (0..33)" in err

    tree = build("bdd100k", tmp_path)
    victim = tree.split("train")[0]
    raw = victim.raw.copy()
    raw[0, 0] = 19
    write_label_png(victim.label, raw)
    err = error_of(capsys, "bdd100k", "--root", tree.root, "--out", tmp_path / "out")
    assert f"{victim.label}: label values [19] are outside the bdd100k ID range (0..18, 255)" in err


def test_label_size_differs_from_image_error_and_skip(tmp_path, capsys):
    tree = build("gta5", tmp_path, count=4)
    victim = tree.samples[2]
    write_image(victim.image, 13, 8)
    out = tmp_path / "out"
    err = error_of(capsys, "gta5", "--root", tree.root, "--out", out, "--workers", 2)
    assert f"{victim.label}: label is 12x8 but its image {victim.image} is 13x8" in err
    assert not out.exists()

    assert run("gta5", "--root", tree.root, "--out", out, "--size-mismatch", "skip", "--workers", 2) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 3}
    [skipped] = manifest["skipped"]
    assert skipped["stem"] == victim.stem and skipped["split"] == "train"
    assert "12x8" in skipped["reason"] and "13x8" in skipped["reason"]
    assert victim.stem not in (out / "train.txt").read_text().split()
    assert not (out / "labels" / "train" / f"{victim.stem}.png").exists()
    assert not (out / "images" / "train" / f"{victim.stem}.png").exists()


def test_failed_run_keeps_previous_output_and_rerun_after_fix_completes(tmp_path, capsys):
    tree = build("cityscapes", tmp_path)
    out = tmp_path / "out"
    assert run("cityscapes", "--root", tree.root, "--out", out, "--workers", 2) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.is_symlink()}

    victim = tree.split("val")[-1]
    good = victim.label.read_bytes()
    truncate(victim.label)
    err = error_of(capsys, "cityscapes", "--root", tree.root, "--out", out, "--workers", 2)
    assert str(victim.label) in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before
    assert no_staging_left(out)

    victim.label.write_bytes(good)
    assert run("cityscapes", "--root", tree.root, "--out", out, "--workers", 2) == 0
    assert json.loads((out / "manifest.json").read_text())["splits"] == {"train": 3, "val": 3}
    assert no_staging_left(out)


def test_cli_subprocess_exit_code_and_one_line(tmp_path):
    tree = build("darkzurich", tmp_path)
    victim = tree.samples[0]
    corrupt_png_crc(victim.label)
    result = subprocess.run(
        [sys.executable, "-m", "dginstyle", "prepare", "darkzurich", "--root", str(tree.root), "--out", str(tmp_path / "out"), "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dginstyle prepare: error: {victim.label}: ")
    assert "Traceback" not in result.stderr


def test_darkzurich_ignores_unlabelled_folders(tmp_path):
    tree = build("darkzurich", tmp_path)
    assert (tree.root / "rgb_anon" / "train").is_dir() and (tree.root / "rgb_anon" / "val_ref").is_dir()
    out = tmp_path / "out"
    assert run("darkzurich", "--root", tree.root, "--out", out, "--workers", 1) == 0
    assert json.loads((out / "manifest.json").read_text())["splits"] == {"val": 3}


# ------------------------------------------------------------------------------ layouts, minicity


def test_layouts_is_stdlib_only_and_lists_names_only_trees(tmp_path):
    make_tree("gta5", tmp_path / "gta5", count=1500, names_only=True)
    code = (
        "import sys\n"
        "from dginstyle.data import layouts\n"
        f"pairs = layouts.list_pairs('gta5', {str(tmp_path / 'gta5')!r}, 'train')\n"
        f"assert layouts.layout_problems('cityscapes', {str(tmp_path / 'gta5')!r})\n"
        "assert 'numpy' not in sys.modules and 'PIL' not in sys.modules, sorted(sys.modules)\n"
        "print(len(pairs), pairs[0].stem)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1500", "00001"]


def test_check_layout_messages():
    from dginstyle.data.layouts import check_layout, default_splits, layout_problems

    assert default_splits("cityscapes") == ("train", "val")
    assert default_splits("darkzurich") == ("val",)
    with pytest.raises(DataError, match="dataset root does not exist"):
        check_layout("acdc", "/nonexistent/acdc")
    assert layout_problems("acdc", None)[0].startswith("acdc: no dataset root given")


def test_names_only_tree_of_every_format(tmp_path):
    from dginstyle.data.layouts import list_pairs

    for fmt in EXPECTED_MAP:
        tree = make_tree(fmt, tmp_path / fmt, count=8, names_only=True)
        for split in tree.splits:
            assert [p.stem for p in list_pairs(fmt, tree.root, split)] == [s.stem for s in tree.split(split)]


def test_minicity_is_delegated_with_parsed_arguments(tmp_path, monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("dginstyle.data.minicity")
    fake.prepare_minicity = lambda **kw: calls.append(kw) or {"ok": True}
    monkeypatch.setitem(sys.modules, "dginstyle.data.minicity", fake)
    out = tmp_path / "mini"
    assert run("minicity", "--out", out, "--domain", "source", "--splits", "train=800,val=200", "--size", "96x48", "--seed", 3, "--workers", 2) == 0
    assert run("minicity", "--out", out, "--domain", "source", "--splits", "train=1", "--thin-objects-px", "2.5") == 0
    assert calls == [
        dict(out=out, domain="source", splits={"train": 800, "val": 200}, seed=3, width=96, height=48, workers=2, name=None, rcs_min_pixels=3000, thin_objects_px=0.0),
        dict(out=out, domain="source", splits={"train": 1}, seed=0, width=128, height=64, workers=calls[1]["workers"], name=None, rcs_min_pixels=3000, thin_objects_px=2.5),
    ]
    from dginstyle.data.prepare import prepare

    with pytest.raises(DataError, match="WIDTHxHEIGHT"):
        prepare("minicity", out, size="96by48", splits="train=1", domain="source")
    with pytest.raises(DataError, match="not name=count"):
        prepare("minicity", out, size="96x48", splits="train=1,val", domain="source")


# ------------------------------------------------------------------------------ the pool


def _job(value):
    import time

    if value == "boom":
        raise DataError("data/x.png: boom")
    if value == "bug":
        raise ValueError("a bug")
    time.sleep(0.05)
    return value


def test_pool_surfaces_the_first_error_and_stops_promptly():
    import time

    from dginstyle.parallel import chunked, parallel_map

    jobs = chunked(["boom"] + [1] * 200, workers=2)
    assert max(len(j) for j in jobs) <= 32

    start = time.perf_counter()
    with pytest.raises(DataError, match="^data/x.png: boom$"):
        list(parallel_map(_job, ["boom"] + [1] * 200, workers=2))
    assert time.perf_counter() - start < 3  # 200 x 50 ms / 2 workers = 5 s if it ran on
    with pytest.raises(DataError, match="conversion failed in a worker: ValueError: a bug"):
        list(parallel_map(_job, [1, "bug", 1], workers=2))
    assert sorted(parallel_map(_job, [1, 2, 3], workers=2)) == [1, 2, 3]


def test_a_file_name_that_is_not_utf8_is_refused_before_any_work(tmp_path):
    """Linux file names are bytes; one that is not UTF-8 cannot go into the split lists or the
    manifest. It is refused by name (its bytes escaped) before the output folder is made."""
    tree = build("cityscapes", tmp_path)
    victim = tree.split("train")[0]
    stem = os.fsdecode(b"aachen_\xff_000019")
    image = victim.image.rename(victim.image.with_name(f"{stem}_leftImg8bit.png"))
    victim.label.rename(victim.label.with_name(f"{stem}_gtFine_labelIds.png"))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "dginstyle", "prepare", "cityscapes", "--root", str(tree.root), "--out", str(out), "--workers", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    shown = os.fsencode(image).decode("utf-8", "backslashreplace")
    assert "aachen_\\xff_000019_leftImg8bit.png" in shown
    assert lines[0].startswith(f"dginstyle prepare: error: {shown}: the file name is not valid UTF-8"), lines[0]
    assert not out.exists() and no_staging_left(out)
