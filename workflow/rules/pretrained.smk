# ImageNet backbone weights: the public checkpoint a user downloads (resources/mit_b5.pth,
# resources/resnet101_v1c-e67eebb6.pth; docs/weights.md) -> our backbone keys as safetensors,
# resources/<backbone>.safetensors, the file segmentation.pretrained names. A missing download
# stops the DAG when it is planned (backbone_download), not when a training job starts.


rule convert_pretrained:
    input:
        backbone_download,
    output:
        "resources/{backbone}.safetensors",
    log:
        "results/logs/convert_pretrained/{backbone}.log",
    conda:
        "../../envs/segmentation.yaml"
    threads: 1
    resources:
        runtime=15,
    params:
        format=lambda wildcards: PUBLIC_CHECKPOINTS[wildcards.backbone]["format"],
        model=lambda wildcards: PUBLIC_CHECKPOINTS[wildcards.backbone]["model"],
    shell:
        "python -m dginstyle convert-pretrained --format {params.format:q} --in {input:q}"
        " --out {output:q} --model {params.model:q} > {log:q} 2>&1"
