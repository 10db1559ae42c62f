# Paper tables: `snakemake results/tables/<name>.md` builds one table (config `tables:`) and
# exactly the training and evaluation runs it needs.


rule table:
    input:
        table_metrics,
    output:
        multiext("results/tables/{table}", ".md", ".csv", ".tex"),
        plot=report(
            "results/tables/{table}.png",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
        ),
    log:
        "results/logs/tables/{table}.log",
    benchmark:
        "results/benchmarks/rules/table/{table}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        spec=lambda wildcards: json.dumps(config["tables"][wildcards.table]),
        seeds=lambda wildcards: ",".join(map(str, table_seeds(wildcards.table))),
        config_hash=config_hash(config),
    shell:
        "python -m dginstyle make-table --spec {params.spec:q} --metrics results/metrics"
        " --seeds {params.seeds:q} --config-hash {params.config_hash:q}"
        " --out-prefix results/tables/{wildcards.table:q} --plot {output.plot:q} > {log:q} 2>&1"


rule training_curves:
    input:
        unet_source="results/generator/unet_source",
        controlnet="results/generator/controlnet",
        runs=expand(
            "results/segmentation/{experiment}/seed{seed}",
            experiment=EXPERIMENTS,
            seed=SEEDS,
        ),
    output:
        report(
            "results/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        "results/logs/training_curves.log",
    benchmark:
        "results/benchmarks/rules/training_curves.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m dginstyle training-curves --unet-source {input.unet_source:q}"
        " --controlnet {input.controlnet:q} --runs {input.runs:q} --out {output:q} > {log:q} 2>&1"
