# DGInStyle, one DAG: datasets -> generator -> generated set -> segmentation -> tables.
# Run `snakemake --cores all` for the miniature world (config.yaml); see README.md.

from snakemake.utils import min_version

min_version("9.0")


# config.yaml (the miniature world) is the default; a config given with --configfile replaces it
# instead of being merged into it, so no experiment, table or dataset of the default leaks into
# a paper or smoke run.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/generator.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/pretrained.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        prepared_datasets(),
        contact_sheets(),
        generated_shards(),
        "results/figures/style_swap.png",
        "results/figures/style_swap.json",
        metrics_files(),
        table_files(),
        "results/figures/training_curves.png",
