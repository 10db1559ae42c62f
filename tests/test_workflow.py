"""The Snakemake DAG: lint, dry runs of every shipped config, fast config refusal, a smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fake_trees import make_tree

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tests" / "configs" / "smoke.yaml"
PAPER = REPO / "workflow" / "configs" / "paper.yaml"


def snakemake(*args: str, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run Snakemake on this repo's Snakefile with `cwd` as the working directory.

    The timeout only catches a hang: the smoke run takes minutes, but a machine shared with
    other workloads can stretch that several times over (docs/experiments.md).
    """
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    # Jobs call `python`: make it this interpreter, as an activated venv would.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    counts: dict[str, int] = {}
    in_table = False
    for line in result.stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
            in_table = parts[0] != "total"  # the table ends with its total (lines like "jobid: 3" follow)
        elif in_table and parts and not parts[0].startswith("-"):
            in_table = False
    return counts


def test_lint_is_clean(tmp_path):
    result = snakemake("--lint", "--configfile", str(REPO / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefiles_are_snakefmt_formatted():
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_of_default_config_plans_every_dataset(tmp_path):
    result = snakemake("-n", "--cores", "2", "--configfile", str(REPO / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    # The shipped prior stands in for a trained one (as SD 1.5 does at paper scale): a job
    # installs it, so neither pretrain_prior nor its corpus is planned, and planning wrote nothing.
    assert jobs["install_prior"] == 1
    assert "pretrain_prior" not in jobs
    assert sorted(p.name for p in tmp_path.iterdir()) == [".snakemake"]
    assert jobs["prepare_dataset"] == 6
    assert jobs["contact_sheet"] == 6
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    sets, experiments = len(config["generated_sets"]), len(config["experiments"])
    assert jobs["generate"] == 2 * sets and jobs["style_swap"] == 2  # plain, and no_swap (ablation and figure)
    assert "quality_control" not in jobs  # its ablation row is in paper.yaml and the smoke config
    assert jobs["train_segmentation"] == experiments * 3  # every table row, three seeds
    assert jobs["evaluate"] == experiments * 3 * 5  # ... on five targets
    assert jobs["table"] == len(config["tables"]) == 3


def test_without_the_shipped_prior_pretrain_prior_trains_from_its_corpus(tmp_path):
    overlay = write_config(tmp_path / "own_prior.yaml", {"prior": {"use_shipped": False}})
    result = snakemake("-n", "-p", "--cores", "2", "--configfile", str(REPO / "config.yaml"), str(overlay), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs["pretrain_prior"] == 1 and "install_prior" not in jobs
    assert jobs["prepare_dataset"] == 8  # the prior corpus and the VAE's extra corpus are rendered for it
    # the shipped prior's recipe (the schema defaults)
    assert "--vae-steps 3000 --unet-steps 2000" in result.stdout
    assert "--vae-crop 32 --vae-learning-rate 0.002" in result.stdout
    assert "--vae-extra-corpus results/datasets/mini_gta5_vae" in result.stdout
    # the source and the targets draw wide thin objects; the prior's corpora as the shipped prior saw them
    prepares = [line for line in result.stdout.splitlines() if "dginstyle prepare minicity" in line]
    wide = {line.split("--name ")[1].split()[0] for line in prepares if "--thin-objects-px 3" in line}
    assert len(prepares) == 8 and wide == {"mini_gta5", "mini_cityscapes", "mini_bdd100k", "mini_mapillary", "mini_acdc", "mini_darkzurich"}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["minicity"].update(widht=64), "minicity.widht"),
        (lambda c: c["minicity"].update(width="wide"), "minicity.width"),
        (lambda c: c["datasets"].update(cs={"format": "cityscapes", "root": "/no/such/cityscapes"}) or c["targets"].append("cs"), "/no/such/cityscapes"),
    ],
    ids=["typo", "wrong-type", "missing-root"],
)
def test_bad_config_fails_in_seconds_naming_the_key(tmp_path, mutate, expected):
    config = yaml.safe_load(SMOKE.read_text())
    mutate(config)
    configfile = write_config(tmp_path / "bad.yaml", config)
    start = time.monotonic()
    result = snakemake("-n", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert elapsed < 10, f"refusing a bad config took {elapsed:.1f}s"


def test_paper_dry_run_against_fake_dataset_trees(tmp_path):
    config = yaml.safe_load(PAPER.read_text())
    for name, entry in config["datasets"].items():
        root = tmp_path / "data" / name
        make_tree(entry["format"], root, count=3, names_only=True)
        entry["root"] = str(root)
    configfile = write_config(tmp_path / "paper.yaml", config)
    backbone_downloads(tmp_path)
    result = snakemake("-n", "-p", "--cores", "2", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = planned_jobs(result)
    assert jobs["prepare_dataset"] == 6
    assert jobs["contact_sheet"] == 6
    # SD 1.5 is the prior: nothing trains one; the plan is generated in 28 parallel shards.
    assert "pretrain_prior" not in jobs
    assert jobs["finetune_unet"] == 1 and jobs["train_controlnet"] == 1 and jobs["style_swap"] == 2
    assert config["generation"]["shards"] == 28
    assert jobs["generate"] == len(config["generated_sets"]) * 28
    assert "--prior stable-diffusion-v1-5/stable-diffusion-v1-5 " in result.stdout
    experiments = len(config["experiments"])
    assert jobs["train_segmentation"] == experiments * 3 and jobs["evaluate"] == experiments * 3 * 5
    assert "--model daformer_mitb5" in result.stdout and "--source-resize 1280x720" in result.stdout
    assert "--test-size 960x540" in result.stdout and "--test-size 1024x512" in result.stdout
    assert "--root" in result.stdout and str(tmp_path / "data" / "gta5") in result.stdout


def paper_config_on_fake_trees(tmp_path: Path, downloads: bool = True) -> Path:
    """paper.yaml with its datasets on fake trees under `tmp_path` (the working directory) and,
    with `downloads`, the public ImageNet backbone checkpoints where docs/weights.md puts them."""
    config = yaml.safe_load(PAPER.read_text())
    for name, entry in config["datasets"].items():
        root = tmp_path / "data" / name
        make_tree(entry["format"], root, count=3, names_only=True)
        entry["root"] = str(root)
    if downloads:
        backbone_downloads(tmp_path)
    return write_config(tmp_path / "paper.yaml", config)


def backbone_downloads(workdir: Path) -> list[Path]:
    """Tiny random-init stand-ins for the downloaded mit_b5.pth and resnet101_v1c-e67eebb6.pth,
    in their public key layouts, at resources/ under the working directory (planning only checks
    that they exist; `convert-pretrained` itself is tested in test_seg_models.py)."""
    import torch

    from dginstyle.segmentation.pretrained import PUBLIC_CHECKPOINTS, download_path

    g = torch.Generator().manual_seed(0)
    layouts = {
        "mit": {"patch_embed1.proj.weight": (8, 3, 7, 7), "patch_embed1.proj.bias": (8,), "block1.0.attn.q.weight": (8, 8), "norm1.weight": (8,)},
        "resnet": {"stem.0.weight": (4, 3, 3, 3), "layer1.0.conv1.weight": (4, 4, 1, 1), "fc.weight": (10, 16)},
    }
    paths = []
    for backbone, entry in PUBLIC_CHECKPOINTS.items():
        path = workdir / download_path(backbone)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {k: torch.randn(*shape, generator=g) for k, shape in layouts[entry["format"]].items()}}, path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("table", list(yaml.safe_load(PAPER.read_text())["tables"]))
def test_a_paper_table_plans_exactly_the_runs_it_needs(tmp_path, table):
    configfile = paper_config_on_fake_trees(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    spec = config["tables"][table]
    result = snakemake(f"results/tables/{table}.md", "-n", "--cores", "2", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = planned_jobs(result)
    rows = {row["experiment"] for row in spec["rows"]}
    targets = {col["target"] for col in spec["columns"]}
    seeds = config["segmentation"]["seeds"]
    qc = any(config["experiments"][r].get("quality_control") for r in rows)
    # the QC segmenter is the first seed of source_only: trained anyway when source_only is a row
    extra_runs = 1 if qc and "source_only" not in rows else 0
    assert jobs["table"] == 1
    assert jobs["train_segmentation"] == len(rows) * len(seeds) + extra_runs
    assert jobs["evaluate"] == len(rows) * len(seeds) * len(targets)
    sets = {config["experiments"][r]["data"] for r in rows} - {"source"}
    assert jobs.get("generate", 0) == len(sets) * config["generation"]["shards"]
    assert jobs.get("quality_control", 0) == (config["generation"]["shards"] if qc else 0)
    # datasets: the source, the prior (none: SD 1.5) and only the targets the table has
    assert jobs["prepare_dataset"] == 1 + len(targets)


def test_a_given_configfile_replaces_the_default_config(tmp_path):
    # The default config.yaml defines experiments and tables the smoke config lacks: none may
    # leak into a smoke run (Snakemake would merge them by default).
    result = snakemake("-n", "--cores", "1", "--configfile", str(SMOKE), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = planned_jobs(result)
    config = yaml.safe_load(SMOKE.read_text())
    assert jobs["train_segmentation"] == len(config["experiments"]) * len(config["segmentation"]["seeds"])
    assert jobs["table"] == len(config["tables"])


@pytest.mark.slow
def test_smoke_run_executes_every_stage(smoke_run):
    tmp_path = smoke_run
    config = yaml.safe_load(SMOKE.read_text())
    for name, entry in config["datasets"].items():
        root = tmp_path / "results" / "datasets" / name
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["splits"] == entry["splits"]
        for split, count in entry["splits"].items():
            assert len((root / f"{split}.txt").read_text().split()) == count
        assert (tmp_path / "results" / "figures" / "contact_sheets" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "results" / "logs" / "prepare" / f"{name}.log").exists()
        assert (tmp_path / "results" / "benchmarks" / "rules" / "prepare" / f"{name}.tsv").exists()
    # The generator chain: prior -> U^S -> ControlNet -> swapped generator -> generated shards.
    results = tmp_path / "results"
    generator = json.loads((results / "generator" / "generators" / "plain" / "dginstyle.json").read_text())
    assert generator["kind"] == "generator" and generator["variant"] == "plain"
    controlnet = json.loads((results / "generator" / "controlnet" / "config.json").read_text())
    assert controlnet["conditioning_channels"] == 20
    plan = (results / "generated" / "dginstyle" / "plan.jsonl").read_text().splitlines()
    assert len(plan) == config["generation"]["num_pairs"]
    ids = []
    for shard in range(config["generation"]["shards"]):
        folder = results / "generated" / "dginstyle" / f"shard{shard}"
        rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        ids += [row["id"] for row in rows]
        for row in rows:
            assert (folder / "images" / f"{row['id']}.png").is_file() and (folder / "labels" / f"{row['id']}.png").is_file()
        assert (folder / "contact_sheet.png").is_file() and (folder / "manifest.json").is_file()
        settings = json.loads((folder / "manifest.json").read_text())["config"]["settings"]
        assert settings["controlnet_scale"] == config["generation"]["controlnet_scale"]
        assert settings["timestep_spacing"] == config["generation"]["timestep_spacing"]
    assert sorted(ids) == list(range(config["generation"]["num_pairs"]))
    # The oracle set (an upper bound): rendered by render_oracle from its own plan, no generator.
    oracle_rows = []
    for shard in range(config["generation"]["shards"]):
        folder = results / "generated" / "oracle" / f"shard{shard}"
        oracle_rows += [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        assert json.loads((folder / "manifest.json").read_text())["generator_metadata"]["kind"] == "oracle"
        assert (results / "logs" / "render_oracle" / "oracle" / f"shard{shard}.log").exists()
    assert sorted(r["id"] for r in oracle_rows) == list(range(config["generation"]["num_pairs"]))
    assert all(r["look"] == "prior" and r["mode"] == "oracle" and r["label_agreement"] > 0.8 for r in oracle_rows)
    assert not (results / "generator" / "generators" / "oracle").exists() and not (results / "logs" / "generate" / "oracle").exists()
    figure = results / "figures" / "style_swap.png"
    from PIL import Image

    with Image.open(figure) as image:  # header + 4 layout rows; condition, U^S, U^P, five weathers
        assert image.size == (8 * 96, 18 + 4 * 96)
    numbers = json.loads((results / "figures" / "style_swap.json").read_text())
    assert list(numbers["columns"]) == ["source images", "U^S (no swap)", "U^P (swap)"] + [f"U^P, {w}" for w in ("sunny", "foggy", "rainy", "snowy", "night")]
    assert all(0 <= c["saturation"] <= 1 and 0 <= c["brightness"] <= 1 for c in numbers["columns"].values())
    # drawn as the shards are
    assert (numbers["controlnet_scale"], numbers["timestep_spacing"]) == (config["generation"]["controlnet_scale"], config["generation"]["timestep_spacing"])
    assert numbers["device"] == "cpu" and numbers["dtype"] == "float32"  # no GPU here: float32 on the CPU
    transfer = numbers["control_transfer"]
    for key in ("loss_unswapped", "loss_swapped"):  # both losses measured, with the ControlNet off and on
        assert transfer[key]["without_control"] > 0 and transfer[key]["with_control"] > 0
    assert transfer["crops"] == 32
    assert transfer["kept"] is None or isinstance(transfer["kept"], float)
    # Segmentation: every experiment x seed x target has its metrics; the DGInStyle runs saw the
    # generated pairs, the source-only runs did not.
    for experiment in config["experiments"]:
        for seed in config["segmentation"]["seeds"]:
            run = results / "segmentation" / experiment / f"seed{seed}"
            assert (run / "weights.safetensors").is_file() and (run / "config.py").is_file()
            trained_on = json.loads((run / "metadata.json").read_text())
            expected_generated = 0 if config["experiments"][experiment]["data"] == "source" else config["generation"]["num_pairs"]
            assert trained_on["generated_samples"] == expected_generated
            for target in config["targets"]:
                metrics = json.loads((results / "metrics" / experiment / f"seed{seed}" / f"{target}.json").read_text())
                assert 0 <= metrics["mIoU"] <= 1 and metrics["num_images"] == config["datasets"][target]["splits"]["val"]
    # The ablation set: no-swap generator, plain sampling, uniform crops, class-list prompts only.
    ablation_plan = [json.loads(line) for line in (results / "generated" / "ablation" / "plan.jsonl").read_text().splitlines()]
    assert all(row["rare_class"] is None and row["prompt_kind"] == "plain" for row in ablation_plan)
    # Quality control: the with_qc runs trained on filtered copies of the dginstyle shards.
    for shard in range(config["generation"]["shards"]):
        qc = json.loads((results / "generated" / "dginstyle" / "qc" / f"shard{shard}" / "quality_control.json").read_text())
        assert qc["mode"] == "pixel" and 0 <= qc["filtered_fraction"] <= 1
    with_qc = json.loads((results / "segmentation" / "with_qc" / "seed0" / "metadata.json").read_text())
    assert with_qc["generated"] and all("/qc/shard" in shard for shard in with_qc["generated"])
    # Tables and the training curves.
    for table in config["tables"]:
        for ext in ("md", "csv", "tex", "png"):
            assert (results / "tables" / f"{table}.{ext}").stat().st_size > 0
    main_table = (results / "tables" / "main.md").read_text()
    assert all(row["experiment"] in main_table for row in config["tables"]["main"]["rows"])
    assert (results / "figures" / "training_curves.png").stat().st_size > 0
    # Nothing left to do on a rerun: the outputs are complete and cached.
    rerun = snakemake("-n", "--cores", "2", "--configfile", str(SMOKE), cwd=tmp_path)
    assert rerun.returncode == 0
    assert "Nothing to be done" in rerun.stdout + rerun.stderr


# What a rerun must reproduce byte for byte. Manifests, logs and metadata hold paths, dates and
# timings, so they are left out; metrics are compared without their timing keys.
DETERMINISTIC = (
    "datasets/*/images/*/*",
    "datasets/*/labels/*/*",
    "datasets/*/*.txt",
    "generated/*/plan.jsonl",
    "generated/*/shard*/images/*",
    "generated/*/shard*/labels/*",
    "generated/*/shard*/pairs.jsonl",
    "generated/*/qc/shard*/labels/*",
)
TIMING_KEYS = {"seconds", "images_per_second", "run", "dataset_dir", "threads"}


def _fingerprints(results: Path) -> dict[str, str]:
    import hashlib

    digests = {}
    for pattern in DETERMINISTIC:
        for path in sorted(results.glob(pattern)):
            digests[str(path.relative_to(results))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(results.glob("metrics/*/*/*.json")):
        metrics = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_KEYS}
        digests[str(path.relative_to(results))] = json.dumps(metrics, sort_keys=True)
    return digests


@pytest.mark.slow
def test_smoke_dag_is_deterministic_and_the_seed_matters(smoke_run, tmp_path):
    """Issue 7: the same config twice gives byte-identical prepared data, layouts, prompts,
    generated images and labels, and identical metrics (CPU); another seed other layouts."""
    again = tmp_path / "again"
    again.mkdir()
    result = snakemake("--cores", "2", "--configfile", str(SMOKE), cwd=again)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first, second = _fingerprints(smoke_run / "results"), _fingerprints(again / "results")
    assert len(first) > 100 and any(k.startswith("generated/") and "/images/" in k for k in first)
    assert any(k.startswith("metrics/") for k in first)
    differing = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert not differing, differing[:10]

    # Another generation seed: the layout plan changes (built from the prepared source only).
    config = yaml.safe_load(SMOKE.read_text())
    config["generation"]["seed"] = config["generation"].get("seed", 0) + 1
    other = tmp_path / "other"
    other.mkdir()
    reseeded = write_config(other / "config.yaml", config)
    plan = "results/generated/dginstyle/plan.jsonl"
    result = snakemake(plan, "--cores", "2", "--configfile", str(reseeded), cwd=other)  # --configfile takes several values
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (other / plan).read_bytes() != (smoke_run / plan).read_bytes()


@pytest.mark.slow
def test_adding_a_seed_trains_only_the_new_seed(smoke_run, tmp_path):
    """`segmentation.seeds` says which runs exist, not how one trains: a dry run with another seed
    added plans that seed's training and evaluations and leaves the finished seed-0 runs alone
    (the seed list was once a param of every training, so adding a seed retrained them all).
    The rewritten file also has its keys in another order (yaml.safe_dump sorts them): the same
    settings in another order must not rerun anything either (rules take sorted `settings`)."""
    config = yaml.safe_load(SMOKE.read_text())
    assert config["segmentation"]["seeds"] == [0]
    config["segmentation"]["seeds"] = [0, 1]
    more_seeds = write_config(tmp_path / "more_seeds.yaml", config)
    assert list(config["segmentation"]) != sorted(config["segmentation"])  # the smoke file's own order
    runs = [f"results/segmentation/source_only/seed{s}" for s in (0, 1)]
    result = snakemake(*runs, "-n", "--cores", "1", "--configfile", str(more_seeds), cwd=smoke_run)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert planned_jobs(result) == {"train_segmentation": 1, "total": 1}, result.stdout[-3000:]
    assert "results/segmentation/source_only/seed1" in result.stdout
    assert "output: results/segmentation/source_only/seed0" not in result.stdout


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its type, size and modification time."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            info = (Path(dirpath) / name).lstat()
            state[os.path.relpath(Path(dirpath) / name, root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return state


@pytest.mark.slow
def test_planning_linting_and_reporting_change_nothing_in_a_finished_run(smoke_run, tmp_path):
    """A dry run of another config (one world seed changed), --lint and --report write and delete
    no output of a finished run: the next run has nothing to do."""
    config = yaml.safe_load(SMOKE.read_text())
    config["minicity"]["seed"] += 1
    other = write_config(tmp_path / "other.yaml", config)
    before = tree_state(smoke_run / "results")
    for args in (
        ["-n", "--cores", "2", "--configfile", str(other)],
        ["-n", "--cores", "2", "--configfile", str(REPO / "config.yaml")],
        ["--lint", "--configfile", str(SMOKE)],
        ["--report", str(tmp_path / "report.html"), "--configfile", str(SMOKE)],
    ):
        result = snakemake(*args, cwd=smoke_run)
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr, args  # --lint exits 1 on advice
        assert tree_state(smoke_run / "results") == before, f"snakemake {' '.join(args)} changed results/"
    report = (tmp_path / "report.html").read_text(errors="replace")
    # every figure the README promises: each category, and each generated shard's contact sheet
    for section in ("Datasets", "Generator", "Generated data", "Tables", "Training"):
        assert section in report, f"the report has no {section!r} section"
    shards = sorted(smoke_run.glob("results/generated/*/shard*/contact_sheet.png"))
    assert shards and report.count("contact_sheet.png") >= len(shards), "the generated shards' contact sheets are missing"
    result = snakemake("-n", "--cores", "2", "--configfile", str(SMOKE), cwd=smoke_run)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stdout[-2000:]
