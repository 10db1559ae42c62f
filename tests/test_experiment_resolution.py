"""Per-experiment resolution settings (experiments.<name>.crop_size, source_resize,
generated_resize, test_sizes): their defaults and checks, the train and evaluate command lines
they give (a dry run of the smoke DAG), that changing one experiment's setting touches that
experiment's commands only, and the paper config's 1024-setting HRDA rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dginstyle.config import ConfigError, validate_config
from test_workflow import PAPER, SMOKE, paper_config_on_fake_trees, snakemake, write_config


def smoke() -> dict:
    config = yaml.safe_load(SMOKE.read_text())
    config["evaluation"]["test_sizes"] = {"mini_cityscapes": [64, 32], "mini_darkzurich": [64, 32]}
    return config


def test_experiment_settings_inherit_or_replace_the_global_ones():
    config = smoke()
    config["experiments"]["hrda_source_only"].update(
        crop_size=64, source_resize=[128, 64], generated_resize=[64, 64], test_sizes={"mini_cityscapes": [128, 64]}
    )
    config["experiments"]["dginstyle"]["source_resize"] = None  # explicit: native size
    config["segmentation"]["source_resize"] = [96, 48]
    config = validate_config(config)
    own, inherits, native = (config["experiments"][name] for name in ("hrda_source_only", "source_only", "dginstyle"))
    assert (own["crop_size"], own["source_resize"], own["generated_resize"]) == (64, [128, 64], [64, 64])
    assert (inherits["crop_size"], inherits["source_resize"], inherits["generated_resize"]) == (32, [96, 48], None)
    assert native["source_resize"] is None
    # an experiment's test sizes replace the global map as a whole: mini_darkzurich is native for it
    assert own["test_sizes"] == {"mini_cityscapes": [128, 64]}
    assert inherits["test_sizes"] == {"mini_cityscapes": [64, 32], "mini_darkzurich": [64, 32]}
    inherits["test_sizes"]["mini_cityscapes"][0] = 1  # a copy, not the global map itself
    assert config["evaluation"]["test_sizes"]["mini_cityscapes"] == [64, 32]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"test_sizes": {"mini_gta5": [64, 32]}}, r"experiments.source_only.test_sizes.mini_gta5': 'mini_gta5' is not a target"),
        ({"crop_size": 0}, r"experiments.source_only.crop_size"),
        ({"source_resize": [64]}, r"experiments.source_only.source_resize"),
        ({"croop_size": 64}, r"experiments.source_only.croop_size': unknown key"),
    ],
)
def test_bad_experiment_settings_are_refused_naming_the_key(entry, message):
    config = smoke()
    config["experiments"]["source_only"].update(entry)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def dry_run_commands(config: dict, tmp_path: Path, name: str, experiments) -> dict[tuple[str, str], str]:
    """{(rule, experiment or experiment/target): command line} of a dry run asking for the
    metrics of seed 0 of `experiments` on every target."""
    configfile = write_config(tmp_path / f"{name}.yaml", config)
    outputs = [f"results/metrics/{e}/seed0/{t}.json" for e in experiments for t in config["targets"]]
    result = snakemake(*outputs, "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = {}
    for line in result.stdout.splitlines():
        for e in experiments:
            if "train-segmentation" in line and f"/segmentation/{e}/seed0 " in line:
                commands[("train", e)] = line
            for t in config["targets"]:
                if "dginstyle evaluate" in line and f"/metrics/{e}/seed0/{t}.json " in line:
                    commands[("evaluate", f"{e}/{t}")] = line
    assert len(commands) == len(experiments) * (1 + len(config["targets"])), commands
    return commands


def test_two_experiments_with_different_crop_sizes_get_different_commands(tmp_path):
    experiments = ["source_only", "hrda_source_only"]
    config = smoke()
    config["experiments"]["hrda_source_only"].update(crop_size=64, source_resize=[128, 64], test_sizes={"mini_cityscapes": [128, 64]})
    commands = dry_run_commands(config, tmp_path, "two", experiments)
    assert "--crop-size 32 " in commands[("train", "source_only")] and "--source-resize" not in commands[("train", "source_only")]
    assert "--crop-size 64 " in commands[("train", "hrda_source_only")] and "--source-resize 128x64" in commands[("train", "hrda_source_only")]
    assert "--test-size 64x32" in commands[("evaluate", "source_only/mini_cityscapes")]
    assert "--test-size 64x32" in commands[("evaluate", "source_only/mini_darkzurich")]
    assert "--test-size 128x64" in commands[("evaluate", "hrda_source_only/mini_cityscapes")]
    assert "--test-size" not in commands[("evaluate", "hrda_source_only/mini_darkzurich")]  # not in its own map: native

    # changing one experiment's crop size changes its own train command only (the evaluation
    # window follows the run's config, so its evaluate commands need not change)
    bigger = smoke()
    bigger["experiments"]["hrda_source_only"].update(crop_size=128, source_resize=[128, 64], test_sizes={"mini_cityscapes": [128, 64]})
    again = dry_run_commands(bigger, tmp_path, "bigger", experiments)
    assert {key for key in commands if commands[key] != again[key]} == {("train", "hrda_source_only")}
    assert "--crop-size 128 " in again[("train", "hrda_source_only")]
    # changing the global crop size changes the commands of the experiments that inherit it only
    global_crop = smoke()
    global_crop["experiments"]["hrda_source_only"].update(crop_size=64, source_resize=[128, 64], test_sizes={"mini_cityscapes": [128, 64]})
    global_crop["segmentation"]["crop_size"] = 48
    third = dry_run_commands(global_crop, tmp_path, "global", experiments)
    assert {key for key in commands if commands[key] != third[key]} == {("train", "source_only")}


def test_paper_hrda_rows_use_the_1024_setting(tmp_path):
    configfile = paper_config_on_fake_trees(tmp_path)
    experiments = ["dginstyle", "hrda_dginstyle", "deeplabv2_dginstyle", "hrda_deeplabv2_dginstyle"]
    commands = dry_run_commands(yaml.safe_load(configfile.read_text()), tmp_path, "paper", experiments)
    for name in ("hrda_dginstyle", "hrda_deeplabv2_dginstyle"):
        train = commands[("train", name)]
        assert "--crop-size 1024 " in train and "--source-resize 2560x1440" in train and "--generated-resize 1024x1024" in train
        for target, size in [("cityscapes", "2048x1024"), ("bdd100k", "2048x1024"), ("mapillary", "2048x1024"), ("acdc", "1920x1080"), ("darkzurich", "1920x1080")]:
            assert f"--test-size {size}" in commands[("evaluate", f"{name}/{target}")]
    for name in ("dginstyle", "deeplabv2_dginstyle"):
        assert "--crop-size 512 " in commands[("train", name)] and "--source-resize 1280x720" in commands[("train", name)]
        assert "--generated-resize" not in commands[("train", name)]
        assert "--test-size 1024x512" in commands[("evaluate", f"{name}/cityscapes")] and "--test-size 960x540" in commands[("evaluate", f"{name}/acdc")]
    # SHADE on the MiT-B5 HRDA row only, with the release's settings; its retrospection is the feature distance
    shade = "--shade --shade-basis-styles 64 --shade-concentration 0.0156 --shade-basis-interval 4000 --shade-sc-weight 10.0 --shade-rc-weight 0.0"
    assert shade in commands[("train", "hrda_dginstyle")] and "--feature-distance" in commands[("train", "hrda_dginstyle")]
    assert all("--shade" not in commands[("train", name)] for name in experiments if name != "hrda_dginstyle")
    # the ResNet rows load the ResNet weights; the plain DeepLabV2 row has neither extra (the release's colour-augmentation run)
    assert "--pretrained resources/resnet101_v1c.safetensors" in commands[("train", "deeplabv2_dginstyle")]
    assert "--feature-distance" not in commands[("train", "deeplabv2_dginstyle")] and "--rare-class-sampling" not in commands[("train", "deeplabv2_dginstyle")]
    assert "--model hrda_deeplabv2_r101" in commands[("train", "hrda_deeplabv2_dginstyle")] and "--rare-class-sampling" in commands[("train", "hrda_deeplabv2_dginstyle")]
    assert yaml.safe_load(PAPER.read_text())["tables"]["architectures"]["rows"][0]["experiment"] == "deeplabv2_source_only"


def test_generated_repeat_reaches_the_runs_with_generated_data_only(tmp_path):
    """segmentation.generated_repeat is passed to the experiments that train on generated
    pairs; the source-only command stays as it was, so changing it reruns those runs only."""
    experiments = ["source_only", "dginstyle"]
    before = dry_run_commands(smoke(), tmp_path, "once", experiments)
    config = smoke()
    config["segmentation"]["generated_repeat"] = 3
    after = dry_run_commands(config, tmp_path, "thrice", experiments)
    assert "--generated-repeat" not in before[("train", "dginstyle")]
    assert "--generated-repeat 3" in after[("train", "dginstyle")]
    assert after[("train", "source_only")] == before[("train", "source_only")]


def test_the_head_lr_multiplier_and_the_validation_guidance_reach_their_commands(tmp_path):
    """segmentation.head_lr_mult and generation.guidance_scale (the ControlNet's validation
    grids) were once read nowhere: each must reach its command line."""
    config = smoke()
    config["segmentation"]["head_lr_mult"] = 3.5
    config["generation"]["guidance_scale"] = 2.25
    configfile = write_config(tmp_path / "changed.yaml", config)
    targets = ["results/segmentation/source_only/seed0", "results/generator/controlnet"]
    result = snakemake(*targets, "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    train = [line for line in lines if "train-segmentation" in line]
    controlnet = [line for line in lines if "train-controlnet" in line]
    assert train and all("--head-lr-mult 3.5 " in line for line in train)
    assert controlnet and all("--guidance-scale 2.25 " in line for line in controlnet)


def test_the_head_lr_multiplier_sets_the_decode_heads_learning_rate(tmp_path):
    from dginstyle.compat import import_mmseg

    import_mmseg()  # before mmseg: mmcv-lite lacks the compiled ops
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from dginstyle.segmentation import register_modules
    from dginstyle.segmentation.configs import training_config

    register_modules()
    init_default_scope("mmseg")
    common = dict(
        source=tmp_path, generated=[], work_dir=tmp_path / "unused", model="daformer_tiny", iterations=1, batch_size=2,
        crop_size=(32, 32), learning_rate=1e-4, weight_decay=0.01, warmup_iterations=0, poly_power=1.0, seed=0,
    )  # fmt: skip
    for mult in (10.0, 2.5):
        model_cfg = training_config(**common, head_lr_mult=mult)
        model = MODELS.build(model_cfg["model"])
        wrapper = build_optim_wrapper(model, model_cfg["optim_wrapper"])
        name_of = {id(param): name for name, param in model.named_parameters()}
        rates: dict[str, set] = {}
        for group in wrapper.optimizer.param_groups:
            for param in group["params"]:
                rates.setdefault(name_of[id(param)].split(".")[0], set()).add(round(group["lr"], 12))
        assert rates["decode_head"] == {round(1e-4 * mult, 12)}
        assert rates["backbone"] == {1e-4}


def test_loader_workers_and_controlnet_checkpointing_reach_their_commands(tmp_path):
    config = smoke()
    config["segmentation"]["loader_workers"] = 3
    config["controlnet"]["gradient_checkpointing"] = True
    configfile = write_config(tmp_path / "changed.yaml", config)
    targets = ["results/segmentation/source_only/seed0", "results/generator/controlnet"]
    result = snakemake(*targets, "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all("--loader-workers 3" in line for line in lines if "train-segmentation" in line)
    assert all("--gradient-checkpointing" in line for line in lines if "train-controlnet" in line)
    config["segmentation"]["loader_workers"] = None
    config["controlnet"]["gradient_checkpointing"] = False
    configfile = write_config(tmp_path / "default.yaml", config)
    result = snakemake(*targets, "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert "--loader-workers" not in result.stdout and "--gradient-checkpointing" not in result.stdout


def test_loader_workers_default_to_none_on_a_cpu_and_the_threads_with_cuda(monkeypatch):
    import torch

    from dginstyle.segmentation.train import default_loader_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_loader_workers(4) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (default_loader_workers(1), default_loader_workers(4), default_loader_workers(32)) == (1, 4, 8)


def test_segmentation_mixed_precision_reaches_the_optimizer_wrapper(tmp_path):
    """The release trains in float32; fp16/bf16 are an option (mmengine's AmpOptimWrapper)."""
    from dginstyle.segmentation.configs import training_config

    common = dict(
        source=tmp_path, generated=[], work_dir=tmp_path / "unused", model="daformer_tiny", iterations=1, batch_size=2,
        crop_size=(32, 32), learning_rate=1e-4, weight_decay=0.01, warmup_iterations=0, poly_power=1.0, seed=0,
    )  # fmt: skip
    assert training_config(**common)["optim_wrapper"]["type"] == "OptimWrapper"
    fp16 = training_config(**common, mixed_precision="fp16")["optim_wrapper"]
    assert (fp16["type"], fp16["dtype"], fp16["loss_scale"]) == ("AmpOptimWrapper", "float16", "dynamic")
    assert training_config(**common, mixed_precision="bf16")["optim_wrapper"]["dtype"] == "bfloat16"


def test_mixed_precision_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    import torch

    from dginstyle.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "source").mkdir()
    code = main(["train-segmentation", "--source", str(tmp_path / "source"), "--out", str(tmp_path / "run"),
                 "--work-dir", str(tmp_path / "work"), "--mixed-precision", "fp16"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and "needs a CUDA GPU" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_segmentation_mixed_precision_reaches_the_command_only_when_asked(tmp_path):
    config = smoke()
    config["segmentation"]["mixed_precision"] = "bf16"
    configfile = write_config(tmp_path / "amp.yaml", config)
    result = snakemake("results/segmentation/source_only/seed0", "-n", "-p", "--cores", "1", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    train = [line for line in result.stdout.splitlines() if "train-segmentation" in line]
    assert train and all("--mixed-precision bf16" in line for line in train)
    default = snakemake("results/segmentation/source_only/seed0", "-n", "-p", "--cores", "1", "--configfile", str(write_config(tmp_path / "d.yaml", smoke())), cwd=tmp_path)
    assert "--mixed-precision" not in default.stdout
