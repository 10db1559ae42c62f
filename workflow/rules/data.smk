# Dataset preparation: every dataset (real or miniature) into the prepared-dataset contract.


rule prepare_dataset:
    output:
        directory("results/datasets/{dataset}"),
    params:
        args=prepare_arguments,
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/rules/prepare/{dataset}.tsv"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m dginstyle prepare {params.args} --workers {threads} --out {output} > {log} 2>&1"


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
    params:
        samples=config["prepare"]["contact_sheet_count"],
    log:
        "results/logs/contact_sheet/{dataset}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m dginstyle contact-sheet --dataset {input} --count {params.samples} --out {output} > {log} 2>&1"
