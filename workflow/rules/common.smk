# Config validation and the helpers the rules share. Nothing here reads the config behind
# the DAG's back: every value a command needs goes through a rule's params.

import json
import os
import shlex
import sys
import tempfile

# The package lives beside this Snakefile. Make it importable here (config validation) and
# in every job, whichever environment runs the job (a conda env from envs/ need not install
# it). The prefix keeps Snakemake's default bash strict mode; it is formatted like a
# shell command, hence the doubled braces.
sys.path.insert(0, workflow.basedir)


def gpu_lock_folder():
    """Local multi-GPU runs (workflow/profiles/local-gpu): when a local run caps `gpu`
    (`--resources gpu=N`), every GPU stage takes a free device through a lock file in this
    machine-wide folder (dginstyle/devices.py), since Snakemake only counts GPUs. None
    otherwise; on SLURM the scheduler assigns devices."""
    cap = workflow.global_resources.get("gpu")
    if workflow.local_exec and cap is not None and getattr(cap, "value", cap):
        return f"{tempfile.gettempdir()}/dginstyle-gpu-locks"
    return None


GPU_LOCKS = gpu_lock_folder()
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    + (f"export DGINSTYLE_GPU_LOCKS={shlex.quote(GPU_LOCKS)}; " if GPU_LOCKS else "")
)

from dginstyle.config import (
    PRESAMPLED,
    ConfigError,
    presample_settings,
    pretrained_weights,
    used_datasets,
    validate_config,
)

try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None


def settings(section):
    """A config section as a rule's params value, its keys sorted at every level: Snakemake
    compares params in order, so the same settings written in another key order (a config
    file rewritten by a tool) must not rerun the jobs that use them."""
    if isinstance(section, dict):
        return {key: settings(section[key]) for key in sorted(section)}
    if isinstance(section, list):
        return [settings(value) for value in section]
    return section


DATASETS = used_datasets(config)


wildcard_constraints:
    dataset="|".join(DATASETS),


def final_datasets():
    """The datasets `all` asks for. While the shipped prior stands in for a trained one, its
    corpus and its VAE's extra corpus are left out: nothing trains on them then (ask for them
    or their contact sheets by name to get them).
    """
    if SHIPPED_PRIOR_IN_USE:
        prior_only = {config["prior"]["corpus"], config["prior"]["vae_extra_corpus"]}
        return [name for name in DATASETS if name not in prior_only]
    return DATASETS


def prepared_datasets():
    return expand("results/datasets/{dataset}", dataset=final_datasets())


def contact_sheets():
    return expand(
        "results/figures/contact_sheets/{dataset}.png", dataset=final_datasets()
    )


def prepare_arguments(wildcards):
    """The `dginstyle prepare` flags of one dataset, from its config entry, each quoted for the
    shell (a dataset root is the user's text: it must never run as a command)."""
    entry = config["datasets"][wildcards.dataset]
    prepare = config["prepare"]
    args = [
        entry["format"],
        "--name",
        wildcards.dataset,
        "--rcs-min-pixels",
        prepare["rcs_min_pixels"],
        "--size-mismatch",
        prepare["size_mismatch"],
    ]
    if entry["format"] == "minicity":
        world = config["minicity"]
        splits = ",".join(
            f"{split}={count}" for split, count in entry["splits"].items()
        )
        args += [
            "--domain",
            entry["domain"],
            "--splits",
            splits,
            "--seed",
            world["seed"],
            "--size",
            f"{world['width']}x{world['height']}",
        ]
        if entry.get("thin_objects_px"):
            args += ["--thin-objects-px", entry["thin_objects_px"]]
    else:
        # --root=VALUE: a root that starts with "-" stays the option's value
        args.append(f"--root={entry['root']}")
        if entry.get("splits"):
            args += ["--splits", ",".join(entry["splits"])]
    return shlex.join(str(arg) for arg in args)


# ----------------------------------------------------------------------------- generator

# The prior U^P: a pretrained model (path or id, e.g. SD 1.5) or the tiny prior this workflow
# trains on the miniature world's captioned corpus.
PRIOR_TRAINED_HERE = config["prior"]["model"] is None
PRIOR = "results/generator/prior" if PRIOR_TRAINED_HERE else config["prior"]["model"]
GENERATED_SETS = list(config["generated_sets"])
# Oracle sets (an upper bound, dginstyle/diffusion/oracle.py) are rendered, not generated: no
# generator is assembled for them and rule render_oracle, not generate, writes their shards.
ORACLE_LOOKS = {"oracle": "prior", "oracle_no_swap": "source"}
ORACLE_SETS = [
    name
    for name, s in config["generated_sets"].items()
    if s["generator"] in ORACLE_LOOKS
]
DIFFUSION_SETS = [name for name in GENERATED_SETS if name not in ORACLE_SETS]
SHARDS = list(range(config["generation"]["shards"]))


wildcard_constraints:
    gen="|".join(GENERATED_SETS),
    shard=r"\d+",
    variant="plain|rebase|no_swap",


def prior_request():
    """What the tiny prior is trained from (corpus, VAE extra corpus, training settings): the
    install_prior / pretrain_prior params, so that a changed request reruns exactly the prior
    and what depends on it."""
    from dginstyle.diffusion.prior import training_request

    return training_request(
        prior_corpus_spec(),
        config["prior"]["resolution"],
        config["prior"]["training"],
        vae_extra=corpus_spec(config["prior"]["vae_extra_corpus"]),
    )


def prior_input(wildcards):
    """The prior folder as a job input when the workflow makes it (nothing for a model id)."""
    return {"prior": PRIOR} if PRIOR_TRAINED_HERE else {}


def prior_argument(wildcards, input):
    """--prior of a command: the input folder, or the configured model (id, folder or file)."""
    return input.prior if PRIOR_TRAINED_HERE else PRIOR


def prior_config_option(wildcards):
    """--prior-config of a command that loads the prior, quoted for the shell: prior.config,
    the configs of a single-file prior.model (none: the command's default, SD 1.5's id).
    """
    configs = None if PRIOR_TRAINED_HERE else config["prior"]["config"]
    return shlex.join(["--prior-config", configs]) if configs else ""


def prior_corpus_spec():
    """What the tiny prior is trained on, as recorded with it (a change retrains it)."""
    return corpus_spec(config["prior"]["corpus"])


def corpus_spec(name):
    """A minicity dataset as the prior records it (None for no dataset)."""
    if name is None:
        return None
    corpus = config["datasets"][name]
    world = config["minicity"]
    from dginstyle.data.minicity import WORLD_VERSION

    return {
        "domain": corpus["domain"],
        "splits": corpus["splits"],
        "seed": world["seed"],
        "size": [world["width"], world["height"]],
        "world_version": WORLD_VERSION,
        # Recorded only when set: a corpus drawn without the minimum is world version 1's, and
        # pretrain_prior's params (a rerun trigger) stay those of folders made before the key.
        **(
            {"thin_objects_px": corpus["thin_objects_px"]}
            if corpus.get("thin_objects_px")
            else {}
        ),
    }


def vae_extra_corpus_input():
    """The dataset the tiny VAE also reconstructs, as an input of pretrain_prior."""
    name = config["prior"]["vae_extra_corpus"]
    return f"results/datasets/{name}" if name else []


def vae_extra_argument(wildcards, input):
    return (
        f" --vae-extra-corpus {shlex.quote(input.vae_extra)}"
        if input.get("vae_extra")
        else ""
    )


def weather_schedule_argument(wildcards):
    """The prompt schedule of a generated set: the configured one, or plain class-list
    prompts only for a set without weather prompts (ablation)."""
    if not config["generated_sets"][wildcards.gen]["weather_prompts"]:
        return "plain=1"
    schedule = config["generation"]["weather_schedule"]
    return ",".join(f"{kind}={share}" for kind, share in schedule.items())


def layout_sampling(wildcards):
    return config["generated_sets"][wildcards.gen]["layouts"]


def generated_set_mode(wildcards):
    return config["generated_sets"][wildcards.gen]["mode"]


def generator_of(wildcards):
    variant = config["generated_sets"][wildcards.gen]["generator"]
    return f"results/generator/generators/{variant}"


def oracle_look(wildcards):
    return ORACLE_LOOKS[config["generated_sets"][wildcards.gen]["generator"]]


def generated_shards():
    return expand(
        "results/generated/{gen}/shard{shard}", gen=GENERATED_SETS, shard=SHARDS
    )


from dginstyle.diffusion.prior import shipped_prior_id, shipped_prior_matches


def shipped_prior_in_use():
    """Miniature world: start from the prior shipped in the package when it was trained on this
    very request, as the paper starts from SD 1.5 (rule install_prior); otherwise, or with
    `prior.use_shipped: false`, rule pretrain_prior trains one. Planning only reads the package.
    """
    return (
        PRIOR_TRAINED_HERE
        and config["prior"]["use_shipped"]
        and shipped_prior_matches(prior_request())
    )


SHIPPED_PRIOR_IN_USE = shipped_prior_in_use()

# ----------------------------------------------------------------------------- segmentation

EXPERIMENTS = list(config["experiments"])
SEEDS = config["segmentation"]["seeds"]


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),
    seed=r"\d+",
    target="|".join(config["targets"]),


def training_shards(wildcards):
    """The generated shards an experiment trains on besides the source (none for source-only);
    their quality-controlled copies where the experiment asks for quality control."""
    experiment = config["experiments"][wildcards.experiment]
    if experiment["data"] == "source":
        return []
    folder = "qc/shard" if experiment["quality_control"] else "shard"
    return expand(
        "results/generated/{gen}/{folder}{shard}",
        gen=experiment["data"],
        folder=folder,
        shard=SHARDS,
    )


# The presampled source subset, which presample_source draws from the source (one per config).
PRESAMPLED_SUBSET = f"results/presampled/{config['source']}"


def presample_parameters():
    """presample_source's settings (nulls resolved: the prepared threshold, half of it)."""
    resolved = presample_settings(config)
    return settings(
        {key: resolved[key] for key in ("images", "temperature", "min_pixels", "seed")}
    )


def source_subset(wildcards):
    """The presampled subset as an input of the experiments that train on it (none otherwise)."""
    experiment = config["experiments"][wildcards.experiment]
    return PRESAMPLED_SUBSET if experiment["source_sampling"] in PRESAMPLED else []


def quality_control_segmenter(wildcards):
    """The run that filters generated labels: the first seed of the configured source-only
    experiment (a run the tables need anyway, so quality control costs no extra training).
    """
    name = config["quality_control"]["segmenter"]
    return f"results/segmentation/{name}/seed{SEEDS[0]}"


# The segmentation settings every experiment shares. An experiment's model (and so its
# pretrained backbone), its resolution (crop, resizes), its feature distance / rare class
# sampling / SHADE settings are its own, flags of its own (segmentation_options), so changing
# one reruns the experiments it applies to only. `seeds` is which runs exist, not how one trains
# (each run's seed is its wildcard): adding a seed must not rerun the others.
SEGMENTATION_OWN = (
    "seeds",
    "model",
    "pretrained",
    "crop_size",
    "source_resize",
    "generated_resize",
    "generated_repeat",
    "feature_distance",
    "feature_distance_lambda",
    "feature_distance_classes",
    "feature_distance_min_ratio",
    "rare_class_sampling",
    "rcs_temperature",
    "rcs_min_pixels",
    "rcs_min_crop_ratio",
    "source_sampling",
    "shade",
    "shade_basis_styles",
    "shade_concentration",
    "shade_basis_interval",
    "shade_basis_samples",
    "shade_style_consistency_weight",
    "shade_retrospection_weight",
)
SEGMENTATION_SHARED = settings(
    {
        key: value
        for key, value in config["segmentation"].items()
        if key not in SEGMENTATION_OWN
    }
)


def experiment_model(wildcards):
    """The experiment's model (experiments.<name>.model, default segmentation.model)."""
    return config["experiments"][wildcards.experiment]["model"]


def experiment_crop_size(wildcards):
    """The experiment's training crop (experiments.<name>.crop_size, default
    segmentation.crop_size); its evaluation window follows it (the run's config)."""
    return config["experiments"][wildcards.experiment]["crop_size"]


def segmentation_options(wildcards, input):
    """Optional train-segmentation flags, quoted for the shell: the experiment's resizes, the
    pretrained backbone weights of its model, its feature distance, its source sampling (the
    presampled subset, its input, with or without the re-crop by drawn class; or online rare
    class sampling with its own min crop ratio) and SHADE.
    """
    hp = config["segmentation"]
    experiment = config["experiments"][wildcards.experiment]
    options = []
    if experiment["source_resize"]:
        options += ["--source-resize", "{}x{}".format(*experiment["source_resize"])]
    if experiment["generated_resize"]:
        options += [
            "--generated-resize",
            "{}x{}".format(*experiment["generated_resize"]),
        ]
    # Only where there is generated data, so that changing it leaves source-only runs alone.
    if experiment["data"] != "source" and hp["generated_repeat"] != 1:
        options += ["--generated-repeat", hp["generated_repeat"]]
    if hp["mixed_precision"] != "no":  # only then: float32 runs keep their command line
        options += ["--mixed-precision", hp["mixed_precision"]]
    if hp["loader_workers"] is not None:
        options += ["--loader-workers", hp["loader_workers"]]
    pretrained = pretrained_weights(config, experiment_model(wildcards))
    if pretrained:
        options += ["--pretrained", pretrained]
    if experiment["feature_distance"]:
        options += [
            "--feature-distance",
            "--fd-lambda",
            hp["feature_distance_lambda"],
            "--fd-classes",
            ",".join(str(c) for c in hp["feature_distance_classes"]),
            "--fd-min-ratio",
            hp["feature_distance_min_ratio"],
        ]
    if experiment["rare_class_sampling"]:
        options += [
            "--rare-class-sampling",
            "--rcs-temperature",
            hp["rcs_temperature"],
            "--rcs-min-crop-ratio",
            experiment["rcs_min_crop_ratio"],
        ]
        if hp["rcs_min_pixels"] is not None:
            options += ["--rcs-min-pixels", hp["rcs_min_pixels"]]
    if experiment["source_sampling"] in PRESAMPLED:
        options += ["--source-subset", input.subset]
        if experiment["source_sampling"] == "presampled_recrop":
            presample = presample_settings(config)
            options += [
                "--tagged-recrop",
                "--recrop-min-pixels",
                presample["recrop_min_pixels"],
                "--recrop-tries",
                presample["recrop_tries"],
            ]
    if experiment["shade"]:
        options += [
            "--shade",
            "--shade-basis-styles",
            hp["shade_basis_styles"],
            "--shade-concentration",
            hp["shade_concentration"],
            "--shade-basis-interval",
            hp["shade_basis_interval"],
            "--shade-sc-weight",
            hp["shade_style_consistency_weight"],
            "--shade-rc-weight",
            hp["shade_retrospection_weight"],
        ]
        if hp["shade_basis_samples"] is not None:
            options += ["--shade-basis-samples", hp["shade_basis_samples"]]
    return shlex.join(str(option) for option in options)


def test_size_option(wildcards):
    """--test-size of one (experiment, target): the experiment's test sizes
    (experiments.<name>.test_sizes, default evaluation.test_sizes)."""
    size = config["experiments"][wildcards.experiment]["test_sizes"].get(
        wildcards.target
    )
    return shlex.join(["--test-size", "{}x{}".format(*size)]) if size else ""


def metrics_files():
    return expand(
        "results/metrics/{experiment}/seed{seed}/{target}.json",
        experiment=EXPERIMENTS,
        seed=SEEDS,
        target=config["targets"],
    )


# ----------------------------------------------------------------------------- ImageNet backbones

from dginstyle.segmentation.catalog import backbone_of
from dginstyle.segmentation.pretrained import (
    PUBLIC_CHECKPOINTS,
    converted_path,
    download_path,
    missing_download_message,
)


wildcard_constraints:
    backbone="|".join(PUBLIC_CHECKPOINTS),


def pretrained_key(model):
    """The config key that names the pretrained weights of `model`'s backbone."""
    if isinstance(config["segmentation"]["pretrained"], dict):
        return f"segmentation.pretrained.{backbone_of(model)}"
    return "segmentation.pretrained"


def pretrained_input(wildcards):
    """The experiment's ImageNet backbone weights as an input of its training (none: from
    scratch). resources/<backbone>.safetensors of a public backbone is made by rule
    convert_pretrained from the user's download; any other file must exist when the DAG is
    planned. Planning only looks: it writes nothing."""
    model = experiment_model(wildcards)
    path = pretrained_weights(config, model)
    if not path:
        return {}
    backbone = backbone_of(model)
    if backbone in PUBLIC_CHECKPOINTS and os.path.normpath(path) == converted_path(
        backbone
    ):
        return {"pretrained": converted_path(backbone)}
    if not os.path.exists(path):
        raise WorkflowError(
            f"config key '{pretrained_key(model)}': pretrained weights {path} not found"
            + (
                f"; or set it to {converted_path(backbone)} and put {download_path(backbone)} there (docs/weights.md)"
                if backbone in PUBLIC_CHECKPOINTS
                else ""
            )
        )
    return {"pretrained": path}


def backbone_download(wildcards):
    """The user's download, which convert_pretrained converts. Missing, the DAG stops at once
    with one line saying what to download, from where, and where to put it (nothing when the
    converted file is there already; the download may have been removed since)."""
    download = download_path(wildcards.backbone)
    if os.path.exists(download):
        return download
    if os.path.exists(converted_path(wildcards.backbone)):
        return []
    key = (
        f"segmentation.pretrained.{wildcards.backbone}"
        if isinstance(config["segmentation"]["pretrained"], dict)
        else "segmentation.pretrained"
    )
    raise WorkflowError(missing_download_message(wildcards.backbone, key))


# ----------------------------------------------------------------------------- tables

from dginstyle.config import config_hash
from dginstyle.tables import needed_metrics, spec_seeds

TABLES = list(config.get("tables", {}))


wildcard_constraints:
    table="|".join(TABLES) if TABLES else "(?!)",


def table_seeds(name):
    return spec_seeds(config["tables"][name], config["segmentation"]["seeds"])


def table_metrics(wildcards):
    """The metrics files of every (row, seed, column) cell of one table."""
    spec = config["tables"][wildcards.table]
    return list(needed_metrics(spec, table_seeds(wildcards.table)).values())


def table_files():
    return expand(
        "results/tables/{table}.{ext}", table=TABLES, ext=["md", "csv", "tex", "png"]
    )
