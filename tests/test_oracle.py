"""The oracle generator (dginstyle/diffusion/oracle.py): an upper bound of the Style Swap that
re-renders the plan's source scenes in the prior's styles, or returns the source crops; its
config check, and the upper-bound overlay config's plan."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from dginstyle.config import ConfigError, validate_config
from dginstyle.data.minicity import prepare_minicity, render_in_prior_style, render_sample
from dginstyle.diffusion.layouts import select_layouts
from dginstyle.diffusion.oracle import render_oracle_shard
from dginstyle.io import DataError
from dginstyle.segmentation.datasets import generated_samples
from test_workflow import PAPER, REPO, planned_jobs, snakemake


@pytest.fixture(scope="module")
def source_and_plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    source = root / "mini_gta5"
    prepare_minicity(source, "game", {"train": 8}, 0, 64, 32, 1, "mini_gta5", 4)
    plan = root / "plan.jsonl"
    select_layouts(source, plan, num_pairs=12, crop_size=32, rcs_min_pixels=4, weather_schedule={"adverse": 3, "night": 1, "plain": 3})
    return source, plan


def crops(shard, source, plan):
    rows = {json.loads(line)["id"]: json.loads(line) for line in (plan).read_text().splitlines()}
    out = []
    for pair_id, image, label in generated_samples(shard):
        row = rows[int(pair_id)]
        x0, y0, x1, y1 = row["crop"]
        src_image = np.asarray(Image.open(source / "images" / "train" / f"{row['stem']}.png").convert("RGB"))[y0:y1, x0:x1]
        src_label = np.asarray(Image.open(source / "labels" / "train" / f"{row['stem']}.png"))[y0:y1, x0:x1]
        out.append((row, np.asarray(Image.open(image).convert("RGB")), np.asarray(Image.open(label)), src_image, src_label))
    return out


def test_prior_look_keeps_each_scene_and_draws_it_in_the_prompts_weather(source_and_plan, tmp_path):
    source, plan = source_and_plan
    manifests = [render_oracle_shard(plan, source, k, 2, tmp_path / f"shard{k}", look="prior") for k in range(2)]
    assert sum(m["pairs"] for m in manifests) == 12
    pairs = [p for k in range(2) for p in crops(tmp_path / f"shard{k}", source, plan)]
    written = {json.loads(line)["id"]: json.loads(line) for k in range(2) for line in (tmp_path / f"shard{k}" / "pairs.jsonl").read_text().splitlines()}
    for row, image, label, src_image, src_label in pairs:
        assert image.shape == src_image.shape and label.shape == src_label.shape
        agreement = (label == src_label).mean()
        assert agreement > 0.85, (row["id"], agreement)  # the same street; weather moves a few pixels
        assert written[row["id"]]["label_agreement"] == pytest.approx(agreement, abs=1e-4)
        assert np.abs(image.astype(int) - src_image.astype(int)).mean() > 10  # not the game look
        if row["weather"] is not None:
            assert written[row["id"]]["condition"] == row["weather"]
    assert len({written[i]["style"] for i in written}) > 1  # several of the prior's art styles
    # the image is the re-rendered label's own: same scene, same seed -> same label as a direct render
    first = pairs[0][0]
    index = int(first["stem"].rsplit("_", 1)[1])
    _, full_label, _ = render_in_prior_style("game", 0, "train", index, 64, 32, style_seed=first["id"], weather=first["weather"])
    x0, y0, x1, y1 = first["crop"]
    assert (full_label[y0:y1, x0:x1] == pairs[0][2]).all()
    # deterministic: a second run writes the same bytes
    again = render_oracle_shard(plan, source, 0, 2, tmp_path / "again", look="prior")
    assert again["image_sha256"] == manifests[0]["image_sha256"] and again["label_sha256"] == manifests[0]["label_sha256"]


def test_prior_look_draws_thin_objects_as_the_source_did(tmp_path):
    """A source drawn with a thin-object minimum is re-rendered with the same minimum, so the
    oracle's labels keep its wide poles, lights and signs."""
    source = tmp_path / "thin_gta5"
    prepare_minicity(source, "game", {"train": 8}, 0, 64, 32, 1, "thin_gta5", 4, thin_objects_px=3)
    plan = tmp_path / "plan.jsonl"
    select_layouts(source, plan, num_pairs=8, crop_size=32, rcs_min_pixels=4, weather_schedule={"adverse": 3, "night": 1, "plain": 3})
    render_oracle_shard(plan, source, 0, 1, tmp_path / "shard0", look="prior")
    pairs = crops(tmp_path / "shard0", source, plan)
    assert min((label == src_label).mean() for _, _, label, _, src_label in pairs) > 0.85
    row, _, label, _, _ = pairs[0]
    index = int(row["stem"].rsplit("_", 1)[1])
    x0, y0, x1, y1 = row["crop"]
    wide = render_in_prior_style("game", 0, "train", index, 64, 32, style_seed=row["id"], weather=row["weather"], thin_objects_px=3)[1]
    assert (wide[y0:y1, x0:x1] == label).all()


def test_source_look_returns_the_source_crops(source_and_plan, tmp_path):
    source, plan = source_and_plan
    render_oracle_shard(plan, source, 0, 1, tmp_path / "shard0", look="source")
    pairs = crops(tmp_path / "shard0", source, plan)
    assert len(pairs) == 12
    for row, image, label, src_image, src_label in pairs:
        assert (image == src_image).all() and (label == src_label).all()


def test_prior_look_needs_a_source_of_this_world(source_and_plan, tmp_path):
    source, plan = source_and_plan
    other = tmp_path / "other"
    other.mkdir()
    for name in ("images", "labels", "class_stats"):
        (other / name).symlink_to(source / name)
    manifest = json.loads((source / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "format": "cityscapes"}))
    with pytest.raises(DataError, match="minicity"):
        render_oracle_shard(plan, other, 0, 1, tmp_path / "out", look="prior")
    (other / "manifest.json").write_text(json.dumps({**manifest, "world_version": 0}))
    with pytest.raises(DataError, match="world version"):
        render_oracle_shard(plan, other, 0, 1, tmp_path / "out", look="prior")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="unlabelled"):
        render_in_prior_style("prior", 0, "train", 0, 64, 32, style_seed=0)


def test_rendering_is_unchanged_or_the_world_version_moves():
    """The oracle re-renders prepared source scenes, and the shipped prior records the world
    version of its corpus: a change to the renderer must bump WORLD_VERSION (and this hash)."""
    digest = hashlib.sha256()
    for domain, split in (("game", "train"), ("prior", "train"), ("darkzurich", "val")):
        rgb, label, _, _ = render_sample(domain, 0, split, 3, 64, 32)
        digest.update(rgb.tobytes() + label.tobytes())
    assert digest.hexdigest() == RENDER_SHA256


def test_oracle_needs_a_miniature_world_source():
    config = yaml.safe_load(PAPER.read_text())
    config["generated_sets"]["upper_bound"] = {"generator": "oracle"}
    with pytest.raises(ConfigError, match="generated_sets.upper_bound.generator"):
        validate_config(config, check_roots=False)
    config["generated_sets"]["upper_bound"] = {"generator": "oracle_no_swap"}  # the source crops: any source
    validate_config(config, check_roots=False)


def test_upper_bound_table_plans_the_oracle_runs_and_no_diffusion_for_them(tmp_path):
    overlay = REPO / "workflow" / "configs" / "diagnostics" / "upper_bound.yaml"
    result = snakemake("-n", "-p", "--cores", "2", "--configfile", str(REPO / "config.yaml"), str(overlay), "--", "results/tables/upper_bound.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    rows = yaml.safe_load(overlay.read_text())["tables"]["upper_bound"]["rows"]
    assert len(rows) == 5
    assert jobs["render_oracle"] == 4  # two oracle sets, two shards each
    assert jobs["generate"] == 4  # the table's two diffusion sets (dginstyle, no_swap), not plain_sampling
    assert jobs["style_swap"] == 2 and jobs["select_layouts"] == 4
    assert jobs["train_segmentation"] == 5 * 3 and jobs["evaluate"] == 5 * 3 * 5 and jobs["table"] == 1
    assert "--look prior --out results/generated/oracle/shard0" in result.stdout
    assert "--look source --out results/generated/oracle_no_swap/shard1" in result.stdout
    assert "generators/oracle" not in result.stdout


def commands(result, rule: str) -> list[str]:
    """The shell commands a dry run (-p) printed for one CLI stage, sorted, whole (log redirect included)."""
    lines = (line.removeprefix("Shell command: ") for line in result.stdout.splitlines())
    return sorted(line for line in lines if line.startswith(f"python -m dginstyle {rule} "))


def default_and_overlay_plans(tmp_path, overlay: str, table: str):
    """Dry runs (-p) of the default ablation table and of an overlay's `table`; both must plan
    the same jobs (an overlay changes how each run trains, not which runs exist)."""
    config = str(REPO / "config.yaml")
    default = snakemake("-n", "-p", "--cores", "2", "--configfile", config, "--", "results/tables/ablation.md", cwd=tmp_path)
    other = snakemake("-n", "-p", "--cores", "2", "--configfile", config, str(REPO / "workflow" / "configs" / "diagnostics" / overlay), "--", f"results/tables/{table}.md", cwd=tmp_path)
    assert default.returncode == 0 and other.returncode == 0, default.stderr + other.stderr
    assert planned_jobs(default) == planned_jobs(other)
    for rule in ("finetune-unet", "train-controlnet", "generate"):  # the default run's generator and generated sets
        assert commands(default, rule) and commands(default, rule) == commands(other, rule)
    return default, other


RENDER_SHA256 = "fe3d658c54e38ea7116273fa4bfae8467ec7c320ec499e02fe8528142078f699"


def test_long_segmentation_overlay_changes_only_the_schedule_length(tmp_path):
    default, longer = default_and_overlay_plans(tmp_path, "long_segmentation.yaml", "ablation")
    train_default, train_longer = commands(default, "train-segmentation"), commands(longer, "train-segmentation")
    assert len(train_default) == 12 and all("--iterations 2400 " in c and "--checkpoint-interval 800 " in c for c in train_longer)
    assert [c.replace("--iterations 2400 ", "--iterations 1600 ") for c in train_longer] == train_default


def test_segmenter_2x_overlay_upsamples_every_image_and_reuses_the_generated_sets(tmp_path):
    default, twice = default_and_overlay_plans(tmp_path, "segmenter_2x.yaml", "ablation_2x")  # the same runs, each at 2x
    train = commands(twice, "train-segmentation")
    assert len(train) == 12 and all("--source-resize 256x128 --generated-resize 128x128" in c and "--crop-size 64 " in c for c in train)
    evaluate = commands(twice, "evaluate")
    assert len(evaluate) == 60 and all(c.split(" > ")[0].endswith("--test-size 256x128") for c in evaluate)
    assert not any("--test-size" in c for c in commands(default, "evaluate"))


def test_segmenter_os2_overlay_changes_only_the_model_and_reuses_the_generated_sets(tmp_path):
    default, os2 = default_and_overlay_plans(tmp_path, "segmenter_os2.yaml", "ablation_os2")  # each run with the stride-2 model
    train_default, train_os2 = commands(default, "train-segmentation"), commands(os2, "train-segmentation")
    assert len(train_os2) == 12 and all("--model daformer_tiny_os2 " in c for c in train_os2)
    renamed = sorted(c.replace("--model daformer_tiny_os2 ", "--model daformer_tiny ").replace("_os2/", "/") for c in train_os2)
    assert renamed == train_default  # same data, crops, schedule, seeds and (renamed) folders and logs
    assert len(commands(os2, "evaluate")) == 60
    overlay = str(REPO / "workflow" / "configs" / "diagnostics" / "segmenter_os2.yaml")
    per_class = snakemake("-n", "--cores", "2", "--configfile", str(REPO / "config.yaml"), overlay, "--", "results/tables/per_class_os2.md", cwd=tmp_path)
    assert per_class.returncode == 0, per_class.stderr
    assert planned_jobs(per_class)["render_oracle"] == 2  # the perfect generator's row: rendered, not diffused
