"""Bad input, one test per row of docs/reliability.md's "What happens with bad input" table that earlier
tests did not inflict yet. Each fault must end the command with exit status 1 and one line
naming the file or config key, or stop the DAG before it is built, and leave a previous good
artifact exactly as it was.

Rows already inflicted elsewhere (the table names those tests): tests/test_prepare_real.py
(missing root, another dataset's layout, unknown split, image without label and the reverse,
corrupt or truncated PNG/JPEG, label IDs out of range, size mismatch, previous output kept),
tests/test_config.py and tests/test_workflow.py (typo'd key, wrong type, negative count,
unknown dataset, table naming an unknown experiment), tests/test_mrlf.py and
tests/test_style_swap.py (generator folders), tests/test_compat.py and
tests/test_segmentation.py (checkpoints that are foreign pickles or lie outside the run folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dginstyle.cli import main
from dginstyle.io import mark
from dginstyle.config import ConfigError, validate_config
from fake_trees import make_tree

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tests" / "configs" / "smoke.yaml"
CITYSCAPES_IDS = (0, 7, 8, 11, 21, 23, 24, 26)


# ------------------------------------------------------------------------------------ helpers


def fails_with_one_line(capsys, stage: str, *args) -> str:
    """Run `dginstyle <stage> args` in-process; it must return 1 (the exit status) and end with
    exactly one error line, no traceback (log lines and progress bars may come before it)."""
    capsys.readouterr()
    assert main([stage, *map(str, args)]) == 1
    err = capsys.readouterr().err
    causes = [line for line in err.splitlines() if line.startswith(f"dginstyle {stage}: error: ")]
    assert len(causes) == 1 and err.rstrip().endswith(causes[0]), err
    assert "Traceback" not in err, err
    return causes[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links as their target path), to prove nothing was touched."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(folder))] = os.readlink(path).encode()
        elif path.is_file():
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def previous_artifact(folder: Path, stage: str) -> dict[str, bytes]:
    """A stand-in for an earlier good output of `stage` at `folder` (marked as that stage's, so
    the stage may replace it); returns its snapshot."""
    folder.mkdir(parents=True)
    mark(folder, stage)
    (folder / "manifest.json").write_text('{"previous": "good run"}')
    (folder / "weights.safetensors").write_bytes(b"previous weights")
    return snapshot(folder)


class Evil:
    """Unpickling this runs a shell command: the marker file proves whether it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------ datasets


def test_a_split_without_any_pairs_is_refused_and_the_previous_output_kept(tmp_path, capsys):
    tree = make_tree("cityscapes", tmp_path / "raw", count=2, label_values=CITYSCAPES_IDS)
    out = tmp_path / "cityscapes"
    assert main(["prepare", "cityscapes", "--root", str(tree.root), "--out", str(out), "--workers", "1"]) == 0
    before = snapshot(out)
    for folder in ("leftImg8bit/val", "gtFine/val"):  # the folders stay: the layout still looks right
        for city in (tree.root / folder).iterdir():
            shutil.rmtree(city)
    err = fails_with_one_line(capsys, "prepare", "cityscapes", "--root", tree.root, "--out", out, "--workers", 1)
    assert f"{tree.root}: split 'val' holds no image/label pairs" in err
    assert snapshot(out) == before


def test_an_rgb_label_is_refused(tmp_path, capsys):
    tree = make_tree("gta5", tmp_path / "raw", count=2, label_values=CITYSCAPES_IDS)
    victim = tree.samples[0].label
    Image.new("RGB", (12, 8), (128, 64, 128)).save(victim)  # a colour-coded label, not IDs
    err = fails_with_one_line(capsys, "prepare", "gta5", "--root", tree.root, "--out", tmp_path / "out", "--workers", 1)
    assert f"{victim}: label image is PNG mode RGB, expected a single-channel 8-bit PNG" in err
    assert not (tmp_path / "out").exists()


def test_an_image_whose_content_is_not_its_extension_is_refused(tmp_path, capsys):
    tree = make_tree("bdd100k", tmp_path / "raw", count=2)
    victim = tree.samples[0].image
    Image.new("RGB", (12, 8)).save(victim, format="PNG")  # a PNG named .jpg
    err = fails_with_one_line(capsys, "prepare", "bdd100k", "--root", tree.root, "--out", tmp_path / "out", "--workers", 1)
    assert f"{victim}: not a JPEG file" in err


def test_a_folder_that_is_not_a_prepared_dataset_is_refused(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    out = tmp_path / "sheet.png"
    out.write_bytes(b"previous sheet")
    err = fails_with_one_line(capsys, "contact-sheet", "--dataset", tmp_path / "raw", "--out", out)
    assert f"{tmp_path / 'raw'}: not a prepared dataset (no manifest.json)" in err
    assert out.read_bytes() == b"previous sheet"


# ------------------------------------------------------------------------------------ config


def smoke_config() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _add_table(config: dict, name: str, experiment: str = "source_only") -> None:
    config["tables"][name] = {"kind": "mean_iou", "rows": [{"experiment": experiment}], "columns": [{"target": config["targets"][0]}]}


# (id, change to the smoke config, text the one line must hold)
CONFIG_FAULTS = [
    ("unknown-key", lambda c: c["generation"].update(guidance_scal=7), "config key 'generation.guidance_scal': unknown key"),
    ("wrong-type", lambda c: c["segmentation"].update(iterations="many"), "config key 'segmentation.iterations': 'many' is not of type 'integer'"),
    ("negative-count", lambda c: c["generation"].update(num_pairs=-3), "config key 'generation.num_pairs': -3 is less than the minimum of 1"),
    ("unknown-dataset", lambda c: c["targets"].append("mini_kitti"), "config key 'targets[2]': unknown dataset 'mini_kitti'"),
    ("unknown-method", lambda c: c["segmentation"].update(model="hrda"), "config key 'segmentation.model': 'hrda' is not one of"),
    ("table-unknown-experiment", lambda c: _add_table(c, "extra", "hrda"), "config key 'tables.extra.rows[0].experiment': unknown experiment 'hrda'"),
    ("set-name-escapes", lambda c: c["generated_sets"].update({"../outside": {"generator": "plain"}}), "config key 'generated_sets': name '../outside' is not allowed here"),
    ("evaluation-split-escapes", lambda c: c["evaluation"].update(split="../../etc"), "config key 'evaluation.split': target 'mini_cityscapes' has no split '../../etc'"),
]


@pytest.mark.parametrize("mutate, expected", [f[1:] for f in CONFIG_FAULTS], ids=[f[0] for f in CONFIG_FAULTS])
def test_bad_config_is_refused_naming_the_key(mutate, expected):
    config = smoke_config()
    mutate(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "section, name",
    [("datasets", "../x"), ("generated_sets", "a/b"), ("experiments", ".."), ("tables", "../../tmp/t")],
)
def test_names_that_would_leave_results_are_refused(section, name):
    config = smoke_config()
    entry = {
        "datasets": {"format": "minicity", "domain": "game", "splits": {"train": 2}},
        "generated_sets": {"generator": "plain"},
        "experiments": {"data": "source"},
        "tables": {"kind": "mean_iou", "rows": [{"experiment": "source_only"}], "columns": [{"target": "mini_cityscapes"}]},
    }[section]
    config[section][name] = entry
    with pytest.raises(ConfigError, match=re.escape(f"config key '{section}': name '{name}' is not allowed here: names become folder names under results/")):
        validate_config(config)


def test_a_source_without_a_train_split_is_refused():
    config = smoke_config()
    config["datasets"][config["source"]]["splits"] = {"val": 4}
    with pytest.raises(ConfigError, match=r"config key 'datasets.mini_gta5': the source has no 'train' split"):
        validate_config(config)


def test_a_dataset_root_may_point_anywhere(tmp_path):
    """User data may live outside the project: a root reached through '..' is fine when its layout is."""
    tree = make_tree("cityscapes", tmp_path / "data" / "cityscapes", count=1, label_values=CITYSCAPES_IDS, names_only=True)
    (tmp_path / "project").mkdir()
    config = smoke_config()
    config["datasets"]["cs"] = {"format": "cityscapes", "root": str(tmp_path / "project" / ".." / "data" / "cityscapes"), "splits": ["val"]}
    config["targets"].append("cs")
    assert validate_config(config)["datasets"]["cs"]["root"].endswith("../data/cityscapes")
    assert tree.samples  # the layout check read the tree through the '..'


@pytest.mark.parametrize("mutate, expected", [f[1:] for f in CONFIG_FAULTS], ids=[f[0] for f in CONFIG_FAULTS])
def test_snakemake_dry_run_stops_with_one_line_naming_the_key(tmp_path, mutate, expected):
    config = smoke_config()
    mutate(config)
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(yaml.safe_dump(config))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "earlier.txt").write_text("an earlier result")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "--cores", "1", "--configfile", str(configfile)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    causes = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("invalid config: ")]
    assert len(causes) == 1 and expected in causes[0], result.stdout + result.stderr
    assert snapshot(tmp_path / "results") == {"earlier.txt": b"an earlier result"}


# ------------------------------------------------------------------------------------ generator


@pytest.fixture(scope="module")
def source_and_plan(tmp_path_factory):
    from dginstyle.data.prepare import prepare
    from dginstyle.diffusion.layouts import select_layouts

    root = tmp_path_factory.mktemp("bad_generator")
    prepare("minicity", root / "source", domain="game", splits="train=8", seed=0, size="128x64", rcs_min_pixels=12, workers=1)
    select_layouts(root / "source", root / "plan.jsonl", num_pairs=2, crop_size=32, rcs_min_pixels=12, seed=0)
    return root


def _generate(capsys, root: Path, generator: Path, out: Path) -> str:
    return fails_with_one_line(
        capsys, "generate", "--generator", generator, "--plan", root / "plan.jsonl", "--source", root / "source",
        "--out", out, "--mode", "plain", "--steps", 2, "--device", "cpu",
    )  # fmt: skip


def test_a_generator_folder_that_is_not_one_is_refused(source_and_plan, tmp_path, capsys):
    out = tmp_path / "shard0"
    before = previous_artifact(out, "generate")
    err = _generate(capsys, source_and_plan, source_and_plan / "source", out)  # a dataset, not a generator
    assert f"{source_and_plan / 'source'}: not a generator folder (dginstyle.json kind is None, expected 'generator')" in err
    err = _generate(capsys, source_and_plan, tmp_path / "nowhere", out)
    assert f"{tmp_path / 'nowhere'}: generator folder not found" in err
    assert snapshot(out) == before and not (tmp_path / ".shard0.partial").exists()


def test_a_generator_with_the_wrong_conditioning_channels_is_refused(source_and_plan, tmp_path, capsys):
    from dginstyle.diffusion.generate import tiny_generator

    rgb = tiny_generator(tmp_path / "rgb", conditioning_channels=3)  # an RGB-conditioned ControlNet
    out = tmp_path / "shard0"
    before = previous_artifact(out, "generate")
    err = _generate(capsys, source_and_plan, rgb, out)
    assert f"{rgb / 'controlnet' / 'config.json'}: ControlNet has conditioning_channels=3, expected 20" in err
    assert snapshot(out) == before and not (tmp_path / ".shard0.partial").exists()


# ------------------------------------------------------------------------------------ segmentation


def make_shard(folder: Path, count: int = 2) -> Path:
    """A generated shard in the format of dginstyle.diffusion.generate (32x32 pairs)."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 19, (32, 32), dtype=np.uint8)).save(folder / "labels" / f"{i}.png")
    (folder / "pairs.jsonl").write_text("".join(json.dumps({"id": i, "prompt": "road"}) + "\n" for i in range(count)))
    return folder


@pytest.fixture(scope="module")
def seg_source(tmp_path_factory):
    from dginstyle.data.prepare import prepare

    root = tmp_path_factory.mktemp("bad_segmentation")
    prepare("minicity", root / "source", domain="game", splits="train=4", seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    return root / "source"


def _train(capsys, source: Path, out: Path, work: Path, *extra) -> str:
    return fails_with_one_line(
        capsys, "train-segmentation", "--source", source, "--out", out, "--work-dir", work, "--model", "daformer_tiny",
        "--iterations", 2, "--batch-size", 2, "--crop-size", 32, "--threads", 1, *extra,
    )  # fmt: skip


def test_a_generated_shard_with_a_missing_label_is_refused_before_training(seg_source, tmp_path, capsys):
    shard = make_shard(tmp_path / "generated" / "shard0")
    (shard / "labels" / "1.png").unlink()
    out = tmp_path / "run"
    before = previous_artifact(out, "train-segmentation")
    err = _train(capsys, seg_source, out, tmp_path / "work", "--generated", shard)
    assert f"{shard / 'labels' / '1.png'}: listed in {shard / 'pairs.jsonl'} but missing" in err
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda s: (s / "images" / "0.png").unlink(), "images/0.png: listed in"),
        (lambda s: (s / "pairs.jsonl").unlink(), ": not a generated shard (no pairs.jsonl)"),
        (lambda s: (s / "pairs.jsonl").write_text('{"prompt": "road"}\n'), "pairs.jsonl:1: not a JSON object with an 'id'"),
    ],
    ids=["missing-image", "no-pairs-file", "row-without-id"],
)
def test_other_broken_shards_are_named(tmp_path, damage, expected):
    from dginstyle.io import DataError
    from dginstyle.segmentation.datasets import generated_samples

    shard = make_shard(tmp_path / "shard0")
    damage(shard)
    with pytest.raises(DataError, match=re.escape(expected)):
        generated_samples(shard)


# ------------------------------------------------------------------------------------ checkpoints


def test_a_foreign_pickle_as_segmentation_resume_checkpoint_is_refused_unopened(seg_source, tmp_path, capsys):
    import torch

    marker = tmp_path / "PWNED"
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"meta": Evil(marker), "state_dict": {}}, work / "iter_2.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    out = tmp_path / "run"
    before = previous_artifact(out, "train-segmentation")
    err = _train(capsys, seg_source, out, work)
    assert f"{work / 'iter_2.pth'}: refused by the weights-only loader (holds objects outside the allowlist): UnpicklingError: " in err
    assert "posix.system" in err
    assert not marker.exists() and snapshot(out) == before


def test_a_foreign_pickle_as_pretrained_backbone_is_refused_unopened(seg_source, tmp_path, capsys):
    import torch

    marker = tmp_path / "PWNED"
    pretrained = tmp_path / "mit_b5.pth"
    torch.save({"state_dict": Evil(marker)}, pretrained)
    out = tmp_path / "run"
    before = previous_artifact(out, "train-segmentation")
    err = _train(capsys, seg_source, out, tmp_path / "work", "--pretrained", pretrained)
    assert f"{pretrained}: refused by the weights-only loader or unreadable (UnpicklingError: " in err
    assert not marker.exists() and snapshot(out) == before


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    from dginstyle.data.prepare import prepare
    from dginstyle.diffusion import models

    root = tmp_path_factory.mktemp("bad_checkpoint")
    spec = models.TinySpec(vae_channels=(8, 16), unet_channels=(16, 32), text_hidden=16, norm_groups=8, unet_attention_head_dim=4, text_heads=2, text_layers=1)
    components = models.tiny_components(spec, ["road car", "a city street scene"], 32, root / "tok", seed=0)
    models.save_pipeline(root / "prior", components, {"kind": "prior", "steps": 0})
    prepare("minicity", root / "source", domain="game", splits="train=4", seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    return root


def _checkpoint_with(folder: Path, file: str, payload) -> Path:
    """A complete-looking diffusion-stage checkpoint in `folder` whose `file` is replaced by `payload`."""
    import torch

    from dginstyle.diffusion import training

    module = torch.nn.Linear(2, 2)
    step = training.save_checkpoint(folder, 1, {"model": module}, {"optimizer": torch.optim.AdamW(module.parameters())}, rng_state={})
    torch.save(payload, step / file)
    return step / file


@pytest.mark.parametrize("file, expected", [("optimizer.optim.pt", "cannot read optimizer state"), ("rng.pt", "cannot read RNG state")])
def test_a_foreign_pickle_in_a_generator_stage_checkpoint_is_refused_unopened(tiny_prior, tmp_path, capsys, file, expected):
    marker = tmp_path / "PWNED"
    victim = _checkpoint_with(tmp_path / "checkpoints", file, {"state": Evil(marker)})
    out = tmp_path / "unet_source"
    before = previous_artifact(out, "finetune-unet")
    err = fails_with_one_line(
        capsys, "finetune-unet", "--prior", tiny_prior / "prior", "--source", tiny_prior / "source", "--out", out,
        "--checkpoints", tmp_path / "checkpoints", "--steps", 2, "--batch-size", 1, "--gradient-accumulation", 1,
        "--crop-size", 32, "--mixed-precision", "no", "--device", "cpu",
    )  # fmt: skip
    assert f"{victim}: {expected} (UnpicklingError: Trying to load unsupported GLOBAL posix.system" in err
    assert not marker.exists() and snapshot(out) == before


def test_a_pickle_named_safetensors_is_refused_unopened(tmp_path):
    from dginstyle.diffusion import training
    from dginstyle.io import DataError

    marker = tmp_path / "PWNED"
    victim = _checkpoint_with(tmp_path / "checkpoints", "model.safetensors", {"weight": Evil(marker)})
    with pytest.raises(DataError, match=re.escape(f"{victim}: not a readable safetensors file")):
        training.load_latest_checkpoint(tmp_path / "checkpoints")
    assert not marker.exists()


# ------------------------------------------------------------------------ docs/reliability.md


def test_every_test_the_reliability_table_names_exists():
    """docs/reliability.md's bad-input table names a test per row; a renamed or deleted test fails here."""
    page = (REPO / "docs" / "reliability.md").read_text()
    section = page.split("## What happens with bad input", 1)[1].split("\n## ", 1)[0]
    tokens = re.findall(r"(test_\w+)(\.py|\*)?", section)  # file names end in .py, prefixes in *
    named = {name for name, suffix in tokens if not suffix}
    prefixes = {name for name, suffix in tokens if suffix == "*"}
    defined = set()
    for path in (REPO / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    assert not sorted(named - defined), sorted(named - defined)
    assert all(any(d.startswith(p) for d in defined) for p in prefixes), prefixes
    assert len(named) >= 30


# Each name would run `touch pwned` if a shell line pasted it unquoted.
HOSTILE_NAMES = ["with space", "it's", 'say "hi"', "a;touch pwned", "$(touch pwned)", "`touch pwned`", "-leading-dash"]


def test_no_config_value_can_run_a_command(tmp_path):
    """Dataset roots are the user's text and reach a shell line: quoted, each prepares as itself
    and no payload runs. Output names cannot carry such text: the config refuses them."""
    config = smoke_config()
    names = []
    for number, hostile in enumerate(HOSTILE_NAMES):
        root = tmp_path / "data" / hostile / "cityscapes"
        make_tree("cityscapes", root, count={"val": 1}, splits=("val",), label_values=CITYSCAPES_IDS)
        name = f"cs{number}"
        config["datasets"][name] = {"format": "cityscapes", "root": str(root), "splits": ["val"]}
        config["targets"].append(name)
        names.append(name)
    work = tmp_path / "work"
    work.mkdir()
    configfile = tmp_path / "hostile.yaml"
    configfile.write_text(yaml.safe_dump(config))
    result = run_snakemake(work, *[f"results/datasets/{n}" for n in names], "--cores", "2", "--configfile", configfile)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name, hostile in zip(names, HOSTILE_NAMES):
        manifest = json.loads((work / "results" / "datasets" / name / "manifest.json").read_text())
        assert manifest["source_root"] == str(tmp_path / "data" / hostile / "cityscapes")
    assert not list(tmp_path.rglob("pwned")) and not (Path.cwd() / "pwned").exists()
    for hostile in ["it's", "a;b", "$(touch pwned)", "with space"]:
        config = smoke_config()
        config["datasets"][hostile] = {"format": "minicity", "domain": "game", "splits": {"train": 2}}
        with pytest.raises(ConfigError, match="is not allowed here"):
            validate_config(config)


def run_snakemake(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


def test_an_existing_folder_as_metrics_output_and_an_rgb_prediction_are_named(tmp_path, capsys):
    tree = make_tree("cityscapes", tmp_path / "raw", count={"val": 1}, splits=("val",), label_values=CITYSCAPES_IDS)
    prepared = tmp_path / "prepared"
    assert main(["prepare", "cityscapes", "--root", str(tree.root), "--splits", "val", "--out", str(prepared), "--workers", "1"]) == 0
    stem = (prepared / "val.txt").read_text().split()[0]
    predictions = tmp_path / "pred"
    predictions.mkdir()
    Image.new("RGB", (12, 8), (128, 64, 128)).save(predictions / f"{stem}.png")
    folder = tmp_path / "metrics.json"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    err = fails_with_one_line(capsys, "evaluate-predictions", "--pred", predictions, "--dataset", prepared, "--split", "val", "--out", folder)
    assert f"{folder}: refusing to write a file here" in err
    err = fails_with_one_line(capsys, "evaluate-predictions", "--pred", predictions, "--dataset", prepared, "--split", "val", "--out", tmp_path / "m.json")
    assert f"{predictions / stem}.png: prediction image has mode RGB" in err
    assert snapshot(tmp_path) == before


def test_outputs_get_the_permissions_the_umask_gives(tmp_path):
    from dginstyle.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "shared.json", {"a": 1})
        os.umask(0o007)
        atomic_write_json(tmp_path / "group.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "group.json").stat().st_mode & 0o777 == 0o660


def test_a_dataset_root_inside_results_is_refused(tmp_path, monkeypatch):
    """Snakemake deletes a job's outputs before it reruns: a raw dataset inside results/ could
    be one of them."""
    monkeypatch.chdir(tmp_path)
    make_tree("cityscapes", tmp_path / "results" / "datasets" / "cs", count={"val": 1}, splits=("val",), label_values=CITYSCAPES_IDS)
    config = smoke_config()
    config["datasets"]["cs"] = {"format": "cityscapes", "root": "results/datasets/cs", "splits": ["val"]}
    config["targets"].append("cs")
    with pytest.raises(ConfigError, match=re.escape("config key 'datasets.cs.root': results/datasets/cs lies inside results/")):
        validate_config(config)
