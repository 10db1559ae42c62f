# Dataset preparation: every dataset (real or miniature) into the prepared-dataset contract.


rule prepare_dataset:
    output:
        directory("results/datasets/{dataset}"),
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/rules/prepare/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        args=prepare_arguments,
    shell:
        "python -m dginstyle prepare {params.args} --workers {threads} --out {output:q} > {log:q} 2>&1"


rule contact_sheet:
    input:
        "results/datasets/{dataset}",
    output:
        report(
            "results/figures/contact_sheets/{dataset}.png",
            caption="../report/contact_sheet.rst",
            category="Datasets",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "results/logs/contact_sheet/{dataset}.log",
    benchmark:
        "results/benchmarks/rules/contact_sheet/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        samples=config["prepare"]["contact_sheet_count"],
    shell:
        "python -m dginstyle contact-sheet --dataset {input:q} --count {params.samples:q} --out {output:q} > {log:q} 2>&1"
