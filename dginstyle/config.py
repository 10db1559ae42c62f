"""Config validation: the JSON schema with defaults filled, then the checks a schema cannot say.

Called by the Snakefile at DAG-build time, so a typo'd key, a wrong type, an unknown dataset
or a missing dataset root stops the run in about a second, before any job starts. Imports only
the standard library, yaml and jsonschema (both come with Snakemake), so the Snakefile can
load it even when the package's heavy dependencies live in per-rule conda envs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jsonschema
import yaml

from dginstyle.data.layouts import default_splits, layout_problems
from dginstyle.segmentation.catalog import BACKBONES, backbone_of

# Both schemas ship inside the package, so an installed (non-editable) package finds them.
SCHEMA_PATH = Path(__file__).resolve().parent / "assets" / "config.schema.yaml"
# The `tables:` key's schema lives with the table code, which checks a table spec given straight
# to `dginstyle make-table` against the same file.
TABLES_SCHEMA_PATH = Path(__file__).resolve().parent / "assets" / "tables.schema.yaml"


class ConfigError(ValueError):
    """A config that the run must not start with; the message names the key and the expectation."""


def _with_defaults(validator_class):
    """A validator class that also writes each property's `default` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = json.loads(json.dumps(subschema["default"]))  # a copy
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line: which key, what is wrong, what was expected."""
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = f"{where}.{extra[0]}" if where != "(top level)" else extra[0]
        return f"config key '{key}': unknown key (allowed here: {', '.join(allowed)})"
    if error.validator == "required":
        return f"config key '{where}': {error.message}"
    if "propertyNames" in error.absolute_schema_path:
        # Names of datasets, generated sets, experiments and tables become folder and file
        # names under results/: "../x" or "a/b" would write outside the folder meant for them.
        return (
            f"config key '{where}': name {error.instance!r} is not allowed here: names become folder names "
            f"under results/ and must match {error.schema.get('pattern', '')} (no '/', no '..')"
        )
    expected = error.schema.get("description")
    hint = f" (expected: {expected})" if expected else ""
    return f"config key '{where}': {error.message}{hint}"


def validate_config(config: dict, schema_path: Path = SCHEMA_PATH, check_roots: bool = True) -> dict:
    """Validate `config` in place (defaults filled) and return it; raise ConfigError otherwise."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    schema["properties"]["tables"] = yaml.safe_load(TABLES_SCHEMA_PATH.read_text())["tables"]
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        # The deepest error of the first failing key is the most specific one.
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best))
    _check_references(config)
    if check_roots:
        _check_dataset_roots(config)
        _check_prior_file(config.get("prior", {}))
    return config


def used_datasets(config: dict) -> list[str]:
    """The datasets the run needs: the source, the targets, the prior corpus and the VAE's extra
    corpus, in that order."""
    names = [config["source"], *config["targets"]]
    for key in ("corpus", "vae_extra_corpus"):
        if config.get("prior", {}).get(key):
            names.append(config["prior"][key])
    return list(dict.fromkeys(names))


def _check_references(config: dict) -> None:
    datasets = config["datasets"]
    refs = [("source", config["source"])] + [(f"targets[{i}]", t) for i, t in enumerate(config["targets"])]
    corpus = config.get("prior", {}).get("corpus")
    if corpus:
        refs.append(("prior.corpus", corpus))
    extra = config.get("prior", {}).get("vae_extra_corpus")
    if extra:
        refs.append(("prior.vae_extra_corpus", extra))
    for key, name in refs:
        if name not in datasets:
            raise ConfigError(f"config key '{key}': unknown dataset {name!r} (defined under 'datasets': {', '.join(sorted(datasets))})")
    source = datasets[config["source"]]
    if source["format"] == "minicity" and source["domain"] == "prior":
        raise ConfigError(f"config key 'source': dataset {config['source']!r} is the unlabelled prior corpus, not a labelled source")
    if corpus and not (datasets[corpus]["format"] == "minicity" and datasets[corpus]["domain"] == "prior"):
        raise ConfigError(f"config key 'prior.corpus': dataset {corpus!r} is not a minicity prior corpus (format minicity, domain prior)")
    # The segmenter is trained on the source and scored on the targets: all drawn with the same
    # thin-object minimum, or a pole means different things in training and in testing.
    thin = {name: datasets[name].get("thin_objects_px", 0) for name in [config["source"], *config["targets"]] if datasets[name]["format"] == "minicity"}
    if len(set(thin.values())) > 1:
        listed = ", ".join(f"{name}: {value}" for name, value in thin.items())
        raise ConfigError(f"config key 'datasets.*.thin_objects_px': the source and the targets must draw thin objects alike ({listed})")
    for name, generated in config.get("generated_sets", {}).items():
        if generated["generator"] == "oracle" and source["format"] != "minicity":
            raise ConfigError(f"config key 'generated_sets.{name}.generator': 'oracle' re-renders the source's scenes in the prior's styles, so it needs a miniature-world (minicity) source; {config['source']!r} is {source['format']!r}")
    for name, experiment in config.get("experiments", {}).items():
        data = experiment["data"]
        if data != "source" and data not in config.get("generated_sets", {}):
            raise ConfigError(f"config key 'experiments.{name}.data': {data!r} is neither 'source' nor a generated set (defined under 'generated_sets': {', '.join(sorted(config.get('generated_sets', {})))})")
    _check_models(config)
    _check_source_sampling(config)
    _check_feature_distance(config)
    _check_shade(config)
    qc_users = [name for name, experiment in config.get("experiments", {}).items() if experiment.get("quality_control")]
    segmenter = config.get("quality_control", {}).get("segmenter")
    if qc_users and not segmenter:
        raise ConfigError(f"config key 'quality_control.segmenter': experiment {qc_users[0]!r} asks for quality control; name the source-only experiment whose run filters the labels")
    if segmenter and config.get("experiments", {}).get(segmenter, {}).get("data") != "source":
        raise ConfigError(f"config key 'quality_control.segmenter': {segmenter!r} is not an experiment trained on the source alone (data: source)")
    for name in qc_users:
        if config["experiments"][name]["data"] == "source":
            raise ConfigError(f"config key 'experiments.{name}.quality_control': quality control filters generated data; this experiment trains on the source alone")
    if "tables" in config:
        from dginstyle.tables import table_reference_problems

        problems = table_reference_problems(config)
        if problems:
            raise ConfigError(problems[0])
    _check_splits(config)
    for name in config.get("evaluation", {}).get("test_sizes", {}):
        if name not in config["targets"]:
            raise ConfigError(f"config key 'evaluation.test_sizes.{name}': {name!r} is not a target ({', '.join(config['targets'])})")
    for experiment_name, experiment in config.get("experiments", {}).items():
        for name in experiment.get("test_sizes", {}):
            if name not in config["targets"]:
                raise ConfigError(f"config key 'experiments.{experiment_name}.test_sizes.{name}': {name!r} is not a target ({', '.join(config['targets'])})")
    if corpus and config["prior"].get("model"):
        raise ConfigError("config keys 'prior.model' and 'prior.corpus': give a pretrained model or a corpus to train the tiny prior on, not both")
    _check_prior_config(config.get("prior", {}))


# A single checkpoint in the original Stable Diffusion layout (dginstyle.diffusion.models.SINGLE_FILE_SUFFIXES,
# not imported here: planning does not load torch).
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def _check_prior_config(prior: dict) -> None:
    """prior.config gives the configs of a single-file prior.model and of nothing else."""
    model, configs = prior.get("model"), prior.get("config")
    if configs and not (model and Path(model).suffix in SINGLE_FILE_SUFFIXES):
        raise ConfigError(
            f"config key 'prior.config': configs are for a single checkpoint file as prior.model ({', '.join(SINGLE_FILE_SUFFIXES)}); "
            f"prior.model is {model!r}, which brings its own (remove prior.config)"
        )


def _check_prior_file(prior: dict) -> None:
    """A single-file prior.model must exist when the DAG is planned, not when the first GPU job starts."""
    model = prior.get("model")
    if model and Path(model).suffix in SINGLE_FILE_SUFFIXES and not Path(model).is_file():
        raise ConfigError(f"config key 'prior.model': checkpoint file {model} not found (docs/weights.md says where the Stable Diffusion files go)")


# The settings an experiment may give itself, with the segmentation key it inherits otherwise.
EXPERIMENT_OWN = (
    "model", "feature_distance", "rare_class_sampling", "rcs_min_crop_ratio", "source_sampling", "shade", "crop_size",
    "source_resize", "generated_resize",
)  # fmt: skip


def _check_models(config: dict) -> None:
    """Give every experiment its own settings (default: the segmentation key of the same name;
    test sizes: evaluation.test_sizes, which an experiment's map replaces as a whole) and check
    that pretrained weights, when configured, exist for the backbone of each experiment's model."""
    segmentation = config.get("segmentation", {})
    fallback = {"model": "daformer_mitb5", "feature_distance": False, "rare_class_sampling": False, "rcs_min_crop_ratio": 0.5,
                "source_sampling": "full", "shade": False, "crop_size": 512, "source_resize": None, "generated_resize": None}  # fmt: skip
    for experiment in config.get("experiments", {}).values():
        for key in EXPERIMENT_OWN:
            experiment.setdefault(key, json.loads(json.dumps(segmentation.get(key, fallback[key]))))  # a copy
        experiment.setdefault("test_sizes", json.loads(json.dumps(config.get("evaluation", {}).get("test_sizes", {}))))
    pretrained = segmentation.get("pretrained")
    if isinstance(pretrained, dict):
        for backbone in pretrained:
            if backbone not in BACKBONES:
                raise ConfigError(f"config key 'segmentation.pretrained.{backbone}': not a backbone name (backbones: {', '.join(BACKBONES)})")
    if not pretrained:
        return
    for name, experiment in config.get("experiments", {}).items():
        try:
            pretrained_weights(config, experiment["model"])
        except KeyError:
            backbone = backbone_of(experiment["model"])
            raise ConfigError(
                f"config key 'experiments.{name}.model': {experiment['model']} has backbone {backbone}, for which "
                f"segmentation.pretrained names no weights; give them per backbone, e.g. "
                f"pretrained: {{{backbone_of(segmentation['model'])}: ..., {backbone}: ...}} (null: train it from scratch)"
            ) from None


PRESAMPLED = ("presampled", "presampled_recrop")


def _check_source_sampling(config: dict) -> None:
    """A presampled subset is the release's way of drawing the source by class (once, before
    training); online rare class sampling is the other (every draw): an experiment takes one."""
    segmentation = config.get("segmentation", {})
    for name, experiment in config.get("experiments", {}).items():
        if experiment["source_sampling"] in PRESAMPLED and experiment["rare_class_sampling"]:
            own = experiment["source_sampling"] != segmentation.get("source_sampling", "full")
            key = f"experiments.{name}.source_sampling" if own else "segmentation.source_sampling"
            raise ConfigError(
                f"config key '{key}': experiment {name!r} trains on the presampled subset ({experiment['source_sampling']}) and with "
                f"online rare_class_sampling; both draw the source images by class (the release's 512 rows: the subset without "
                f"online RCS): set rare_class_sampling: false for it, or source_sampling: full"
            )


def presample_settings(config: dict) -> dict:
    """The presampled subset's settings with its nulls resolved (a validated config): min_pixels
    null is the source's prepared threshold (prepare.rcs_min_pixels); recrop_min_pixels null is
    half of min_pixels (the release: 1500 at 3000)."""
    presample = config["presample"]
    min_pixels = presample["min_pixels"] if presample["min_pixels"] is not None else config["prepare"]["rcs_min_pixels"]
    recrop = presample["recrop_min_pixels"] if presample["recrop_min_pixels"] is not None else min_pixels // 2
    return {**presample, "min_pixels": int(min_pixels), "recrop_min_pixels": int(recrop)}


def _check_feature_distance(config: dict) -> None:
    """The ImageNet feature distance pulls the features towards a frozen copy of the pretrained
    backbone: an experiment with it must have pretrained weights (its model from scratch has no
    ImageNet features to keep)."""
    segmentation = config.get("segmentation", {})
    for name, experiment in config.get("experiments", {}).items():
        if not experiment.get("feature_distance"):
            continue
        if not pretrained_weights(config, experiment["model"]):  # (a backbone without an entry stopped _check_models)
            own = experiment["feature_distance"] != segmentation.get("feature_distance", False)
            key = f"experiments.{name}.feature_distance" if own else "segmentation.feature_distance"
            raise ConfigError(
                f"config key '{key}': the ImageNet feature distance needs pretrained weights, and experiment {name!r} "
                f"({experiment['model']}, backbone {backbone_of(experiment['model'])}) trains from scratch; give segmentation.pretrained "
                f"or set feature_distance: false"
            )


def _check_shade(config: dict) -> None:
    """SHADE's retrospection consistency pulls the features towards the frozen ImageNet backbone,
    as the feature distance does: an experiment with it must have pretrained weights."""
    segmentation = config.get("segmentation", {})
    if not segmentation.get("shade_retrospection_weight", 1.0) > 0:
        return
    for name, experiment in config.get("experiments", {}).items():
        if experiment.get("shade") and not pretrained_weights(config, experiment["model"]):
            raise ConfigError(
                f"config key 'segmentation.shade_retrospection_weight': SHADE's retrospection consistency needs pretrained weights, "
                f"and experiment {name!r} ({experiment['model']}, backbone {backbone_of(experiment['model'])}) trains from scratch; "
                f"give segmentation.pretrained or set shade_retrospection_weight: 0"
            )


def pretrained_weights(config: dict, model: str) -> str | None:
    """The pretrained backbone weights a run of `model` starts from (None: from scratch);
    KeyError when segmentation.pretrained names weights but none for this model's backbone."""
    segmentation = config["segmentation"]
    pretrained = segmentation.get("pretrained")
    if not pretrained:
        return None
    backbone = backbone_of(model)
    if isinstance(pretrained, str):  # the weights of segmentation.model's backbone
        if backbone != backbone_of(segmentation["model"]):
            raise KeyError(backbone)
        return pretrained
    return pretrained[backbone]


def dataset_splits(entry: dict) -> list[str]:
    """The splits a dataset entry prepares: minicity's named counts, or a real format's list."""
    if entry["format"] == "minicity":
        return list(entry["splits"])
    return list(entry.get("splits") or default_splits(entry["format"]))


def _check_splits(config: dict) -> None:
    """The source (and the prior VAE's extra corpus) must have a train split and every target
    the evaluation split, or the run would fail only after the generator and the segmenters
    have been trained. The evaluation split is also the one free string that becomes a path
    (labels/<split>/), so this check is what keeps '..' out of it."""
    datasets = config["datasets"]
    source = config["source"]
    if "train" not in dataset_splits(datasets[source]):
        raise ConfigError(f"config key 'datasets.{source}': the source has no 'train' split (splits: {', '.join(dataset_splits(datasets[source]))})")
    extra = config.get("prior", {}).get("vae_extra_corpus")
    if extra and (datasets[extra]["format"] != "minicity" or "train" not in dataset_splits(datasets[extra])):
        raise ConfigError(f"config key 'prior.vae_extra_corpus': dataset {extra!r} is not a minicity dataset with a train split")
    split = config.get("evaluation", {}).get("split", "val")
    for name in config["targets"]:
        if split not in dataset_splits(datasets[name]):
            raise ConfigError(f"config key 'evaluation.split': target {name!r} has no split {split!r} (splits: {', '.join(dataset_splits(datasets[name]))})")


def _check_dataset_roots(config: dict) -> None:
    for name in used_datasets(config):
        entry = config["datasets"][name]
        if entry["format"] == "minicity":
            continue
        root = Path(os.path.realpath(entry["root"]))
        results = Path(os.path.realpath("results"))  # the folder every job writes (relative to the working directory)
        if root == results or results in root.parents:
            raise ConfigError(
                f"config key 'datasets.{name}.root': {entry['root']} lies inside results/, which the workflow writes "
                "(Snakemake deletes a job's outputs before it reruns): keep raw datasets elsewhere"
            )
        problems = layout_problems(entry["format"], Path(entry["root"]), entry.get("splits"))
        if problems:
            raise ConfigError(f"config key 'datasets.{name}.root': {problems[0]}")


def config_hash(config: dict) -> str:
    """A short stable hash of the validated config, recorded beside results."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
