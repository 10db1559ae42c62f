"""Config schema: defaults filled, and every bad config refused with a message naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dginstyle.config import ConfigError, config_hash, used_datasets, validate_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "default": REPO / "config.yaml",
    "smoke": REPO / "tests" / "configs" / "smoke.yaml",
    "paper": REPO / "workflow" / "configs" / "paper.yaml",
}


def load(name: str) -> dict:
    return yaml.safe_load(CONFIGS[name].read_text())


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_shipped_miniature_configs_validate_and_fill_defaults(name):
    config = validate_config(load(name))
    assert config["generated_sets"]["dginstyle"] == {"generator": "plain", "mode": "mrlf", "layouts": "rcs", "weather_prompts": True}
    assert config["experiments"]["dginstyle"]["quality_control"] is False
    # the paper's guidance filled in; the default run lowers it (it erases the layout there)
    assert config["generation"]["guidance_scale"] == (3.0 if name == "default" else 7.5)
    assert config["generation"]["weather_schedule"] == {"adverse": 3000, "night": 1000, "plain": 3000}
    assert config["prior"]["corpus"] in used_datasets(config)


def test_paper_config_holds_the_paper_settings_without_roots_check():
    config = validate_config(load("paper"), check_roots=False)
    assert config["finetune_unet"]["learning_rate"] == 2e-6
    assert config["finetune_unet"]["steps"] == 30000
    assert config["controlnet"]["learning_rate"] == 1e-5
    assert config["generation"]["stride"] == 8 and config["generation"]["area_threshold"] == 20000
    assert config["segmentation"]["iterations"] == 40000 and config["segmentation"]["seeds"] == [0, 1, 2]
    assert used_datasets(config) == ["gta5", "cityscapes", "bdd100k", "mapillary", "acdc", "darkzurich"]


def test_paper_config_with_missing_roots_names_the_root():
    with pytest.raises(ConfigError, match=r"datasets\.gta5\.root.*data/gta5"):
        validate_config(load("paper"))


DIAGNOSTICS = sorted((REPO / "workflow" / "configs" / "diagnostics").glob("*.yaml"))


def test_the_diagnostics_are_found():
    assert {p.stem for p in DIAGNOSTICS} >= {"upper_bound", "segmenter_2x", "segmenter_os2", "long_segmentation"}


@pytest.mark.parametrize("overlay", DIAGNOSTICS, ids=lambda p: p.stem)
def test_each_diagnostic_says_what_it_answers_and_validates_over_the_default(overlay):
    """A diagnostic overlay opens with its question and documents its own command; given after
    config.yaml (Snakemake merges config files key by key, later files winning) it validates."""
    from snakemake.utils import update_config

    text = overlay.read_text()
    assert text.splitlines()[0].startswith("# Diagnostic: "), overlay.name
    assert f"--configfile config.yaml workflow/configs/diagnostics/{overlay.name} " in text, overlay.name
    config = load("default")
    update_config(config, yaml.safe_load(text))
    validate_config(config)


def expect_error(config: dict, *patterns: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, message
    assert "\n" not in message
    return message


def test_typo_in_a_nested_key_is_named_with_the_allowed_keys():
    config = load("smoke")
    config["generation"] = {"guidance_scal": 7.5}
    expect_error(config, "generation.guidance_scal", "unknown key", "guidance_scale")


def test_typo_at_top_level():
    config = load("smoke")
    config["segmentaton"] = {}
    expect_error(config, "'segmentaton'", "unknown key")


def test_typo_inside_a_dataset_entry():
    config = load("smoke")
    config["datasets"]["mini_gta5"]["split"] = config["datasets"]["mini_gta5"].pop("splits")
    expect_error(config, "datasets.mini_gta5")


def test_wrong_type_names_key_and_expectation():
    config = load("smoke")
    config["minicity"]["width"] = "wide"
    expect_error(config, "minicity.width", "integer")


def test_negative_count_refused():
    config = load("smoke")
    config["datasets"]["mini_gta5"]["splits"]["train"] = -5
    expect_error(config, "datasets.mini_gta5.splits.train", "minimum")


def test_unknown_domain_and_format():
    config = load("smoke")
    config["datasets"]["mini_gta5"]["domain"] = "gta6"
    expect_error(config, "datasets.mini_gta5.domain", "gta6")
    config = load("smoke")
    config["datasets"]["mini_gta5"]["format"] = "kitti"
    expect_error(config, "datasets.mini_gta5.format", "kitti")


def test_unknown_dataset_reference():
    config = load("smoke")
    config["targets"].append("mini_kitti")
    expect_error(config, "targets[2]", "mini_kitti", "unknown dataset")


def test_source_and_targets_must_draw_thin_objects_alike():
    config = load("default")
    assert {config["datasets"][name]["thin_objects_px"] for name in [config["source"], *config["targets"]]} == {3}
    assert "thin_objects_px" not in config["datasets"][config["prior"]["corpus"]]  # the shipped prior's corpus, as it was drawn
    config["datasets"]["mini_acdc"]["thin_objects_px"] = 2
    expect_error(config, "thin_objects_px", "mini_gta5: 3", "mini_acdc: 2")
    config = load("smoke")
    validate_config(config)
    assert config["datasets"][config["source"]]["thin_objects_px"] == 0  # the schema default


def test_prior_corpus_as_source_refused():
    config = load("smoke")
    config["source"] = "mini_prior"
    expect_error(config, "'source'", "unlabelled prior corpus")


def test_vae_extra_corpus_must_be_a_defined_minicity_train_set():
    config = load("smoke")
    config["prior"]["vae_extra_corpus"] = "mini_kitti"
    expect_error(config, "prior.vae_extra_corpus", "mini_kitti", "unknown dataset")
    config = load("smoke")
    config["prior"]["vae_extra_corpus"] = config["targets"][0]  # a val-only target
    expect_error(config, "prior.vae_extra_corpus", "train split")


def test_vae_extra_corpus_is_a_used_dataset():
    from dginstyle.config import used_datasets

    config = load("smoke")
    assert config["prior"]["vae_extra_corpus"] == config["source"]
    assert used_datasets(config).count(config["source"]) == 1  # rendered once
    config["datasets"]["game_codec"] = dict(config["datasets"]["mini_gta5"])
    config["prior"]["vae_extra_corpus"] = "game_codec"
    assert used_datasets(config)[-1] == "game_codec"


def test_real_dataset_without_root_key():
    config = load("smoke")
    config["datasets"]["cs"] = {"format": "cityscapes"}
    config["targets"].append("cs")
    expect_error(config, "datasets.cs", "root")


def test_real_dataset_root_missing_on_disk(tmp_path):
    config = load("smoke")
    missing = tmp_path / "nowhere"
    config["datasets"]["cs"] = {"format": "cityscapes", "root": str(missing)}
    config["targets"].append("cs")
    expect_error(config, "datasets.cs.root", str(missing))


def test_real_dataset_root_with_wrong_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()  # a GTA5 layout given as Cityscapes
    config = load("smoke")
    config["datasets"]["cs"] = {"format": "cityscapes", "root": str(tmp_path)}
    config["targets"].append("cs")
    expect_error(config, "datasets.cs.root", "leftImg8bit")


def test_config_hash_is_stable_and_sensitive():
    a = validate_config(load("smoke"))
    b = validate_config(load("smoke"))
    assert config_hash(a) == config_hash(b)
    c = copy.deepcopy(a)
    c["minicity"]["seed"] = 1
    assert config_hash(c) != config_hash(a)


def test_schema_is_usable_by_snakemake_validate():
    """The schema is plain JSON schema: Snakemake's own validator accepts the shipped configs."""
    from snakemake.utils import validate

    validate(load("smoke"), str(REPO / "dginstyle" / "assets" / "config.schema.yaml"))


def test_experiment_with_unknown_training_data():
    config = load("smoke")
    config["experiments"] = {"mixed": {"data": "no_such_set"}}
    expect_error(config, "experiments.mixed.data", "no_such_set", "generated set")


def test_test_size_for_a_dataset_that_is_not_a_target():
    config = load("smoke")
    config["evaluation"] = {"test_sizes": {"mini_gta5": [64, 32]}}
    expect_error(config, "evaluation.test_sizes.mini_gta5", "not a target")


def test_quality_control_needs_a_source_only_segmenter():
    config = load("smoke")  # the default config has no with_qc row
    config["quality_control"]["segmenter"] = None
    with pytest.raises(ConfigError, match="'quality_control.segmenter'.*with_qc"):
        validate_config(config)
    config = load("smoke")  # the default config has no with_qc row
    config["quality_control"]["segmenter"] = "dginstyle"
    with pytest.raises(ConfigError, match="'quality_control.segmenter': 'dginstyle' is not an experiment trained on the source alone"):
        validate_config(config)
    config = load("smoke")  # the default config has no with_qc row
    config["experiments"]["source_only"]["quality_control"] = True
    with pytest.raises(ConfigError, match="'experiments.source_only.quality_control'"):
        validate_config(config)


def test_a_table_naming_an_unknown_experiment_or_target_is_refused():
    config = load("default")
    config["tables"]["main"]["rows"].append({"experiment": "hrda"})
    with pytest.raises(ConfigError, match=r"'tables.main.rows\[2\].experiment': unknown experiment 'hrda'"):
        validate_config(config)
    config = load("default")
    config["tables"]["ablation"]["columns"] = [{"target": "mini_gta5"}]
    with pytest.raises(ConfigError, match=r"'tables.ablation.columns\[0\].target'"):
        validate_config(config)
    config = load("default")
    config["tables"]["main"]["kind"] = "bar"
    with pytest.raises(ConfigError, match="tables.main.kind"):
        validate_config(config)


def test_layout_and_weather_ablation_keys_are_checked():
    config = load("default")
    config["generated_sets"]["no_swap"]["layouts"] = "random"
    with pytest.raises(ConfigError, match="generated_sets.no_swap.layouts"):
        validate_config(config)
