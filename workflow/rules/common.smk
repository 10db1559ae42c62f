# Config validation and the helpers the rules share. Nothing here reads the config behind
# the DAG's back: every value a command needs goes through a rule's params.

import shlex
import sys

# The package lives beside this Snakefile. Make it importable here (config validation) and
# in every job, whichever environment runs the job (a conda env from envs/ need not install
# it). The prefix keeps Snakemake's default bash strict mode; it is formatted like a
# shell command, hence the doubled braces.
sys.path.insert(0, workflow.basedir)
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

from dginstyle.config import ConfigError, used_datasets, validate_config

try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None


DATASETS = used_datasets(config)


wildcard_constraints:
    dataset="|".join(DATASETS),


def prepared_datasets():
    return expand("results/datasets/{dataset}", dataset=DATASETS)


def contact_sheets():
    return expand("results/figures/contact_sheets/{dataset}.png", dataset=DATASETS)


def prepare_arguments(wildcards):
    """The `dginstyle prepare` flags of one dataset, from its config entry."""
    entry = config["datasets"][wildcards.dataset]
    prepare = config["prepare"]
    args = [
        entry["format"],
        f"--name {wildcards.dataset}",
        f"--rcs-min-pixels {prepare['rcs_min_pixels']}",
        f"--size-mismatch {prepare['size_mismatch']}",
    ]
    if entry["format"] == "minicity":
        world = config["minicity"]
        splits = ",".join(
            f"{split}={count}" for split, count in entry["splits"].items()
        )
        args += [
            f"--domain {entry['domain']}",
            f"--splits {splits}",
            f"--seed {world['seed']}",
            f"--size {world['width']}x{world['height']}",
        ]
    else:
        args.append(f"--root '{entry['root']}'")
        if entry.get("splits"):
            args.append(f"--splits {','.join(entry['splits'])}")
    return " ".join(args)
