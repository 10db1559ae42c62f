"""select_layouts: RCS, crops, prompts and the weather schedule of the generation plan."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest

from dginstyle.data import contract
from dginstyle.data.minicity import prepare_minicity
from dginstyle.diffusion import layouts
from dginstyle.io import DataError, read_label_png
from dginstyle.labels import CLASSES


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts") / "game"
    prepare_minicity(root, "game", {"train": 24}, 0, 128, 64, 1, None, 12)
    return root


def _plan(source, out, **kw):
    args = dict(num_pairs=14, crop_size=32, rcs_min_pixels=12, seed=0)
    args.update(kw)
    return layouts.select_layouts(source, out, **args)


def test_same_seed_same_plan_other_seed_other_plan(source, tmp_path):
    _plan(source, tmp_path / "a.jsonl")
    _plan(source, tmp_path / "b.jsonl")
    _plan(source, tmp_path / "c.jsonl", seed=1)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    rows = layouts.read_plan(tmp_path / "a.jsonl")
    assert [r["id"] for r in rows] == list(range(14))


def test_schedule_counts_scale_by_largest_remainder():
    assert layouts.schedule_counts(layouts.DEFAULT_WEATHER_SCHEDULE, 7000) == {"adverse": 3000, "night": 1000, "plain": 3000}
    assert layouts.schedule_counts(layouts.DEFAULT_WEATHER_SCHEDULE, 7) == {"adverse": 3, "night": 1, "plain": 3}
    assert layouts.schedule_counts(layouts.DEFAULT_WEATHER_SCHEDULE, 14) == {"adverse": 6, "night": 2, "plain": 6}
    for n in (0, 1, 5, 13, 101):
        assert sum(layouts.schedule_counts(layouts.DEFAULT_WEATHER_SCHEDULE, n).values()) == n
    assert layouts.schedule_counts({"plain": 1}, 5) == {"plain": 5}
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        layouts.schedule_counts({"sunny": 1}, 5)


def test_rows_prompts_and_proportions(source, tmp_path):
    rows = _plan(source, tmp_path / "p.jsonl")
    kinds = [r["prompt_kind"] for r in rows]
    assert {k: kinds.count(k) for k in set(kinds)} == {"adverse": 6, "night": 2, "plain": 6}
    weather_re = re.compile(r"^A city street scene with (.+), in (\w+) weather\.$")
    for row in rows:
        label = read_label_png(contract.label_path(source, "train", row["stem"]))
        x0, y0, x1, y1 = row["crop"]
        assert (x1 - x0, y1 - y0) == (32, 32) and 0 <= x0 and 0 <= y0 and x1 <= label.shape[1] and y1 <= label.shape[0]
        present = [int(c) for c in np.unique(label[y0:y1, x0:x1]) if c < 19]
        names = " ".join(CLASSES[c] for c in present)  # train-ID order
        assert row["classes"] == [CLASSES[c] for c in present]
        assert row["rare_class"]["id"] in present and row["rare_class"]["name"] == CLASSES[row["rare_class"]["id"]]
        if row["prompt_kind"] == "plain":
            assert row["prompt"] == names and row["weather"] is None
        else:
            m = weather_re.match(row["prompt"])
            assert m and m.group(1) == names and m.group(2) == row["weather"]
            if row["prompt_kind"] == "night":
                assert row["weather"] == "night"
            else:
                assert row["weather"] in ("snowy", "rainy", "foggy")  # sunny is not adverse
    # the schedule is shuffled, not laid out in blocks
    assert kinds != sorted(kinds)


def test_rcs_probabilities_by_hand():
    counts = [50, 30, 20] + [0] * 16
    p = layouts.rcs_probabilities(counts, 0.5)
    logits = [(1 - 0.5) / 0.5, (1 - 0.3) / 0.5, (1 - 0.2) / 0.5]
    z = sum(math.exp(v) for v in logits)
    assert p[:3] == pytest.approx([math.exp(v) / z for v in logits], rel=1e-12)
    assert (p[3:] == 0).all()
    # T = 0.01 on a skewed distribution: the rarest present class dominates
    counts = [900, 90, 9, 1] + [0] * 15
    p = layouts.rcs_probabilities(counts, 0.01)
    f = np.array([900, 90, 9, 1]) / 1000
    e = np.exp((1 - f) / 0.01 - (1 - f).max() / 0.01)
    assert p[:4] == pytest.approx(e / e.sum(), rel=1e-9)
    assert p.argmax() == 3 and p.sum() == pytest.approx(1.0)
    # not eligible (no image with enough pixels) -> 0
    p = layouts.rcs_probabilities(counts, 0.01, eligible=np.array([True, True, True, False] + [False] * 15))
    assert p[3] == 0 and p[2] == p.max()


def test_rare_class_frequencies_follow_rcs(source, tmp_path):
    rows = _plan(source, tmp_path / "many.jsonl", num_pairs=300, crop_size=16)
    stats = json.loads((source / "class_stats" / "train.json").read_text())
    images = layouts.eligible_images(stats, 12)
    p = layouts.rcs_probabilities(stats["class_pixels"], 0.01, eligible=np.array([len(images[c]) > 0 for c in range(19)]))
    seen = np.bincount([r["rare_class"]["id"] for r in rows], minlength=19) / len(rows)
    assert np.abs(seen - p).max() < 0.1
    for r in rows:
        assert r["stem"] in images[r["rare_class"]["id"]]


def test_crop_centred_and_clamped():
    label = np.zeros((100, 100), np.uint8)
    label[50, 50] = 7
    rng = np.random.default_rng(0)
    assert layouts.choose_crop(label, 7, (20, 20), 10, 0.0, rng)[0] == [40, 40, 60, 60]
    label[:] = 0
    label[3, 2] = 7
    box, share = layouts.choose_crop(label, 7, (20, 10), 10, 0.0, rng)
    assert box == [0, 0, 20, 10] and share == pytest.approx(1 / 200)


def test_crop_acceptance_and_last_try():
    label = np.zeros((100, 100), np.uint8)
    label[5, 5] = 7  # a lone pixel: a crop around it holds 1/400 of class 7
    label[80:90, 80:90] = 7  # a block: a crop around it holds >= 25/400
    for seed in range(20):
        box, share = layouts.choose_crop(label, 7, (20, 20), 10, 0.05, np.random.default_rng(seed))
        assert share > 0.05 and box[0] >= 70
    # nothing can pass 100%: the last try is kept, whichever it was
    box, share = layouts.choose_crop(label, 7, (20, 20), 3, 1.0, np.random.default_rng(0))
    assert share < 1.0 and (label[box[1] : box[3], box[0] : box[2]] == 7).any()


def test_crop_larger_than_image_is_an_error(source, tmp_path):
    with pytest.raises(DataError, match=r"crop 256x32 is larger than the image 128x64"):
        _plan(source, tmp_path / "x.jsonl", crop_size="256x32")


def test_cli_flags(source, tmp_path):
    parser = argparse.ArgumentParser()
    layouts.add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.jsonl"
    args = parser.parse_args(
        ["select-layouts", "--source", str(source), "--out", str(out), "--num-pairs", "10", "--crop-size", "48x32",
         "--crop-tries", "5", "--crop-min-share", "0.02", "--rcs-temperature", "0.05", "--rcs-min-pixels", "12",
         "--weather", "adverse=1,night=1,plain=0", "--seed", "3"]
    )
    args.handler(args)
    rows = layouts.read_plan(out)
    assert len(rows) == 10 and {r["prompt_kind"] for r in rows} == {"adverse", "night"}
    assert all(r["crop"][2] - r["crop"][0] == 48 and r["crop"][3] - r["crop"][1] == 32 for r in rows)


def test_uniform_sampling_ablation_draws_images_and_crops_without_rcs(source, tmp_path):
    rows = _plan(source, tmp_path / "u.jsonl", num_pairs=60, sampling="uniform")
    rcs = _plan(source, tmp_path / "r.jsonl", num_pairs=60)
    assert all(r["rare_class"] is None and r["rare_share"] is None for r in rows)
    for r in rows:
        x0, y0, x1, y1 = r["crop"]
        assert (x1 - x0, y1 - y0) == (32, 32) and 0 <= x0 and x1 <= 128 and 0 <= y0 and y1 <= 64
        label = read_label_png(contract.label_path(source, "train", r["stem"]))[y0:y1, x0:x1]
        assert r["class_ids"] == [int(c) for c in np.unique(label) if c < len(CLASSES)]
    # RCS puts rare classes into the crops far more often than uniform crops do
    rare = {CLASSES.index(n) for n in ("pole", "traffic light", "traffic sign", "rider", "motorcycle", "bicycle")}
    def share(plan):
        return np.mean([bool(rare & set(r["class_ids"])) for r in plan])
    assert share(rcs) > share(rows)
    with pytest.raises(ValueError, match="sampling"):
        _plan(source, tmp_path / "x.jsonl", sampling="random")
