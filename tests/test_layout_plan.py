"""The generation plan of dginstyle/diffusion/layouts.py, field by field and edge by edge.

Two hand-made sources whose contents are known exactly (tests/test_layouts.py uses the
procedural mini city): "tiny", one 48x32 image whose rarest class is car, so that a crop of the
whole image names road, sidewalk, building, sky and car; and "big", two 1024x512 images whose
rare classes are traffic light (three full rows: no 512 crop ever holds more than 1 % of it),
traffic sign (a 64x48 block: every crop around it holds 1.17 %), pole (exactly 3000 pixels, the
default threshold) and car. With the defaults, a pair drawn on the traffic light therefore uses
all its tries and keeps the last, and a pair on the sign accepts its first: the plan depends on
every default.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pytest

from dginstyle import cli
from dginstyle.data import contract
from dginstyle.diffusion import layouts
from dginstyle.io import DataError, encode_label_png, read_label_png
from dginstyle.labels import CLASSES

ROAD, SIDEWALK, BUILDING, POLE, LIGHT, SIGN, SKY, CAR = 0, 1, 2, 5, 6, 7, 10, 13
TEMPLATE = "A city street scene with {}, in {} weather."


def make_source(root, labels, split="train"):
    """A prepared source as select_layouts reads it: manifest, labels and class statistics."""
    root.mkdir(parents=True)
    (root / "manifest.json").write_text("{}")
    per_image = {}
    for stem, label in labels.items():
        path = contract.label_path(root, split, stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_label_png(label))
        per_image[stem] = np.bincount(label.ravel(), minlength=256)[:19].tolist()
    totals = np.sum([counts for counts in per_image.values()], axis=0).tolist()
    (root / "class_stats").mkdir()
    (root / "class_stats" / f"{split}.json").write_text(json.dumps({"class_pixels": totals, "image_class_pixels": per_image}))
    return root


def tiny_label():
    label = np.full((32, 48), ROAD, np.uint8)
    label[0:8] = SKY
    label[8:16] = BUILDING
    label[16:20] = SIDEWALK
    label[24:28, 20:24] = CAR  # 16 pixels: by far the rarest class
    return label


def big_labels():
    a = np.full((512, 1024), ROAD, np.uint8)
    a[0:100] = SKY
    a[509:512] = LIGHT  # 3072 px, at most 1536 in a 512x512 crop: never > 1 %
    a[300:348, 480:544] = SIGN  # 3072 px, always whole in a 512 crop around it: 1.17 %
    a[150:200, 800:860] = POLE  # 3000 px: not more than the default threshold
    a[320:322, 560:562] = 19  # not a train ID
    a[330:332, 560:562] = 255  # ignore
    b = np.full((512, 1024), ROAD, np.uint8)
    b[0:100] = SKY
    b[300:400, 0:300] = CAR
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("plan") / "tiny", {"t0": tiny_label()})


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("plan") / "big", big_labels())


def expected_prompt(names, weather):
    return " ".join(names) if weather is None else TEMPLATE.format(" ".join(names), weather)


# ----------------------------------------------------------------------------- prompts


def test_prompts_name_the_classes_in_train_id_order():
    assert layouts.make_prompt([CAR, SKY, BUILDING, SIDEWALK, ROAD], None) == "road sidewalk building sky car"
    assert layouts.make_prompt([CAR, ROAD], "foggy") == "A city street scene with road car, in foggy weather."
    assert layouts.make_prompt([LIGHT], "night") == "A city street scene with traffic light, in night weather."
    assert layouts.class_names([LIGHT, POLE]) == "pole traffic light"
    assert layouts.class_names([]) == ""


def test_prompt_vocabulary_holds_every_class_and_every_weather_prompt():
    everything = " ".join(CLASSES)
    assert layouts.prompt_vocabulary() == list(CLASSES) + [TEMPLATE.format(everything, w) for w in ("foggy", "night", "rainy", "snowy", "sunny")]


# ----------------------------------------------------------------------------- the schedule


def test_schedule_counts_largest_remainders_with_ties_in_kind_order():
    default = layouts.DEFAULT_WEATHER_SCHEDULE
    # 3/7 of 5 = 2.14, 1/7 of 5 = 0.71: the one left goes to night (largest remainder), not adverse
    assert layouts.schedule_counts(default, 5) == {"adverse": 2, "night": 1, "plain": 2}
    assert layouts.schedule_counts(default, 1) == {"adverse": 1, "night": 0, "plain": 0}  # a tie: kind order
    assert layouts.schedule_counts(default, 0) == {"adverse": 0, "night": 0, "plain": 0}
    # ties go by kind order, whatever the order of the dict
    assert layouts.schedule_counts({"plain": 1, "night": 1, "adverse": 1}, 2) == {"adverse": 1, "night": 1, "plain": 0}
    assert layouts.schedule_counts({"plain": 1, "night": 1}, 3) == {"night": 2, "plain": 1}
    assert layouts.schedule_counts({"adverse": 1, "plain": 3}, 10) == {"adverse": 3, "plain": 7}  # 2.5 / 7.5: tie
    assert layouts.schedule_counts({"adverse": 0, "plain": 1}, 4) == {"adverse": 0, "plain": 4}  # zero is a count
    assert layouts.schedule_counts({"night": 1}, 3) == {"night": 3}
    for n in range(40):
        counts = layouts.schedule_counts({"adverse": 5, "night": 3, "plain": 1}, n)
        assert sum(counts.values()) == n
        for kind, share in (("adverse", 5 / 9), ("night", 3 / 9), ("plain", 1 / 9)):
            assert abs(counts[kind] - share * n) < 1


def test_schedule_counts_refuses_unknown_kinds_negative_counts_and_an_empty_schedule():
    with pytest.raises(ValueError) as err:
        layouts.schedule_counts({"sunny": 1, "plain": 1}, 5)
    assert str(err.value) == "unknown prompt kinds ['sunny'] in the weather schedule; use ['adverse', 'night', 'plain']"
    for bad in ({"adverse": -1, "plain": 5}, {"plain": 0}, {"plain": 0, "night": 0}, {}):
        with pytest.raises(ValueError) as err:
            layouts.schedule_counts(bad, 5)
        assert str(err.value) == f"weather schedule needs non-negative counts with a positive sum, got {bad}"


def test_parse_schedule():
    assert layouts.parse_schedule("adverse=3000,night=1000,plain=3000") == {"adverse": 3000, "night": 1000, "plain": 3000}
    assert layouts.parse_schedule(" adverse = 2 ,, night=1, ") == {"adverse": 2, "night": 1}  # blanks skipped
    assert layouts.parse_schedule(",plain=4") == {"plain": 4}
    assert layouts.parse_schedule("") == {}
    for bad in ("night", "night=x", "adverse=1=2", "plain=1.5"):
        with pytest.raises(argparse.ArgumentTypeError) as err:
            layouts.parse_schedule(f"plain=1,{bad}")
        assert str(err.value) == f"bad schedule entry {bad!r}: expected kind=count"


# ----------------------------------------------------------------------------- crops


def test_parse_crop_size():
    assert layouts.parse_crop_size(512) == (512, 512)
    assert layouts.parse_crop_size("512") == (512, 512)
    assert layouts.parse_crop_size("48x32") == (48, 32)
    assert layouts.parse_crop_size((48, 32)) == (48, 32)
    assert layouts.parse_crop_size(["48", "32"]) == (48, 32)
    assert layouts.parse_crop_size("1x1") == (1, 1)
    for bad, shown in ((0, "0x0"), ("0x5", "0x5"), ("5x0", "5x0"), ((5, -1), "5x-1"), ((-2, 3), "-2x3")):
        with pytest.raises(ValueError) as err:
            layouts.parse_crop_size(bad)
        assert str(err.value) == f"crop size must be positive, got {shown}"


def test_centred_box_centres_and_clamps_into_the_image():
    size = (60, 100)  # height, width
    assert layouts.centred_box(50, 30, (20, 10), size) == [40, 25, 60, 35]
    assert layouts.centred_box(50, 30, (5, 7), size) == [48, 27, 53, 34]  # odd sizes: x - 5 // 2, y - 7 // 2
    assert layouts.centred_box(3, 2, (20, 10), size) == [0, 0, 20, 10]  # clamped left and top
    assert layouts.centred_box(10, 5, (20, 10), size) == [0, 0, 20, 10]  # exactly at the border
    assert layouts.centred_box(98, 58, (20, 10), size) == [80, 50, 100, 60]  # clamped right and bottom
    assert layouts.centred_box(0, 59, (100, 60), size) == [0, 0, 100, 60]  # the whole image
    for x, y in ((0, 0), (99, 59), (37, 11)):
        box = layouts.centred_box(x, y, (30, 16), size)
        assert box[2] - box[0] == 30 and box[3] - box[1] == 16 and box[0] >= 0 and box[1] >= 0 and box[2] <= 100 and box[3] <= 60
        assert all(type(v) is int for v in box)


def scattered_label():
    label = np.zeros((40, 50), np.uint8)
    label[5:11, 5:11] = SIGN  # a block
    label[30, 40] = SIGN  # a lone pixel
    label[20, 0:9] = SIGN  # a row
    label[35:38, 10:12] = SIGN
    return label


def share_in(label, box, cls):
    x0, y0, x1, y1 = box
    return float((label[y0:y1, x0:x1] == cls).sum()) / ((x1 - x0) * (y1 - y0))


def test_choose_crop_takes_the_first_try_above_min_share_and_else_the_last():
    label, crop = scattered_label(), (10, 6)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        singles = [layouts.choose_crop(label, SIGN, crop, 1, 1.0, rng) for _ in range(6)]  # one try each
        for box, share in singles:
            assert box[2] - box[0] == 10 and box[3] - box[1] == 6
            assert share == share_in(label, box, SIGN) > 0
        shares = sorted({share for _, share in singles})
        for min_share in [0.0] + shares:
            box, share = layouts.choose_crop(label, SIGN, crop, 6, min_share, np.random.default_rng(seed))
            accepted = [single for single in singles if single[1] > min_share]
            assert (box, share) == (accepted[0] if accepted else singles[-1])


def test_choose_crop_makes_at_least_one_try_and_no_more_than_asked():
    label = scattered_label()
    for seed in range(8):
        first = layouts.choose_crop(label, SIGN, (10, 6), 1, 0.0, np.random.default_rng(seed))
        for tries in (0, 1):
            assert layouts.choose_crop(label, SIGN, (10, 6), tries, 1.0, np.random.default_rng(seed)) == first


def test_choose_crop_of_the_whole_image_and_a_lone_pixel():
    label = np.zeros((20, 30), np.uint8)
    label[7, 11] = LIGHT
    box, share = layouts.choose_crop(label, LIGHT, (30, 20), 3, 0.0, np.random.default_rng(0))
    assert box == [0, 0, 30, 20] and share == 1 / 600
    box, share = layouts.choose_crop(label, LIGHT, (8, 4), 3, 0.0, np.random.default_rng(0))
    assert box == [7, 5, 15, 9] and share == 1 / 32


def test_choose_crop_errors():
    label = np.zeros((40, 25), np.uint8)  # 25 wide, 40 high
    label[3, 3] = SIGN
    rng = np.random.default_rng(0)
    for crop in ((26, 10), (30, 20), (10, 41)):
        with pytest.raises(DataError) as err:
            layouts.choose_crop(label, SIGN, crop, 3, 0.0, rng, where="x.png")
        assert str(err.value) == f"x.png: crop {crop[0]}x{crop[1]} is larger than the image 25x40"
    with pytest.raises(DataError) as err:
        layouts.choose_crop(label, SIGN, (30, 20), 3, 0.0, rng)
    assert str(err.value) == ": crop 30x20 is larger than the image 25x40"
    with pytest.raises(DataError) as err:
        layouts.choose_crop(label, LIGHT, (5, 5), 3, 0.0, rng, where="x.png")
    assert str(err.value) == "x.png: holds no pixel of class 'traffic light' although class_stats says it does"


def test_uniform_crop_stays_inside_and_reaches_every_position():
    label = np.zeros((12, 20), np.uint8)  # 20 wide, 12 high
    boxes = [layouts.uniform_crop(label, (17, 10), np.random.default_rng(seed)) for seed in range(200)]
    assert {(b[2] - b[0], b[3] - b[1]) for b in boxes} == {(17, 10)}
    assert {b[0] for b in boxes} == {0, 1, 2, 3} and {b[1] for b in boxes} == {0, 1, 2}
    for seed in range(20):
        assert layouts.uniform_crop(label, (20, 12), np.random.default_rng(seed)) == [0, 0, 20, 12]
    for crop in ((21, 5), (5, 13)):
        with pytest.raises(DataError) as err:
            layouts.uniform_crop(label, crop, np.random.default_rng(0), where="y.png")
        assert str(err.value) == f"y.png: crop {crop[0]}x{crop[1]} is larger than the image 20x12"
    with pytest.raises(DataError) as err:
        layouts.uniform_crop(label, (21, 5), np.random.default_rng(0))
    assert str(err.value) == ": crop 21x5 is larger than the image 20x12"


def test_eligible_images_need_strictly_more_than_min_pixels():
    counts = lambda c, n: [n if i == c else 0 for i in range(19)]  # noqa: E731
    stats = {"image_class_pixels": {"z": counts(LIGHT, 11), "a": counts(LIGHT, 12), "m": counts(LIGHT, 13), "b": counts(SKY, 50)}}
    images = layouts.eligible_images(stats, 11)
    assert images == {c: (["a", "m"] if c == LIGHT else ["b"] if c == SKY else []) for c in range(19)}
    assert layouts.eligible_images(stats, 12)[LIGHT] == ["m"]


# ----------------------------------------------------------------------------- the plan


def test_every_field_of_a_plan_row(tiny, tmp_path):
    out = tmp_path / "plan.jsonl"
    rows = layouts.select_layouts(tiny, out, 9, "48x32", rcs_min_pixels=10, weather_schedule={"adverse": 3, "night": 3, "plain": 3}, adverse_words=("sunny",), seed=4)
    names = ["road", "sidewalk", "building", "sky", "car"]
    weather = {"adverse": "sunny", "night": "night", "plain": None}
    kinds = [r["prompt_kind"] for r in rows]
    assert sorted(kinds) == ["adverse"] * 3 + ["night"] * 3 + ["plain"] * 3
    assert rows == [
        {
            "id": i,
            "split": "train",
            "stem": "t0",
            "crop": [0, 0, 48, 32],
            "size": [32, 48],
            "rare_class": {"id": CAR, "name": "car"},
            "prompt": expected_prompt(names, weather[kind]),
            "prompt_kind": kind,
            "weather": weather[kind],
            "classes": names,
            "class_ids": [ROAD, SIDEWALK, BUILDING, SKY, CAR],
            "rare_share": 0.010417,  # 16 / 1536, to 6 places
        }
        for i, kind in enumerate(kinds)
    ]
    assert rows[0]["prompt"] in ("road sidewalk building sky car", "A city street scene with road sidewalk building sky car, in sunny weather.", "A city street scene with road sidewalk building sky car, in night weather.")
    assert out.read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    assert layouts.read_plan(out) == rows


def test_weather_words_and_the_shuffled_schedule(tiny, tmp_path):
    def plan(seed, **kw):
        return layouts.select_layouts(tiny, tmp_path / "w.jsonl", 30, (48, 32), rcs_min_pixels=10, seed=seed, **kw)

    orders = []
    for seed in range(4):
        rows = plan(seed, weather_schedule={"adverse": 2, "night": 1})
        kinds = [r["prompt_kind"] for r in rows]
        assert kinds.count("adverse") == 20 and kinds.count("night") == 10  # no plain prompt at all
        assert kinds != sorted(kinds)
        adverse = [r["weather"] for r in rows if r["prompt_kind"] == "adverse"]
        assert set(adverse) == {"snowy", "rainy", "foggy"}  # drawn from all three, never sunny
        assert all(r["weather"] == "night" for r in rows if r["prompt_kind"] == "night")
        for r in rows:
            assert r["prompt"] == expected_prompt(r["classes"], r["weather"])
        orders.append(kinds)
    assert len({tuple(k) for k in orders}) == 4  # the assignment is shuffled by the seed
    rows = plan(0, adverse_words=("sunny", "rainy"))
    kinds = [r["prompt_kind"] for r in rows]
    assert {k: kinds.count(k) for k in set(kinds)} == {"adverse": 13, "night": 4, "plain": 13}  # the default 3:1:3
    assert {r["weather"] for r in rows if r["prompt_kind"] == "adverse"} == {"sunny", "rainy"}
    assert all(r["weather"] is None and r["prompt"] == "road sidewalk building sky car" for r in rows if r["prompt_kind"] == "plain")
    # without adverse words only a schedule with no adverse prompt can be planned
    rows = plan(0, adverse_words=(), weather_schedule={"night": 1, "plain": 1})
    assert {r["prompt_kind"] for r in rows} == {"night", "plain"}
    with pytest.raises(ValueError) as err:
        plan(0, adverse_words=())
    assert str(err.value) == "the schedule asks for adverse prompts but no adverse weather words are given"


def check_rows(source, rows, crop):
    for r in rows:
        label = read_label_png(contract.label_path(source, "train", r["stem"]))
        x0, y0, x1, y1 = r["crop"]
        assert r["size"] == list(label.shape) and (x1 - x0, y1 - y0) == crop
        assert 0 <= x0 and 0 <= y0 and x1 <= label.shape[1] and y1 <= label.shape[0]
        window = label[y0:y1, x0:x1]
        ids = [c for c in range(19) if (window == c).any()]  # 19 and 255 are no classes
        assert r["class_ids"] == ids and r["classes"] == [CLASSES[c] for c in ids]
        assert r["prompt"] == expected_prompt(r["classes"], r["weather"])
        if r["rare_class"] is not None:
            cls = r["rare_class"]["id"]
            assert r["rare_class"] == {"id": cls, "name": CLASSES[cls]} and cls in ids
            assert r["rare_share"] == round(float((window == cls).sum()) / window.size, 6)


def test_defaults_plan_rare_crops_of_the_big_source(big, tmp_path):
    rows = layouts.select_layouts(big, tmp_path / "d.jsonl", 14, 512)
    explicit = layouts.select_layouts(
        big, tmp_path / "e.jsonl", 14, "512x512", crop_tries=10, crop_min_share=0.01, rcs_temperature=0.01, rcs_min_pixels=3000,
        weather_schedule={"adverse": 3000, "night": 1000, "plain": 3000}, seed=0, split="train", adverse_words=("snowy", "rainy", "foggy"), sampling="rcs",
    )
    assert rows == explicit
    assert (tmp_path / "d.jsonl").read_bytes() == (tmp_path / "e.jsonl").read_bytes()
    check_rows(big, rows, (512, 512))
    rare = [r["rare_class"]["name"] for r in rows]
    assert set(rare) <= {"traffic light", "traffic sign", "car"} and {"traffic light", "traffic sign"} <= set(rare)  # pole: 3000 is not > 3000
    for r in rows:
        if r["rare_class"]["id"] == LIGHT:
            assert r["rare_share"] < 0.01 and r["stem"] == "a"  # never accepted: the last try
        if r["rare_class"]["id"] == SIGN:
            assert r["rare_share"] == 0.011719 and r["stem"] == "a"  # 3072 / 512**2: accepted
    # each parameter changes the plan
    for change in ({"crop_tries": 11}, {"crop_min_share": 0.02}, {"rcs_temperature": 1.0}, {"rcs_min_pixels": 2999}, {"seed": 1}):
        assert layouts.select_layouts(big, tmp_path / "x.jsonl", 14, 512, **change) != rows, change
    with_pole = layouts.select_layouts(big, tmp_path / "x.jsonl", 14, 512, rcs_min_pixels=2999)
    assert "pole" in [r["rare_class"]["name"] for r in with_pole]


def test_each_pair_is_seeded_by_the_seed_and_its_id(big, tmp_path):
    short = layouts.select_layouts(big, tmp_path / "s.jsonl", 5, 256, seed=3)
    long = layouts.select_layouts(big, tmp_path / "l.jsonl", 9, 256, seed=3)
    fields = ("id", "stem", "crop", "rare_class", "rare_share", "class_ids")
    assert [{k: r[k] for k in fields} for r in short] == [{k: r[k] for k in fields} for r in long[:5]]
    again = layouts.select_layouts(big, tmp_path / "l2.jsonl", 9, 256, seed=3)
    assert (tmp_path / "l.jsonl").read_bytes() == (tmp_path / "l2.jsonl").read_bytes()
    other = layouts.select_layouts(big, tmp_path / "o.jsonl", 9, 256, seed=4)
    assert [r["crop"] for r in other] != [r["crop"] for r in again]


def test_uniform_sampling_rows(big, tmp_path):
    rows = layouts.select_layouts(big, tmp_path / "u.jsonl", 20, "300x200", sampling="uniform", seed=2)
    check_rows(big, rows, (300, 200))
    assert {r["stem"] for r in rows} == {"a", "b"}
    assert all(r["rare_class"] is None and r["rare_share"] is None for r in rows)
    assert len({tuple(r["crop"]) for r in rows}) > 10


def test_plan_errors(big, tiny, tmp_path):
    with pytest.raises(ValueError) as err:
        layouts.select_layouts(big, tmp_path / "x.jsonl", -1, 64)
    assert str(err.value) == "num_pairs must be >= 0, got -1"
    assert layouts.select_layouts(big, tmp_path / "empty.jsonl", 0, 64) == []
    assert (tmp_path / "empty.jsonl").read_text() == ""
    with pytest.raises(ValueError) as err:
        layouts.select_layouts(big, tmp_path / "x.jsonl", 2, 64, sampling="random")
    assert str(err.value) == "sampling must be one of ('rcs', 'uniform'), got 'random'"
    with pytest.raises(DataError, match="not a prepared dataset"):
        layouts.select_layouts(tmp_path, tmp_path / "x.jsonl", 2, 64)
    with pytest.raises(DataError) as err:
        layouts.select_layouts(big, tmp_path / "x.jsonl", 2, 64, split="val")
    assert str(err.value) == f"{big / 'class_stats' / 'val.json'}: no class statistics for split 'val' (is the source labelled?)"
    label = contract.label_path(tiny, "train", "t0")
    for sampling in ("rcs", "uniform"):
        with pytest.raises(DataError) as err:
            layouts.select_layouts(tiny, tmp_path / "x.jsonl", 2, "64x16", rcs_min_pixels=10, sampling=sampling)
        assert str(err.value) == f"{label}: crop 64x16 is larger than the image 48x32"
    assert not (tmp_path / "x.jsonl").exists()


def test_a_label_without_the_class_its_statistics_promise(tmp_path):
    source = make_source(tmp_path / "liar", {"t0": tiny_label()})
    stats = json.loads((source / "class_stats" / "train.json").read_text())
    stats["image_class_pixels"]["t0"][LIGHT] = 20
    stats["class_pixels"][LIGHT] = 20
    (source / "class_stats" / "train.json").write_text(json.dumps(stats))
    with pytest.raises(DataError) as err:
        layouts.select_layouts(source, tmp_path / "x.jsonl", 1, 8, rcs_min_pixels=18)
    assert str(err.value) == f"{contract.label_path(source, 'train', 't0')}: holds no pixel of class 'traffic light' although class_stats says it does"


def test_the_plan_is_logged(tiny, tmp_path, caplog):
    out = tmp_path / "log.jsonl"
    with caplog.at_level(logging.INFO, logger="dginstyle.diffusion.layouts"):
        layouts.select_layouts(tiny, out, 7, 16, rcs_min_pixels=10)
    messages = [r.getMessage() for r in caplog.records if r.name == "dginstyle.diffusion.layouts"]
    assert messages == [f"wrote 7 layouts to {out} ({{'adverse': 3, 'night': 1, 'plain': 3}})"]


# ----------------------------------------------------------------------------- reading the plan


def test_crop_of_cuts_the_crop_and_refuses_one_outside():
    full = np.arange(6 * 8).reshape(6, 8)  # 8 wide, 6 high
    row = {"id": 3, "stem": "s", "crop": [2, 1, 5, 4]}
    cut = layouts.crop_of(full[:, ::-1], row, "p")  # a view: the cut is made contiguous
    assert (cut == full[:, ::-1][1:4, 2:5]).all() and cut.flags["C_CONTIGUOUS"]
    assert (layouts.crop_of(full, {**row, "crop": [0, 0, 8, 6]}, "p") == full).all()
    for crop in ([-1, 0, 3, 3], [0, -1, 3, 3], [0, 0, 9, 6], [0, 0, 8, 7], [6, 0, 9, 2], [0, 5, 3, 7]):
        with pytest.raises(DataError) as err:
            layouts.crop_of(full, {**row, "crop": crop}, "plan.jsonl")
        assert str(err.value) == f"plan.jsonl: pair 3: crop {crop} lies outside s (8x6)"


def test_read_plan(tmp_path):
    with pytest.raises(DataError) as err:
        layouts.read_plan(tmp_path / "none.jsonl")
    assert str(err.value) == f"{tmp_path / 'none.jsonl'}: plan not found (run `dginstyle select-layouts` first)"
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0}\n\n  \n{"id": 1}\n')
    assert layouts.read_plan(str(path)) == [{"id": 0}, {"id": 1}]
    path.write_text('{"id": 0}\n\n{"id": 1\n')
    with pytest.raises(DataError) as err:
        layouts.read_plan(path)
    assert str(err.value).startswith(f"{path}:3: not a JSON row (")


# ----------------------------------------------------------------------------- CLI


def layouts_parser():
    parser = argparse.ArgumentParser(prog="dginstyle")
    sub = parser.add_subparsers(dest="command")
    layouts.add_cli(sub)
    return parser, sub.choices["select-layouts"]


def flat(text):
    return " ".join(text.split())


def test_cli_help_and_defaults():
    parser, p = layouts_parser()
    assert "select-layouts the generation plan: RCS-chosen source crops and their prompts (JSONL)" in flat(parser.format_help())
    text = flat(p.format_help())
    for phrase in (
        "`select-layouts`: the generation plan (docs/method.md 1.5 and 2), one JSONL row per pair.",
        "--source SOURCE prepared source dataset",
        "--out OUT plan JSONL (written atomically)",
        "--num-pairs NUM_PAIRS number of pairs",
        "--crop-size CROP_SIZE crop size in native pixels: N or WIDTHxHEIGHT",
        "--crop-min-share CROP_MIN_SHARE accept a crop when the rare class covers more than this share",
        "--weather WEATHER prompt schedule, e.g. adverse=3000,night=1000,plain=3000",
        "--adverse-words ADVERSE_WORDS weather words of adverse prompts (default excludes sunny)",
        "--sampling {rcs,uniform} rcs: crops centred on RCS-drawn rare classes (paper); uniform: random image and crop (ablation)",
    ):
        assert phrase in text
    assert "For every pair" not in text
    args = parser.parse_args(["select-layouts", "--source", "s", "--out", "o.jsonl", "--num-pairs", "3"])
    got = {k: v for k, v in vars(args).items() if k != "handler"}
    assert got == {
        "command": "select-layouts", "source": layouts.Path("s"), "out": layouts.Path("o.jsonl"), "num_pairs": 3, "crop_size": "512",
        "crop_tries": 10, "crop_min_share": 0.01, "rcs_temperature": 0.01, "rcs_min_pixels": 3000,
        "weather": {"adverse": 3000, "night": 1000, "plain": 3000}, "adverse_words": "snowy,rainy,foggy", "sampling": "rcs",
        "split": "train", "seed": 0,
    }
    assert type(got["source"]) is type(layouts.Path("s"))


def test_cli_defaults_give_the_default_plan(big, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    assert cli.main(["select-layouts", "--source", str(big), "--out", str(out), "--num-pairs", "14"]) == 0
    layouts.select_layouts(big, tmp_path / "api.jsonl", 14, 512)
    assert out.read_bytes() == (tmp_path / "api.jsonl").read_bytes()


def test_cli_flags_reach_the_plan(big, tmp_path):
    out = tmp_path / "cli.jsonl"
    flags = ["--crop-size", "300x200", "--crop-tries", "3", "--crop-min-share", "0.02", "--rcs-temperature", "0.05", "--rcs-min-pixels", "2999",
             "--weather", "adverse=2,night=1,plain=1", "--adverse-words", " sunny, ,rainy", "--split", "train", "--seed", "5", "--sampling", "rcs"]
    assert cli.main(["select-layouts", "--source", str(big), "--out", str(out), "--num-pairs", "12", *flags]) == 0
    rows = layouts.select_layouts(
        big, tmp_path / "api.jsonl", 12, (300, 200), crop_tries=3, crop_min_share=0.02, rcs_temperature=0.05, rcs_min_pixels=2999,
        weather_schedule={"adverse": 2, "night": 1, "plain": 1}, adverse_words=("sunny", "rainy"), split="train", seed=5,
    )
    assert out.read_bytes() == (tmp_path / "api.jsonl").read_bytes()
    assert {r["weather"] for r in rows if r["prompt_kind"] == "adverse"} <= {"sunny", "rainy"}
    out = tmp_path / "uniform.jsonl"
    assert cli.main(["select-layouts", "--source", str(big), "--out", str(out), "--num-pairs", "6", "--crop-size", "64", "--sampling", "uniform", "--seed", "2"]) == 0
    assert layouts.read_plan(out) == layouts.select_layouts(big, tmp_path / "u.jsonl", 6, 64, sampling="uniform", seed=2)


def test_cli_refusals(big, tmp_path, capsys):
    base = {"--source": str(big), "--out": str(tmp_path / "p.jsonl"), "--num-pairs": "2"}
    for missing in base:
        argv = ["select-layouts"] + [x for k, v in base.items() if k != missing for x in (k, v)]
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert f"the following arguments are required: {missing}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["select-layouts", *[x for kv in base.items() for x in kv], "--sampling", "random"])
    assert exit_.value.code == 2
    # the plan may not be written into the source it reads
    assert cli.main(["select-layouts", "--source", str(big), "--out", str(big / "plan.jsonl"), "--num-pairs", "2"]) == 1
    assert "refusing to write here: it lies inside the input" in capsys.readouterr().err
    assert not (big / "plan.jsonl").exists()


def test_cli_plans_another_split(tmp_path):
    source = make_source(tmp_path / "val_only", {"v0": tiny_label()}, split="val")
    out = tmp_path / "val.jsonl"
    assert cli.main(["select-layouts", "--source", str(source), "--out", str(out), "--num-pairs", "3", "--crop-size", "48x32", "--rcs-min-pixels", "10", "--split", "val"]) == 0
    rows = layouts.read_plan(out)
    assert [(r["split"], r["stem"], r["crop"]) for r in rows] == [("val", "v0", [0, 0, 48, 32])] * 3
