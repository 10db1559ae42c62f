"""workflow/configs/paper_cityscapes.yaml (issue 34, item 9): the chain with Cityscapes train as
the labelled source and the four other real datasets as targets. Its settings against
paper.yaml's (the same wherever the source does not matter), and a dry run of its table on fake
dataset trees in each dataset's real layout: what is prepared, what is the source of every
generator and segmentation job, what is evaluated, and that planning writes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from fake_trees import make_tree
from test_workflow import (
    PAPER,
    REPO,
    backbone_downloads,
    planned_jobs,
    snakemake,
    write_config,
)

from dginstyle.config import validate_config
from dginstyle.tables import load_reported

CITYSCAPES = REPO / "workflow" / "configs" / "paper_cityscapes.yaml"
TARGETS = ["bdd100k", "mapillary", "acdc", "darkzurich"]


def load() -> dict:
    return yaml.safe_load(CITYSCAPES.read_text())


def test_the_config_validates_and_keeps_paper_yaml_where_the_source_does_not_matter():
    config, paper = load(), yaml.safe_load(PAPER.read_text())
    assert config["source"] == "cityscapes" and config["targets"] == TARGETS
    assert "gta5" not in config["datasets"] and "train" in config["datasets"]["cityscapes"]["splits"]
    # the generator's sections and the evaluation split are paper.yaml's
    for section in ("prior", "finetune_unet", "controlnet", "generation"):
        assert config[section] == paper[section], section
    assert config["generated_sets"]["dginstyle"] == paper["generated_sets"]["dginstyle"]
    assert config["evaluation"]["split"] == paper["evaluation"]["split"]
    assert config["evaluation"]["test_sizes"] == {t: paper["evaluation"]["test_sizes"][t] for t in TARGETS}
    assert config["prepare"] == paper["prepare"]
    # segmentation: paper.yaml's less the GTA5-only source settings
    gta5_only = {"source_resize", "source_sampling", "rare_class_sampling"}
    ours, theirs = config["segmentation"], paper["segmentation"]
    assert {k: v for k, v in ours.items() if k not in gta5_only} == {k: v for k, v in theirs.items() if k not in gta5_only}
    assert (ours["source_resize"], ours["source_sampling"], ours["rare_class_sampling"]) == ([1024, 512], "full", True)
    assert "presample" not in config  # the release's 6000-image GTA5 subset: more than Cityscapes train holds
    # the main table's rows, each as paper.yaml defines it except for the source's sizes and sampling
    for name in ("source_only", "dginstyle", "hrda_source_only", "hrda_dginstyle"):
        ours, theirs = config["experiments"][name], paper["experiments"][name]
        assert ours["data"] == theirs["data"] and ours.get("model") == theirs.get("model"), name
        if "hrda" in name:
            assert ours["source_resize"] == [2048, 1024] and ours["test_sizes"] == {t: theirs["test_sizes"][t] for t in TARGETS}
            assert all(ours[k] == theirs[k] for k in ("crop_size", "generated_resize", "shade", "rcs_min_crop_ratio")), name
    validated = validate_config(load(), check_roots=False)
    assert all(e["source_sampling"] == "full" and e["rare_class_sampling"] for e in validated["experiments"].values())
    # the table's reported rows exist and hold no number (none verified: n/a)
    rows = load_reported()["rows"]
    for row in config["tables"]["cityscapes_source"]["rows"]:
        entry = rows[row["reported"]]
        assert not entry["verified"] and entry["values"] == {} and entry["average"] is None, row


def tree_state(root: Path) -> dict[str, tuple]:
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            info = (Path(dirpath) / name).lstat()
            state[os.path.relpath(Path(dirpath) / name, root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return state


def test_the_table_plans_the_chain_from_cityscapes_train_to_the_four_targets(tmp_path):
    config = load()
    for name, entry in config["datasets"].items():
        root = tmp_path / "data" / name
        # every dataset in its real layout, Cityscapes with its val split too (present, unused)
        make_tree(entry["format"], root, count=3, names_only=True)
        entry["root"] = str(root)
    backbone_downloads(tmp_path)
    configfile = write_config(tmp_path / "paper_cityscapes.yaml", config)
    # snakemake's own bookkeeping (.snakemake/) aside, planning must write nothing
    before = {k: v for k, v in tree_state(tmp_path).items() if not k.startswith(".snakemake")}
    result = snakemake("results/tables/cityscapes_source.md", "-n", "-p", "--cores", "2", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    after = {k: v for k, v in tree_state(tmp_path).items() if not k.startswith(".snakemake")}
    assert after == before and not (tmp_path / "results").exists()

    out = result.stdout
    jobs = planned_jobs(result)
    lines = out.splitlines()
    # datasets: Cityscapes (train only) and the four targets; nothing of GTA5
    prepares = [line for line in lines if "dginstyle prepare" in line]
    assert jobs["prepare_dataset"] == 5 and len(prepares) == 5
    names = {line.split("--name ")[1].split()[0] for line in prepares}
    assert names == {"cityscapes", *TARGETS}
    cityscapes = next(line for line in prepares if "--name cityscapes " in line)
    assert str(tmp_path / "data" / "cityscapes") in cityscapes and "--splits train" in cityscapes and "val" not in cityscapes.split("--splits ")[1].split()[0]
    assert "gta5" not in out and "presample" not in out
    # the source of every generator and segmentation job is the prepared Cityscapes train
    source = "--source results/datasets/cityscapes "
    for command, count in [("train-controlnet", 1), ("finetune-unet", 1), ("select-layouts", 1), ("train-segmentation", 4 * 3)]:
        found = [line for line in lines if f"dginstyle {command} " in line]
        assert len(found) == count and all(source in line for line in found), (command, found)
    trains = [line for line in lines if "dginstyle train-segmentation " in line]
    assert all("--rare-class-sampling" in line and "--source-subset" not in line for line in trains)
    assert sum("--source-resize 1024x512" in line for line in trains) == 6 and sum("--source-resize 2048x1024" in line for line in trains) == 6
    # the four targets are evaluated, Cityscapes is not
    evaluations = [line for line in lines if "dginstyle evaluate " in line]
    assert jobs["evaluate"] == len(evaluations) == 4 * 3 * 4
    for target in TARGETS:
        assert sum(f"/{target}.json" in line for line in evaluations) == 4 * 3, target
    assert not any("cityscapes.json" in line or "datasets/cityscapes" in line for line in evaluations)
    assert jobs["generate"] == 28 and jobs["table"] == 1
    assert "results/tables/cityscapes_source.md" in out
