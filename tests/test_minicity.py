"""The miniature world: class coverage and imbalance, determinism, domain styles, the contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dginstyle.data import contract, minicity
from dginstyle.data.minicity import DOMAINS, LABELLED_DOMAINS, prepare_minicity, render_sample
from dginstyle.io import DataError, read_label_png
from dginstyle.labels import CLASSES, IGNORE, NUM_CLASSES

RARE = ("pole", "traffic light", "traffic sign", "rider", "motorcycle", "bicycle")
TARGETS = tuple(d for d in LABELLED_DOMAINS if d != "game")


def _render(domain: str, n: int, seed: int = 11, size=(128, 64)):
    return [render_sample(domain, seed, "train", i, *size) for i in range(n)]


@pytest.fixture(scope="module")
def game300():
    return _render("game", 300)


@pytest.fixture(scope="module")
def styled():
    """A few dozen images per labelled domain, for style comparisons."""
    return {d: _render(d, 40, seed=5) for d in LABELLED_DOMAINS}


def _shares(samples) -> np.ndarray:
    counts = np.zeros(256, np.int64)
    for _, label, _, _ in samples:
        counts += np.bincount(label.ravel(), minlength=256)
    return counts / counts.sum()


def test_every_class_appears_in_a_few_hundred_game_images(game300):
    counts = np.zeros(256, np.int64)
    for _, label, _, _ in game300:
        counts += np.bincount(label.ravel(), minlength=256)
    missing = [CLASSES[c] for c in range(NUM_CLASSES) if counts[c] == 0]
    assert not missing, f"classes never drawn: {missing}"
    # Only train IDs and ignore are written.
    assert counts[NUM_CLASSES:IGNORE].sum() == 0


def test_class_imbalance_like_street_datasets(game300):
    share = _shares(game300)
    for name in RARE:
        assert share[CLASSES.index(name)] < 0.02, f"{name} covers {share[CLASSES.index(name)]:.3f} of pixels"
    dominant = sum(share[CLASSES.index(n)] for n in ("road", "building", "sky", "vegetation"))
    assert dominant > 0.55
    assert share[CLASSES.index("road")] > 0.15 and share[CLASSES.index("building")] > 0.1
    # Rare things are in a minority of images; trains rarer still.
    present = np.mean([[np.any(label == c) for c in range(NUM_CLASSES)] for _, label, _, _ in game300], axis=0)
    for name in ("rider", "motorcycle", "bicycle", "train"):
        assert present[CLASSES.index(name)] < 0.5, name
    assert present[CLASSES.index("train")] < 0.15
    # Some ignore pixels exist (clutter, track beds) but few.
    assert 0 < share[IGNORE] < 0.05


def test_image_and_label_agree(game300):
    """A pixel's colour predicts its class far better than chance: drawn where labelled."""
    rgb = np.concatenate([s[0].reshape(-1, 3) for s in game300[:60]]).astype(np.float32)
    lab = np.concatenate([s[1].ravel() for s in game300[:60]])
    classes = [c for c in (0, 2, 8, 10, 13) if np.any(lab == c)]
    keep = np.isin(lab, classes)
    rgb, lab = rgb[keep], lab[keep]
    means = np.stack([rgb[lab == c].mean(axis=0) for c in classes])
    nearest = np.asarray(classes)[np.argmin(((rgb[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    assert (nearest == lab).mean() > 0.6
    # The sky of the game look is blue.
    sky = rgb[lab == 10]
    assert sky[:, 2].mean() > sky[:, 0].mean() + 40


def _class_mean(samples, c: int) -> np.ndarray:
    px = np.concatenate([rgb[label == c] for rgb, label, _, _ in samples])
    return px.astype(np.float32).mean(axis=0) / 255.0


@pytest.mark.parametrize("target", TARGETS)
def test_targets_differ_in_style_from_the_source(styled, target):
    game, other = styled["game"], styled[target]
    d_road = np.linalg.norm(_class_mean(game, 0) - _class_mean(other, 0))
    d_sky = np.linalg.norm(_class_mean(game, 10) - _class_mean(other, 10))
    d_veg = np.linalg.norm(_class_mean(game, 8) - _class_mean(other, 8))
    assert max(d_road, d_sky) > 0.1 and d_veg > 0.08, (d_road, d_sky, d_veg)
    # ... while what is where stays alike: class shares within a small total variation.
    tv = 0.5 * np.abs(_shares(game)[:NUM_CLASSES] - _shares(other)[:NUM_CLASSES]).sum()
    assert tv < 0.16, tv


def test_dark_domains_are_darker(styled):
    def brightness(samples):
        return np.mean([rgb.mean() for rgb, _, _, _ in samples])

    game = brightness(styled["game"])
    assert brightness(styled["darkzurich"]) < 0.55 * game
    night = [s for s in styled["acdc"] if s[2].condition == "night"]
    assert night and np.mean([rgb.mean() for rgb, *_ in night]) < 0.55 * game
    # The game look is the most saturated.
    def saturation(samples):
        return np.mean([(rgb.max(-1).astype(float) - rgb.min(-1)).mean() for rgb, *_ in samples])

    assert all(saturation(styled["game"]) > 1.3 * saturation(styled[d]) for d in TARGETS)


def test_acdc_mixes_conditions(styled):
    conditions = {s[2].condition for s in styled["acdc"]}
    assert conditions == {"fog", "rain", "snow", "night"}


@pytest.mark.parametrize("size", [(256, 128), (128, 128), (96, 40)])
def test_other_sizes(size):
    rgb, label, _, _ = render_sample("cityscapes", 0, "val", 3, *size)
    assert rgb.shape == (size[1], size[0], 3) and rgb.dtype == np.uint8
    assert label.shape == (size[1], size[0]) and label.dtype == np.uint8


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_determinism_across_worker_counts_and_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(minicity, "CHUNK", 4)  # many chunks, so two workers interleave
    splits = {"train": 14, "val": 5}
    a = prepare_minicity(tmp_path / "a", "acdc", splits, 42, 128, 64, 1, None, 50)
    b = prepare_minicity(tmp_path / "b", "acdc", splits, 42, 128, 64, 2, None, 50)
    files_a, files_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert len(files_a) == 2 * 19 and files_a == files_b
    assert a["label_sha256"] == b["label_sha256"]
    assert (tmp_path / "a" / "conditions.json").read_text() == (tmp_path / "b" / "conditions.json").read_text()
    c = prepare_minicity(tmp_path / "c", "acdc", splits, 43, 128, 64, 1, None, 50)
    assert c["label_sha256"]["train/acdc_train_000000"] != a["label_sha256"]["train/acdc_train_000000"]
    differing = sum(a["label_sha256"][k] != c["label_sha256"][k] for k in a["label_sha256"])
    assert differing == len(a["label_sha256"])


def test_prepared_dataset_obeys_the_contract(tmp_path):
    out = tmp_path / "mini_game"
    manifest = prepare_minicity(out, "game", {"train": 9, "val": 3}, 3, 128, 64, 1, None, 100)
    assert manifest == contract.read_manifest(out)
    assert manifest["dataset"] == "mini_game" and manifest["format"] == "minicity"
    assert manifest["domain"] == "game" and manifest["seed"] == 3 and manifest["source_root"] is None
    assert manifest["size"] == {"width": 128, "height": 64}
    assert manifest["labelled"] is True and manifest["splits"] == {"train": 9, "val": 3}
    assert "palette" in manifest["style"] and "params" in manifest["style"]
    json.dumps(manifest)  # plain JSON throughout
    for split, n in (("train", 9), ("val", 3)):
        stems = contract.read_split(out, split)
        assert stems == sorted(stems) == [f"game_{split}_{i:06d}" for i in range(n)]
        stats = json.loads((out / "class_stats" / f"{split}.json").read_text())
        assert stats["classes"] == list(CLASSES) and stats["min_pixels"] == 100
        assert set(stats["image_class_pixels"]) == set(stems)
        total = np.zeros(NUM_CLASSES, np.int64)
        for stem in stems:
            label_file = contract.label_path(out, split, stem)
            label = read_label_png(label_file)
            assert label.shape == (64, 128)
            assert set(np.unique(label)) <= set(range(NUM_CLASSES)) | {IGNORE}
            assert hashlib.sha256(label_file.read_bytes()).hexdigest() == manifest["label_sha256"][f"{split}/{stem}"]
            counts = np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES]
            assert stats["image_class_pixels"][stem] == counts.tolist()
            total += counts
            with Image.open(contract.image_dir(out, split) / f"{stem}.png") as img:
                assert img.mode == "RGB" and img.size == (128, 64)
        assert stats["class_pixels"] == total.tolist()
        road = stats["images_by_class"]["road"]
        assert road == sorted(s for s in stems if stats["image_class_pixels"][s][0] > 100)
    assert not (out / "captions.jsonl").exists()
    assert json.loads((out / "conditions.json").read_text())["val"] == {f"game_val_{i:06d}": "sunny" for i in range(3)}
    # A rerun replaces the folder in one piece.
    prepare_minicity(out, "game", {"train": 2}, 3, 128, 64, 1, "renamed", 100)
    assert contract.read_manifest(out)["dataset"] == "renamed" and not (out / "val.txt").exists()


def test_prior_corpus_is_captioned_and_unlabelled(tmp_path):
    out = tmp_path / "prior"
    manifest = prepare_minicity(out, "prior", {"train": 60}, 1, 128, 64, 2, None, 3000)
    assert manifest["labelled"] is False and manifest["label_sha256"] == {}
    assert not (out / "labels").exists() and not (out / "class_stats").exists()
    assert len(list((out / "images" / "train").glob("*.png"))) == 60
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["stem"] for r in rows] == contract.read_split(out, "train")
    weathers = set()
    for r in rows:
        words = [w for w in ("sunny", "foggy", "rainy", "snowy", "night") if w in r["caption"]]
        assert words == [r["weather"]], r
        assert r["style"] in r["caption"]
        assert "street" in r["caption"]
        weathers.add(r["weather"])
    assert weathers == {"sunny", "foggy", "rainy", "snowy", "night"}
    styles = {r["style"] for r in rows}
    assert len(styles) >= 5 and not any("game" in s for s in styles)


def test_prior_never_reuses_a_target_style():
    from dginstyle.data.minicity import styles

    targets = {tuple(np.round(c, 3)) for d in TARGETS for cols in styles.DOMAIN_SPECS[d]["palette"].values() for c in cols}
    for i in range(20):
        st = render_sample("prior", 2, "train", i, 64, 32)[2]
        used = {tuple(np.round(c, 3)) for cols in st.palette.values() for c in cols}
        assert not (used & targets)


def test_unknown_domain_and_bad_arguments(tmp_path):
    with pytest.raises(DataError) as err:
        prepare_minicity(tmp_path / "x", "gta6", {"train": 1}, 0, 128, 64, 1, None, 10)
    message = str(err.value)
    assert "gta6" in message and all(d in message for d in DOMAINS)
    with pytest.raises(DataError):
        prepare_minicity(tmp_path / "x", "game", {"train/..": 1}, 0, 128, 64, 1, None, 10)
    with pytest.raises(DataError):
        prepare_minicity(tmp_path / "x", "game", {"train": 1}, 0, 4, 4, 1, None, 10)
    assert not (tmp_path / "x").exists()


def _sizes(labels) -> dict:
    """Median pole width (pixel runs along a row) and median traffic light / sign component."""
    from scipy import ndimage

    runs, parts = [], {6: [], 7: []}
    for label in labels:
        for row in label == CLASSES.index("pole"):
            edges = np.diff(np.r_[0, row.astype(int), 0])
            runs += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
        for c in parts:
            components, count = ndimage.label(label == c)
            if count:
                parts[c] += list(np.bincount(components.ravel())[1:])
    return {"pole": np.median(runs), "traffic light": np.median(parts[6]), "traffic sign": np.median(parts[7])}


def test_thin_objects_minimum_widens_only_poles_lights_and_signs(tmp_path):
    thin = [render_sample("game", 11, "train", i, 128, 64, thin_objects_px=3)[1] for i in range(40)]
    physical = [render_sample("game", 11, "train", i, 128, 64)[1] for i in range(40)]
    before, after = _sizes(physical), _sizes(thin)
    assert before["pole"] <= 1.5 and after["pole"] >= 3
    assert after["traffic light"] >= 4 * before["traffic light"] and after["traffic light"] >= 30  # 4.5 x 9 px boxes
    assert after["traffic sign"] >= 3 * before["traffic sign"] and after["traffic sign"] >= 15  # 6 px shapes
    small = [CLASSES.index(c) for c in ("pole", "traffic light", "traffic sign")]
    for a, b in zip(physical, thin):
        changed = a != b
        assert (np.isin(a[changed], small) | np.isin(b[changed], small)).all(), "only thin objects may change"
    manifest = prepare_minicity(tmp_path / "thin", "game", {"train": 2}, 11, 128, 64, 1, None, 10, thin_objects_px=3)
    assert manifest["thin_objects_px"] == 3.0
    assert np.array_equal(read_label_png(contract.label_path(tmp_path / "thin", "train", contract.read_split(tmp_path / "thin", "train")[1])), thin[1])
    with pytest.raises(DataError, match="thin_objects_px"):
        prepare_minicity(tmp_path / "bad", "game", {"train": 1}, 0, 128, 64, 1, None, 10, thin_objects_px=-1)
    assert not any(tmp_path.glob("*bad*"))
