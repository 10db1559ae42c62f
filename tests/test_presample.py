"""The release's presampled source subset (issue 34): `presample-source` draws N distinct source
images by rare class sampling, seeded, each tagged with its drawn class; training restricts the
source to it (with the re-crop by drawn class where asked) and records the realised generated
share; the config says per experiment which source sampling it uses and its RCS min crop ratio
(above 1 for the HRDA rows); paper.yaml's 512 rows train on the subset, its HRDA rows do not."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from dginstyle import cli
from dginstyle.config import ConfigError, presample_settings, validate_config
from dginstyle.io import STAGE_MARKER, DataError, stage_of
from dginstyle.labels import NUM_CLASSES

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tests" / "configs" / "smoke.yaml"


def stats_of(per_image: dict[str, list[int]]) -> dict:
    """class_stats/<split>.json as prepare writes it, from per-image counts of a few classes."""
    full = {stem: list(counts) + [0] * (NUM_CLASSES - len(counts)) for stem, counts in per_image.items()}
    totals = np.sum(list(full.values()), axis=0)
    return {"image_class_pixels": full, "class_pixels": [int(t) for t in totals]}


def softmax_of(stats: dict, temperature: float) -> np.ndarray:
    totals = np.asarray(stats["class_pixels"], dtype=np.float64)
    present = totals > 0
    logits = np.where(present, (1 - totals / totals.sum()) / temperature, -np.inf)
    p = np.exp(logits - logits[present].max())
    return p / p.sum()


# ------------------------------------------------------------------------------- the sampler


def varied_stats(count: int = 300) -> dict:
    """Images holding road and building, some also a rarer class (5 .. 9) above 100 px."""
    rng = np.random.default_rng(7)
    per_image = {}
    for i in range(count):
        counts = [int(rng.integers(2000, 4000)), int(rng.integers(1000, 3000)), 0, 0, 0, 0, 0, 0, 0, 0]
        for c in rng.choice(np.arange(5, 10), size=int(rng.integers(0, 3)), replace=False):
            counts[c] = int(rng.integers(50, 400))
        per_image[f"img{i:04d}"] = counts
    return stats_of(per_image)


def test_the_subset_holds_distinct_images_each_tagged_with_a_class_it_holds_and_is_seeded():
    from dginstyle.segmentation.presample import draw_subset

    stats = varied_stats()
    first = draw_subset(stats, 120, 0.01, 100, seed=0)["samples"]
    assert len(first) == 120 and len({stem for stem, _ in first}) == 120  # distinct
    for stem, cls in first:  # each image holds more than min_pixels of the class it was drawn for
        assert stats["image_class_pixels"][stem][cls] > 100
    assert draw_subset(stats, 120, 0.01, 100, seed=0)["samples"] == first  # the same seed, the same subset
    other = draw_subset(stats, 120, 0.01, 100, seed=1)["samples"]
    assert other != first and len({s for s, _ in other}) == 120
    # at T = 0.01 road and building (f_c ~ 0.5) get e^-50 of the mass: the tags are the rare classes
    assert {cls for _, cls in first} <= set(range(5, 10))


def test_class_probabilities_follow_the_temperature_on_a_synthetic_histogram():
    """Five classes of known pixel shares, 2000 candidate images each: the recorded p(c) is
    softmax((1 - f_c) / T), and the drawn classes of 400 images follow it (few candidates taken,
    so the draw is nearly with replacement); a high temperature flattens it."""
    from dginstyle.segmentation.presample import draw_subset

    shares = [0.40, 0.30, 0.20, 0.07, 0.03]
    per_image = {}
    for c, share in enumerate(shares):
        for i in range(2000):
            counts = [0] * len(shares)
            counts[c] = int(share * 100000)  # all images of class c alike: totals follow the shares
            per_image[f"c{c}_{i:04d}"] = counts
    stats = stats_of(per_image)
    for temperature in (0.1, 1.0):
        expected = softmax_of(stats, temperature)
        drawn = draw_subset(stats, 400, temperature, 100, seed=3)
        np.testing.assert_allclose(drawn["probabilities"], expected, rtol=1e-12)
        tags = Counter(cls for _, cls in drawn["samples"])
        for c in range(len(shares)):
            sd = np.sqrt(400 * expected[c] * (1 - expected[c]))
            assert abs(tags[c] - 400 * expected[c]) <= 4 * sd + 1, (temperature, c, tags, 400 * expected)
    # T = 0.1 puts 0.76 of the mass on the rarest two classes, T = 1 about 0.44
    assert softmax_of(stats, 0.1)[3:].sum() > 0.7 and softmax_of(stats, 1.0)[3:].sum() < 0.5


def rejection_loop(holds: dict[str, set[int]], p: np.ndarray, n: int, rng) -> tuple:
    """The release's loop, literally (SegModel tools/rcs_sample_gta.py): draw c ~ p, then a
    candidate of c uniformly; reject an image already chosen and draw again."""
    candidates = {c: sorted(s for s, classes in holds.items() if c in classes) for c in range(NUM_CLASSES)}
    chosen = []
    while len(chosen) < n:
        c = int(rng.choice(NUM_CLASSES, p=p))
        stem = candidates[c][int(rng.integers(len(candidates[c])))]
        if stem not in [s for s, _ in chosen]:
            chosen.append((stem, c))
    return tuple(chosen)


def test_the_draw_has_the_distribution_of_the_releases_rejection_loop():
    """Three images: a holds classes 0 and 1, b class 1, c class 0; two are drawn. The ordered,
    tagged outcome is distributed as the release's rejection loop distributes it."""
    from dginstyle.segmentation.presample import draw_subset

    stats = stats_of({"a": [500, 500], "b": [0, 2000], "c": [3000, 0]})
    holds = {"a": {0, 1}, "b": {1}, "c": {0}}
    p = softmax_of(stats, 1.0)
    runs = 3000
    ours = Counter(tuple(draw_subset(stats, 2, 1.0, 100, seed=s)["samples"]) for s in range(runs))
    rng = np.random.default_rng(0)
    loop = Counter(rejection_loop(holds, p, 2, rng) for _ in range(runs))
    for outcome in set(ours) | set(loop):
        a, b = ours[outcome] / runs, loop[outcome] / runs
        sd = np.sqrt(max(a, b, 1 / runs) * (1 - max(a, b)) * 2 / runs)
        assert abs(a - b) <= 4.5 * sd + 0.005, (outcome, a, b)


def test_too_few_drawable_images_stop_in_one_line():
    from dginstyle.segmentation.presample import draw_subset

    # 30 images hold road below the threshold only; 10 hold more than 100 px of one rare class
    stats = stats_of({f"img{i:02d}": [90] + ([0] * (5 + i % 3) + [300] if i < 10 else []) for i in range(40)})
    drawable = 10
    assert len(draw_subset(stats, drawable, 0.01, 100, seed=0)["samples"]) == drawable  # all of them: fine
    with pytest.raises(DataError, match=rf"only {drawable} images hold more than 100 pixels of a class that can be drawn; a subset of {drawable + 1} distinct images"):
        draw_subset(stats, drawable + 1, 0.01, 100, seed=0)
    with pytest.raises(DataError, match="no image holds more than 5000 pixels"):
        draw_subset(stats, 1, 0.01, 5000, seed=0)


# ---------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared miniature source of 24 images (threshold 3 px)."""
    from dginstyle.data.prepare import prepare

    out = tmp_path_factory.mktemp("presample") / "source"
    prepare("minicity", out, domain="game", splits="train=24", seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    return out


def test_presample_source_writes_a_marked_folder_with_the_subset(prepared, tmp_path, capsys):
    argv = ["presample-source", "--source", str(prepared), "--images", "10", "--temperature", "0.01", "--min-pixels", "3", "--seed", "4"]
    assert cli.main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(argv + ["--out", str(tmp_path / "b")]) == 0
    assert stage_of(tmp_path / "a") == "presample-source" and {p.name for p in (tmp_path / "a").iterdir()} == {STAGE_MARKER, "subset.json"}
    subset = json.loads((tmp_path / "a" / "subset.json").read_text())
    again = json.loads((tmp_path / "b" / "subset.json").read_text())
    assert subset == again  # deterministic for a seed
    assert subset["settings"] == {"images": 10, "temperature": 0.01, "min_pixels": 3, "seed": 4}
    assert subset["source_images"] == 24 and len(subset["samples"]) == 10
    stats = json.loads((prepared / "class_stats" / "train.json").read_text())
    for sample in subset["samples"]:
        assert stats["image_class_pixels"][sample["stem"]][sample["class"]] > 3
    histogram = Counter(s["class_name"] for s in subset["samples"])
    assert subset["class_histogram"] == dict(histogram)
    assert abs(sum(subset["class_probabilities"].values()) - 1) < 1e-4
    # a rerun over its own output is allowed; too many images is one line, exit 1
    assert cli.main(argv + ["--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert cli.main(["presample-source", "--source", str(prepared), "--out", str(tmp_path / "c"), "--images", "25", "--min-pixels", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a subset of 25 distinct images cannot be drawn" in err[0]
    assert not (tmp_path / "c").exists()


def test_a_subset_of_another_source_is_refused(prepared, tmp_path):
    from dginstyle.data.prepare import prepare
    from dginstyle.segmentation.presample import presample_source, read_subset

    presample_source(prepared, tmp_path / "subset", images=5, min_pixels=3)
    assert len(read_subset(tmp_path / "subset", prepared)["pairs"]) == 5
    other = tmp_path / "other"
    prepare("minicity", other, domain="game", splits="train=24", seed=1, size="64x32", rcs_min_pixels=3, workers=1)
    with pytest.raises(DataError, match="drawn from another source dataset"):
        read_subset(tmp_path / "subset", other)
    with pytest.raises(DataError, match="not a presampled source subset"):
        read_subset(other, prepared)


# ------------------------------------------------------------------- training on the subset


def write_subset(folder: Path, source: Path, pairs: list[tuple[str, int]]) -> Path:
    """A subset folder as presample-source writes it, with chosen stems and tags."""
    from dginstyle.io import atomic_write_json, mark, sha256_file

    folder.mkdir(parents=True)
    mark(folder, "presample-source")
    samples = [{"stem": s, "class": c} for s, c in pairs]
    atomic_write_json(folder / "subset.json", {"split": "train", "source_manifest_sha256": sha256_file(source / "manifest.json"), "samples": samples, "settings": {"images": len(pairs)}})
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pytest.importorskip("mmseg")
    from test_seg_extras import RARE, RARE2, RARE2_IMAGES, make_rcs_world, make_shard

    from dginstyle.segmentation import register_modules

    register_modules()
    import dginstyle.segmentation.rcs  # noqa: F401

    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    root = tmp_path_factory.mktemp("subset_world")
    source, rare = make_rcs_world(root / "source")
    shard = make_shard(root / "generated" / "shard0", 6)
    rare2 = f"img{RARE2_IMAGES[0]:03d}"
    # the train image tagged train, a motorcycle image tagged motorcycle, and two plain images tagged road
    subset = write_subset(root / "subset", source, [(rare, RARE), (rare2, RARE2), ("img000", 0), ("img001", 0)])
    return root, source, shard, subset, rare, rare2


def loader_dataset(world, recrop: dict | None, generated: bool = False):
    from mmengine.runner import Runner

    from dginstyle.segmentation.configs import training_config
    from dginstyle.segmentation.rcs import with_tagged_recrop
    from test_seg_extras import CROP

    root, source, shard, subset, _, _ = world
    cfg = training_config(
        source=source, generated=[shard] if generated else [], work_dir=root / "unused", model="daformer_tiny", iterations=1,
        batch_size=2, crop_size=CROP, learning_rate=1e-4, weight_decay=0.01, warmup_iterations=0, poly_power=1.0, seed=0,
        source_subset=subset,
    )  # fmt: skip
    loader = cfg["train_dataloader"]
    if recrop is not None:
        loader = with_tagged_recrop(loader, **recrop)
    return Runner.build_dataloader(loader, seed=0).dataset


def test_the_source_part_is_the_subset_with_its_tags(world):
    from test_seg_extras import RARE, RARE2

    _, _, _, _, rare, rare2 = world
    dataset = loader_dataset(world, None, generated=True)
    source = dataset.datasets[0]
    assert len(source) == 4 and len(dataset) == 4 + 6
    infos = [source.get_data_info(i) for i in range(4)]
    assert [Path(i["img_path"]).stem for i in infos] == [rare, rare2, "img000", "img001"]
    assert [i["tagged_class"] for i in infos] == [RARE, RARE2, 0, 0]


def test_the_recrop_cuts_again_until_the_drawn_class_shows(world):
    """The release's exp 60 (dg_dataset.py get_gta_rcs_crop): a source sample is loaded again, at
    most `tries` times, while its crop holds no more than `min_pixels` of its drawn class; the
    8-pixel-wide train patch lies in about 1 in 4 random 32-wide crops of the 64-wide image."""
    from test_seg_extras import RARE

    _, _, _, _, rare, _ = world
    hits = {}
    for name, recrop in (("recrop", dict(min_pixels=1, tries=10)), ("none", None), ("no tries", dict(min_pixels=1, tries=0))):
        dataset = loader_dataset(world, recrop)
        np.random.seed(0)  # the pipeline's crops draw from numpy's global generator
        count = 0
        for _ in range(30):
            sample = dataset[0]
            assert Path(sample["data_samples"].img_path).stem == rare
            count += int((sample["data_samples"].gt_sem_seg.data == RARE).sum()) > 1
        hits[name] = count
    assert hits["recrop"] >= 24 and hits["none"] <= 16 and hits["no tries"] <= 16, hits
    # the tagged class, not any class: the road images pass at once (road fills every crop)
    dataset = loader_dataset(world, dict(min_pixels=1, tries=10))
    calls = []
    original = dataset.dataset.__class__.__getitem__

    def counting(self, idx):
        calls.append(idx)
        return original(self, idx)

    dataset.dataset.__class__.__getitem__ = counting
    try:
        dataset[2]
    finally:
        dataset.dataset.__class__.__getitem__ = original
    assert calls == [2]


def test_the_recrop_needs_a_subset(world):
    from mmengine.runner import Runner

    from dginstyle.segmentation.configs import training_config
    from dginstyle.segmentation.rcs import with_tagged_recrop
    from test_seg_extras import CROP

    root, source, _, _, _, _ = world
    cfg = training_config(
        source=source, generated=[], work_dir=root / "unused", model="daformer_tiny", iterations=1, batch_size=2,
        crop_size=CROP, learning_rate=1e-4, weight_decay=0.01, warmup_iterations=0, poly_power=1.0, seed=0,
    )  # fmt: skip
    with pytest.raises(DataError, match="needs a presampled subset"):
        Runner.build_dataloader(with_tagged_recrop(cfg["train_dataloader"]), seed=0)


def test_metadata_records_the_realised_generated_share(world, tmp_path):
    """generated samples per epoch / all samples per epoch: 6 / (4 + 6) on the subset of 4
    (the whole source: 6 / (20 + 6)); with generated_repeat 2, 12 / (4 + 12)."""
    from test_seg_extras import TRAIN

    from dginstyle.segmentation.train import train_segmentation

    _, source, shard, subset, _, _ = world
    common = dict(iterations=1, checkpoint_interval=1, **TRAIN)
    meta = train_segmentation(source, [shard], tmp_path / "sub", tmp_path / "w1", source_subset=subset, tagged_recrop=True, recrop_min_pixels=1, **common)
    assert meta["samples_per_epoch"] == {"source": 4, "generated": 6} and meta["generated_share"] == 0.6
    assert meta["source_samples"] == 4 and meta["source_images_prepared"] == 20
    assert meta["source_sampling"]["mode"] == "presampled_recrop" and meta["source_sampling"]["tagged_recrop"] == {"min_pixels": 1, "tries": 10}
    assert json.loads((tmp_path / "sub" / "metadata.json").read_text())["generated_share"] == 0.6
    meta = train_segmentation(source, [shard], tmp_path / "rep", tmp_path / "w2", source_subset=subset, generated_repeat=2, **common)
    assert meta["samples_per_epoch"] == {"source": 4, "generated": 12} and meta["generated_share"] == 0.75
    assert meta["source_sampling"]["mode"] == "presampled" and meta["source_sampling"]["tagged_recrop"] is None
    meta = train_segmentation(source, [shard], tmp_path / "full", tmp_path / "w3", **common)
    assert meta["samples_per_epoch"] == {"source": 20, "generated": 6} and meta["generated_share"] == round(6 / 26, 4)
    assert meta["source_sampling"]["mode"] == "full"


def test_training_refuses_a_subset_with_online_rcs_and_a_recrop_without_subset(world, tmp_path):
    from test_seg_extras import TRAIN

    from dginstyle.segmentation.train import train_segmentation

    _, source, _, subset, _, _ = world
    with pytest.raises(DataError, match="--source-subset and --rare-class-sampling"):
        train_segmentation(source, [], tmp_path / "r", tmp_path / "w", iterations=1, source_subset=subset, rare_class_sampling=True, **TRAIN)
    with pytest.raises(DataError, match="--tagged-recrop .* give --source-subset"):
        train_segmentation(source, [], tmp_path / "r", tmp_path / "w", iterations=1, tagged_recrop=True, **TRAIN)
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


def test_an_rcs_min_crop_ratio_above_one_is_accepted_by_online_rcs(world):
    """HRDA's 2.0: a crop is re-cut while it holds no more than 2 x min_pixels of the class."""
    from mmengine.runner import Runner

    from dginstyle.segmentation.rcs import RareClassDataset
    from test_seg_extras import dataloader_config

    root, source, _, _, _, _ = world
    dataset = Runner.build_dataloader(dataloader_config(root, source, [], dict(temperature=0.01, min_crop_ratio=2.0)), seed=0).dataset
    assert isinstance(dataset, RareClassDataset) and dataset.min_crop_ratio == 2.0
    with pytest.raises(DataError, match="min crop ratio must be >= 0"):
        RareClassDataset(dataset.dataset, min_crop_ratio=-1)


# ------------------------------------------------------------------------------- the config


def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def test_source_sampling_and_the_min_crop_ratio_are_experiment_settings():
    config = smoke()
    config["segmentation"]["rcs_min_crop_ratio"] = 2.0  # above 1: once refused by the schema
    config["experiments"]["dginstyle"].update(source_sampling="presampled_recrop")
    config["experiments"]["ablation"].update(source_sampling="presampled", rcs_min_crop_ratio=0.25)
    config = validate_config(config)
    own = {name: (e["source_sampling"], e["rcs_min_crop_ratio"]) for name, e in config["experiments"].items()}
    assert own["dginstyle"] == ("presampled_recrop", 2.0) and own["ablation"] == ("presampled", 0.25)
    assert own["source_only"] == ("full", 2.0)  # inherited
    assert presample_settings(config) == {"images": 6000, "temperature": 0.01, "min_pixels": 3, "recrop_min_pixels": 1, "recrop_tries": 10, "seed": 0}
    config = smoke()
    config["presample"] = {"min_pixels": 3000, "recrop_min_pixels": 1500}
    assert presample_settings(validate_config(config))["recrop_min_pixels"] == 1500
    # the defaults keep every run of the shipped miniature configs on the whole source
    for path in (REPO / "config.yaml", SMOKE):
        assert {e["source_sampling"] for e in validate_config(yaml.safe_load(path.read_text()))["experiments"].values()} == {"full"}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["experiments"]["dginstyle"].update(source_sampling="presampled", rare_class_sampling=True), r"'experiments.dginstyle.source_sampling': experiment 'dginstyle' trains on the presampled subset \(presampled\) and with online rare_class_sampling"),
        (lambda c: c["segmentation"].update(source_sampling="presampled_recrop", rare_class_sampling=True), r"'segmentation.source_sampling'"),
        (lambda c: c["experiments"]["dginstyle"].update(source_sampling="subset"), r"experiments.dginstyle.source_sampling': 'subset' is not one of"),
        (lambda c: c["experiments"]["dginstyle"].update(rcs_min_crop_ratio=-0.5), r"experiments.dginstyle.rcs_min_crop_ratio': -0.5 is less than the minimum of 0"),
        (lambda c: c.update(presample={"images": 0}), r"presample.images"),
        (lambda c: c.update(presample={"imags": 10}), r"presample.imags': unknown key"),
    ],
    ids=["subset-and-rcs", "global-subset-and-rcs", "bad-mode", "negative-ratio", "zero-images", "typo"],
)
def test_bad_source_sampling_settings_are_refused_naming_the_key(change, message):
    config = smoke()
    change(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


# ---------------------------------------------------------------------------- the workflow


def test_paper_512_rows_train_on_the_subset_and_the_hrda_rows_and_the_miniature_runs_on_all_of_the_source(tmp_path):
    from test_experiment_resolution import dry_run_commands
    from test_workflow import paper_config_on_fake_trees, planned_jobs, snakemake

    configfile = paper_config_on_fake_trees(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    experiments = ["source_only", "dginstyle", "no_swap", "segformer_dginstyle", "deeplabv2_source_only", "hrda_dginstyle", "hrda_source_only", "hrda_deeplabv2_dginstyle"]
    commands = dry_run_commands(config, tmp_path, "paper_subset", experiments)
    subset = "--source-subset results/presampled/gta5"
    recrop = "--tagged-recrop --recrop-min-pixels 1500 --recrop-tries 10"
    for name in ("source_only", "dginstyle", "no_swap"):  # DAFormer 512: subset + re-crop, no online RCS
        train = commands[("train", name)]
        assert f"{subset} {recrop}" in train and "--rare-class-sampling" not in train, train
    for name in ("segformer_dginstyle", "deeplabv2_source_only"):  # subset as loaded
        train = commands[("train", name)]
        assert subset in train and "--tagged-recrop" not in train and "--rare-class-sampling" not in train, train
    for name in ("hrda_dginstyle", "hrda_source_only", "hrda_deeplabv2_dginstyle"):  # all of GTA5, online RCS, min crop 2.0
        train = commands[("train", name)]
        assert "--source-subset" not in train and "--rare-class-sampling --rcs-temperature 0.01 --rcs-min-crop-ratio 2.0" in train, train
    # one subset for all of them, drawn as the release draws it, seeded; planning wrote nothing
    result = snakemake("results/segmentation/dginstyle/seed0", "results/segmentation/segformer_dginstyle/seed0", "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_jobs(result)["presample_source"] == 1
    assert "dginstyle presample-source --source results/datasets/gta5 --out results/presampled/gta5 --images 6000 --temperature 0.01 --min-pixels 3000 --seed 0" in result.stdout
    assert not (tmp_path / "results").exists()
    hrda = snakemake("results/segmentation/hrda_dginstyle/seed0", "-n", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert hrda.returncode == 0 and "presample_source" not in planned_jobs(hrda)
    # the default config's and the smoke config's runs stay on the whole source: no subset is
    # planned and no train command names one
    for path in (REPO / "config.yaml", SMOKE):
        result = snakemake("-n", "-p", "--cores", "1", "--configfile", str(path), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "presample_source" not in planned_jobs(result)
        trains = [line for line in result.stdout.splitlines() if "train-segmentation" in line]
        assert trains and not any("--source-subset" in line or "--tagged-recrop" in line for line in trains)


def test_the_rule_draws_the_subset_that_a_run_on_it_reads(tmp_path):
    """A real run of prepare_dataset and presample_source (smoke world, 24 source images)."""
    from test_workflow import snakemake, write_config

    config = smoke()
    config["experiments"]["sub"] = {"data": "source", "source_sampling": "presampled_recrop"}
    config["presample"] = {"images": 8, "seed": 2}
    configfile = write_config(tmp_path / "config.yaml", config)
    result = snakemake("results/presampled/mini_gta5", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    subset = json.loads((tmp_path / "results" / "presampled" / "mini_gta5" / "subset.json").read_text())
    assert subset["settings"] == {"images": 8, "temperature": 0.01, "min_pixels": 3, "seed": 2} and len(subset["samples"]) == 8
    assert (tmp_path / "results" / "logs" / "presample_source" / "mini_gta5.log").exists()
    dry = snakemake("results/segmentation/sub/seed0", "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "--source-subset results/presampled/mini_gta5 --tagged-recrop --recrop-min-pixels 1 --recrop-tries 10" in dry.stdout
