"""The weights the way a user has them (docs/weights.md).

Stable Diffusion 1.5 in three forms, each loaded offline from tiny random-init SD-shaped models
built here: a model id through the standard Hugging Face cache (a fake cache in the
`models--owner--name/snapshots/<rev>` + `refs/main` layout huggingface_hub reads, HF_HUB_OFFLINE=1,
sockets closed), a local diffusers folder, and one checkpoint in the original SD layout
(`.safetensors`, and `.ckpt` read weights-only) converted from a tiny diffusers pipeline by
tests/ldm_format.py, its configs and tokenizer from `prior.config`. And the ImageNet backbones:
the user's download is converted by rule convert_pretrained; a missing one stops the dry run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ldm_format import pipeline_to_ldm
from test_workflow import (
    PAPER,
    paper_config_on_fake_trees,
    planned_jobs,
    snakemake,
    write_config,
)

from dginstyle.diffusion import models
from dginstyle.io import DataError

REPO = Path(__file__).resolve().parent.parent
SPEC = models.TinySpec(
    vae_channels=(8, 16), unet_channels=(16, 32), unet_attention_head_dim=4, text_hidden=16, text_layers=1, text_heads=2,
    max_tokens=16, norm_groups=8,
)  # fmt: skip
REPO_ID = "tiny-owner/tiny-sd"
REVISION = "3c1f0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d"
PARTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Two tiny SD-shaped pipelines with different random weights: `folder` (a diffusers folder,
    the configs source) and `other`, also saved as one original-layout checkpoint."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    captions = ["road car", "a city street scene"]
    models.save_pipeline(root / "folder", models.tiny_components(SPEC, captions, 32, root / "tok_a", seed=0), {"kind": "prior"})
    other = models.tiny_components(SPEC, captions, 32, root / "tok_b", seed=1)
    models.save_pipeline(root / "other", other, {"kind": "prior"})
    state = pipeline_to_ldm(other)
    save_file(state, str(root / "v1-5-pruned-emaonly.safetensors"))
    torch.save({"state_dict": state, "global_step": 840000}, root / "v1-5-pruned-emaonly.ckpt")
    return root


def fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """`folder` as the cached snapshot of `repo_id` on its main branch, in huggingface_hub's layout."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def assert_same_weights(loaded: dict, folder: Path) -> None:
    reference = models.load_components(folder)  # the local diffusers folder form
    for part in PARTS:
        got, want = loaded[part].state_dict(), reference[part].state_dict()
        assert got.keys() == want.keys(), part
        different = [key for key in got if not torch.equal(got[key], want[key])]
        assert not different, (part, different[:3])


# ------------------------------------------------------------------------------ Stable Diffusion

OFFLINE_SCRIPT = r"""
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network access attempted in an offline test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import torch
from dginstyle.diffusion import models
from dginstyle.io import DataError

root, repo_id = sys.argv[1], sys.argv[2]

def same(loaded, folder):
    reference = models.load_components(folder)
    return all(torch.equal(a, b) for part in ("unet", "vae", "text_encoder")
               for a, b in zip(loaded[part].state_dict().values(), reference[part].state_dict().values()))

def error(call):
    try:
        call()
    except DataError as exc:
        return str(exc)
    return None

out = {
    "by_id": same(models.load_components(repo_id), root + "/folder"),
    "missing_id": error(lambda: models.load_components("nobody/not-downloaded")),
    "single_file_with_cached_id": same(
        models.load_components(root + "/v1-5-pruned-emaonly.safetensors", config=repo_id), root + "/other"
    ),
    "single_file_default_configs": error(lambda: models.load_components(root + "/v1-5-pruned-emaonly.ckpt")),
}
out["attempts"] = attempts
print("RESULT " + json.dumps(out))
"""


def test_a_model_id_loads_from_the_hub_cache_with_hf_hub_offline_and_no_network(weights, tmp_path):
    """As a user runs a job: HF_HOME and HF_HUB_OFFLINE=1 in the environment of a fresh process,
    every socket refused. The id loads from the cache; a model not cached fails in one line that
    names it and says how to get it; a single file takes its configs from a cached id."""
    home = tmp_path / "hf"
    fake_hub_cache(home / "hub", REPO_ID, weights / "folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_TELEMETRY="1")
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(weights), REPO_ID], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    assert out["attempts"] == []
    assert out["by_id"] is True
    assert out["single_file_with_cached_id"] is True
    missing = out["missing_id"]
    assert missing and "\n" not in missing
    assert missing.startswith("nobody/not-downloaded: model not in the Hugging Face cache ")
    assert str(home / "hub") in missing and "(nor a local folder) and HF_HUB_OFFLINE is set" in missing
    assert "hf download nobody/not-downloaded --include 'model_index.json'" in missing
    default = out["single_file_default_configs"]  # the configs of SD 1.5's id, not in this cache
    assert default and "\n" not in default and default.startswith(f"{models.SD15_MODEL_ID}: model not in the Hugging Face cache")


# A listing in the layout of SD 1.5's hub repo: the pipeline needs only its configs, tokenizer and
# safetensors weights, never the 4-8 GB root checkpoints, the .bin, fp16 or non-EMA copies.
SD15_LISTING = [
    ".gitattributes", "README.md", "model_index.json", "v1-inference.yaml", "v1-5-pruned-emaonly.ckpt",
    "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt", "v1-5-pruned.safetensors",
    "feature_extractor/preprocessor_config.json", "safety_checker/config.json", "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.bin",
]  # fmt: skip
SD15_NEEDED = {
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
}  # fmt: skip


def test_online_a_model_id_is_downloaded_with_only_what_the_pipeline_needs(weights, tmp_path, monkeypatch):
    """Online, a model id goes through huggingface_hub's snapshot_download (here a stand-in that
    fills the cache as the hub would), asking for the pipeline's files only; with HF_HUB_OFFLINE
    set it asks for the cache only."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(dict(kwargs, repo_id=repo_id))
        snapshot = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / REVISION
        if not snapshot.exists():
            fake_hub_cache(tmp_path / "hub", repo_id, weights / "folder")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert_same_weights(models.load_components(models.SD15_MODEL_ID), weights / "folder")
    assert [(c["repo_id"], c["local_files_only"]) for c in calls] == [(models.SD15_MODEL_ID, False)]
    assert set(filter_repo_objects(SD15_LISTING, allow_patterns=calls[0]["allow_patterns"])) == SD15_NEEDED

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.load_components(models.SD15_MODEL_ID)
    assert calls[-1]["local_files_only"] is True


@pytest.mark.parametrize("name", ["v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.ckpt"])
def test_a_single_original_checkpoint_loads_with_the_configs_of_a_folder(weights, name):
    """The weights come from the file (not from the configs folder, whose weights differ); the
    tokenizer and the scheduler from the configs folder."""
    loaded = models.load_components(weights / name, config=weights / "folder")
    assert_same_weights(loaded, weights / "other")
    assert loaded["tokenizer"].get_vocab() == models.load_components(weights / "folder")["tokenizer"].get_vocab()
    assert loaded["scheduler"].config.prediction_type == "epsilon"
    assert all(not model.training for model in (loaded[part] for part in PARTS))


class _Evil:
    """Unpickling this runs a shell command: the marker file proves whether it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_ckpt_holding_an_object_is_refused_unopened(weights, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "v1-5-pruned-emaonly.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callbacks": _Evil(marker)}, path)
    with pytest.raises(DataError) as error:
        models.load_components(path, config=weights / "folder")
    message = str(error.value)
    assert message.startswith(f"{path}: refused by the weights-only loader or unreadable (UnpicklingError: ")
    assert "\n" not in message and "safetensors" in message
    assert not marker.exists()


def test_a_checkpoint_that_does_not_fit_its_configs_fails_in_one_line(weights, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights / "v1-5-pruned-emaonly.safetensors"))
    no_vae = tmp_path / "no_vae.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, str(no_vae))
    with pytest.raises(DataError, match=r"no_vae.safetensors: cannot build the vae from it with the configs of .*folder") as error:
        models.load_components(no_vae, config=weights / "folder")
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="a configs source .* is for a single checkpoint file"):
        models.load_components(weights / "folder", config=weights / "folder")


def test_every_stage_that_loads_the_prior_takes_prior_config():
    from dginstyle.cli import build_parser

    def parse(*argv):
        return build_parser(list(argv)).parse_args(list(argv))

    common = ["--prior", "sd.safetensors", "--prior-config", "cfg", "--out", "o"]
    finetune = parse("finetune-unet", *common, "--source", "s", "--checkpoints", "c", "--steps", "1")
    controlnet = parse("train-controlnet", *common, "--unet", "u", "--source", "s", "--checkpoints", "c", "--steps", "1")
    swap = parse("style-swap", *common, "--unet", "u", "--controlnet", "c")
    assert finetune.prior_config == controlnet.prior_config == swap.prior_config == "cfg"


def test_prior_config_is_for_a_single_file_prior_only():
    from dginstyle.config import ConfigError, validate_config

    config = yaml.safe_load(PAPER.read_text())
    config["prior"]["config"] = "some/configs"
    with pytest.raises(ConfigError, match=r"config key 'prior.config': configs are for a single checkpoint file as prior.model") as error:
        validate_config(config, check_roots=False)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(error.value)
    config["prior"]["model"] = "weights/v1-5-pruned-emaonly.ckpt"
    assert validate_config(config, check_roots=False)["prior"]["config"] == "some/configs"


# ------------------------------------------------------------------------------ the workflow


def test_paper_plan_with_a_single_file_prior_passes_its_configs_to_every_stage(tmp_path):
    """prior.model a local v1-5-pruned-emaonly.safetensors, prior.config a diffusers folder:
    finetune-unet, train-controlnet and style-swap get both; the backbone downloads are planned
    into resources/<backbone>.safetensors by rule convert_pretrained, and planning writes nothing."""
    config = yaml.safe_load(paper_config_on_fake_trees(tmp_path).read_text())
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "v1-5-pruned-emaonly.safetensors").write_bytes(b"")
    config["prior"].update(model="sd/v1-5-pruned-emaonly.safetensors", config="sd/configs folder")
    configfile = write_config(tmp_path / "single.yaml", config)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".snakemake" not in p.parts)
    result = snakemake("-n", "-p", "--cores", "2", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".snakemake" not in p.parts) == before
    jobs = planned_jobs(result)
    assert jobs["convert_pretrained"] == 2
    lines = result.stdout.splitlines()
    for stage, count in (("finetune-unet", 1), ("train-controlnet", 1), ("style-swap", 2)):
        commands = [line for line in lines if f"dginstyle {stage} " in line]
        assert len(commands) == count, stage
        assert all("--prior sd/v1-5-pruned-emaonly.safetensors --prior-config 'sd/configs folder' " in c for c in commands), commands
    converts = [line for line in lines if "dginstyle convert-pretrained" in line]
    assert any("--format mit --in resources/mit_b5.pth --out resources/mit_b5.safetensors --model daformer_mitb5" in c for c in converts)
    assert any("--in resources/resnet101_v1c-e67eebb6.pth --out resources/resnet101_v1c.safetensors --model deeplabv2_r101" in c for c in converts)

    config["prior"]["model"] = "sd/missing.ckpt"
    result = snakemake("-n", "--cores", "2", "--configfile", str(write_config(tmp_path / "missing.yaml", config)), cwd=tmp_path)
    assert result.returncode != 0 and "config key 'prior.model': checkpoint file sd/missing.ckpt not found" in result.stdout + result.stderr


def test_a_missing_backbone_download_stops_the_dry_run_with_one_message(tmp_path):
    configfile = paper_config_on_fake_trees(tmp_path, downloads=False)
    result = snakemake("results/tables/main.md", "-n", "--cores", "2", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode != 0
    message = (
        "config key 'segmentation.pretrained.mit_b5': resources/mit_b5.safetensors is converted from resources/mit_b5.pth, "
        "which is missing: download mit_b5.pth from the SegFormer authors' release of ImageNet-1K pretrained MiT weights"
    )
    output = result.stdout + result.stderr
    assert output.count(message) == 1, output
    assert "put it at resources/mit_b5.pth" in output and "MissingInputException" not in output
    assert not (tmp_path / "resources").exists()  # planning wrote nothing

    # converted before, the download since removed: nothing to convert, the plan goes on
    (tmp_path / "resources").mkdir()
    for name in ("mit_b5", "resnet101_v1c"):
        (tmp_path / "resources" / f"{name}.safetensors").write_bytes(b"")
    result = snakemake("results/tables/main.md", "-n", "--cores", "2", "--configfile", str(configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "convert_pretrained" not in planned_jobs(result)

    # weights at a path of the user's own that is not there: one line naming the key and the path
    config = yaml.safe_load(configfile.read_text())
    config["segmentation"]["pretrained"]["mit_b5"] = "weights/mine.pth"
    result = snakemake("results/tables/main.md", "-n", "--cores", "2", "--configfile", str(write_config(tmp_path / "own.yaml", config)), cwd=tmp_path)
    assert result.returncode != 0
    assert "config key 'segmentation.pretrained.mit_b5': pretrained weights weights/mine.pth not found" in result.stdout + result.stderr


def test_the_resnet_download_address_is_the_one_mmengine_resolves_open_mmlab_to():
    import importlib.util

    from dginstyle.segmentation.pretrained import PUBLIC_CHECKPOINTS

    spec = importlib.util.find_spec("mmengine")
    if spec is None:
        pytest.skip("mmengine not installed")
    table = json.loads((Path(spec.submodule_search_locations[0]) / "hub" / "openmmlab.json").read_text())
    entry = PUBLIC_CHECKPOINTS["resnet101_v1c"]
    assert entry["where"].split()[0] == table["resnet101_v1c"]
    assert table["resnet101_v1c"].endswith("/" + entry["file"])
