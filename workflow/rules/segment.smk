# Segmentation: one training job per (experiment, seed), one evaluation job per
# (experiment, seed, target). Each is independent, so a cluster runs them in parallel.


rule presample_source:
    input:
        source=f"results/datasets/{config['source']}",
    output:
        directory(PRESAMPLED_SUBSET),
    log:
        f"results/logs/presample_source/{config['source']}.log",
    benchmark:
        f"results/benchmarks/rules/presample_source/{config['source']}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        hp=presample_parameters(),
    shell:
        "python -m dginstyle presample-source --source {input.source:q} --out {output:q}"
        " --images {params.hp[images]:q} --temperature {params.hp[temperature]:q}"
        " --min-pixels {params.hp[min_pixels]:q} --seed {params.hp[seed]:q} > {log:q} 2>&1"


rule train_segmentation:
    input:
        unpack(pretrained_input),
        source=f"results/datasets/{config['source']}",
        generated=training_shards,
        subset=source_subset,
    output:
        directory("results/segmentation/{experiment}/seed{seed}"),
    log:
        "results/logs/train_segmentation/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/rules/train_segmentation/{experiment}/seed{seed}.tsv"
    conda:
        "../../envs/segmentation.yaml"
    # One thread, as for generate and evaluate: the tiny DAFormer scales poorly past one thread on
    # a CPU, so one-thread trainings side by side make more iterations per second than one
    # training on all the cores (docs/performance.md); on a GPU the network runs there.
    threads: 1
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    params:
        hp=SEGMENTATION_SHARED,
        model=experiment_model,
        crop_size=experiment_crop_size,
        options=segmentation_options,
        work_dir="results/checkpoints/segmentation/{experiment}/seed{seed}",
    shell:
        "python -m dginstyle train-segmentation --source {input.source:q} --generated {input.generated:q}"
        " --out {output:q} --work-dir {params.work_dir:q} --model {params.model:q}"
        " --iterations {params.hp[iterations]:q} --batch-size {params.hp[batch_size]:q}"
        " --crop-size {params.crop_size:q} --learning-rate {params.hp[learning_rate]:q}"
        " --head-lr-mult {params.hp[head_lr_mult]:q}"
        " --weight-decay {params.hp[weight_decay]:q} --warmup-iterations {params.hp[warmup_iterations]:q}"
        " --poly-power {params.hp[poly_power]:q} --seed {wildcards.seed:q}"
        " --checkpoint-interval {params.hp[checkpoint_interval]:q} {params.options} > {log:q} 2>&1"


rule evaluate:
    input:
        run="results/segmentation/{experiment}/seed{seed}",
        dataset="results/datasets/{target}",
    output:
        "results/metrics/{experiment}/seed{seed}/{target}.json",
    log:
        "results/logs/evaluate/{experiment}/seed{seed}/{target}.log",
    benchmark:
        "results/benchmarks/rules/evaluate/{experiment}/seed{seed}/{target}.tsv"
    conda:
        "../../envs/segmentation.yaml"
    # One thread: the network runs on the GPU where there is one; on a CPU (the miniature world)
    # a job spends most of its time importing mmseg (about 4 s, single-threaded), so two
    # one-thread evaluations side by side finish sooner than one with two threads.
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        split=config["evaluation"]["split"],
        test_size=test_size_option,
    shell:
        "python -m dginstyle evaluate --run {input.run:q} --dataset {input.dataset:q}"
        " --split {params.split:q} --out {output:q} {params.test_size} > {log:q} 2>&1"


rule quality_control:
    input:
        shard="results/generated/{gen}/shard{shard}",
        segmenter=quality_control_segmenter,
    output:
        directory("results/generated/{gen}/qc/shard{shard}"),
    log:
        "results/logs/quality_control/{gen}/shard{shard}.log",
    conda:
        "../../envs/segmentation.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        hp=settings(config["quality_control"]),
    shell:
        "python -m dginstyle quality-control --shard {input.shard:q} --run {input.segmenter:q}"
        " --out {output:q} --mode {params.hp[mode]:q} --threshold {params.hp[threshold]:q} > {log:q} 2>&1"
