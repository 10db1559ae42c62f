# DGInStyle, one DAG: datasets -> generator -> generated set -> segmentation -> tables.
# Run `snakemake --cores all` for the miniature world (config.yaml); see README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/generator.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/segment.smk"


rule all:
    default_target: True
    input:
        prepared_datasets(),
        contact_sheets(),
        generated_shards(),
        "results/figures/style_swap.png",
        metrics_files(),
