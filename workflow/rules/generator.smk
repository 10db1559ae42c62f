# The generator: prior (miniature world only), U^P -> U^S fine-tune, ControlNet, Style Swap.
# Training checkpoints live under results/checkpoints/, outside the declared outputs, so that
# a killed job (which Snakemake cleans up) resumes from its last checkpoint when rerun.


if PRIOR_TRAINED_HERE:

    rule pretrain_prior:
        input:
            # ancient: the shipped prior installed at DAG build stays valid although the corpus
            # folder is rendered later; a changed corpus spec reaches the job through params.
            corpus=ancient(f"results/datasets/{config['prior']['corpus']}"),
            vae_extra=vae_extra_corpus_input(),
        output:
            prior=directory(PRIOR),  # holds samples.png, a grid of weather/style prompts
        log:
            "results/logs/pretrain_prior.log",
        benchmark:
            "results/benchmarks/rules/pretrain_prior.tsv"
        conda:
            "../../envs/generation.yaml"
        threads: 2
        resources:
            mem_mb=8000,
            runtime=240,
            gpu=1,
        params:
            corpus=prior_corpus_spec(),
            vae_extra=vae_extra_argument,
            resolution=config["prior"]["resolution"],
            training=config["prior"]["training"],
            checkpoints="results/checkpoints/pretrain_prior",
        shell:
            "python -m dginstyle pretrain-prior --corpus {input.corpus} --out {output.prior}"
            " --checkpoints {params.checkpoints} --resolution {params.resolution}"
            " --vae-steps {params.training[vae_steps]} --unet-steps {params.training[unet_steps]}"
            " --batch-size {params.training[batch_size]} --vae-batch-size {params.training[vae_batch_size]}"
            " --vae-crop {params.training[vae_crop]} --vae-learning-rate {params.training[vae_learning_rate]}"
            " --learning-rate {params.training[learning_rate]} --seed {params.training[seed]}"
            " --prediction-type {params.training[prediction_type]}"
            " --checkpoint-every {params.training[checkpoint_every]}{params.vae_extra} > {log} 2>&1"


rule finetune_unet:
    input:
        unpack(prior_input),
        source=f"results/datasets/{config['source']}",
    output:
        directory("results/generator/unet_source"),
    log:
        "results/logs/finetune_unet.log",
    benchmark:
        "results/benchmarks/rules/finetune_unet.tsv"
    conda:
        "../../envs/generation.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    params:
        prior=prior_argument,
        hp=settings(config["finetune_unet"]),
        ratios=",".join(str(r) for r in config["finetune_unet"]["resize_ratios"]),
        checkpointing=(
            "--gradient-checkpointing"
            if config["finetune_unet"]["gradient_checkpointing"]
            else ""
        ),
        checkpoints="results/checkpoints/finetune_unet",
    shell:
        "python -m dginstyle finetune-unet --prior {params.prior} --source {input.source}"
        " --out {output} --checkpoints {params.checkpoints} --steps {params.hp[steps]}"
        " --learning-rate {params.hp[learning_rate]} --batch-size {params.hp[batch_size]}"
        " --gradient-accumulation {params.hp[gradient_accumulation]}"
        " --adam-beta1 {params.hp[adam_beta1]} --adam-beta2 {params.hp[adam_beta2]}"
        " --weight-decay {params.hp[weight_decay]} --adam-epsilon {params.hp[adam_epsilon]}"
        " --max-grad-norm {params.hp[max_grad_norm]} --resize-ratios {params.ratios}"
        " --crop-size {params.hp[crop_size]} --mixed-precision {params.hp[mixed_precision]}"
        " {params.checkpointing} --seed {params.hp[seed]}"
        " --checkpoint-every {params.hp[checkpoint_every]} > {log} 2>&1"


rule train_controlnet:
    input:
        unpack(prior_input),
        unet="results/generator/unet_source",
        source=f"results/datasets/{config['source']}",
    output:
        directory("results/generator/controlnet"),
    log:
        "results/logs/train_controlnet.log",
    benchmark:
        "results/benchmarks/rules/train_controlnet.tsv"
    conda:
        "../../envs/generation.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    params:
        prior=prior_argument,
        hp=settings(config["controlnet"]),
        checkpoints="results/checkpoints/train_controlnet",
    shell:
        "python -m dginstyle train-controlnet --prior {params.prior} --unet {input.unet}"
        " --source {input.source} --out {output} --checkpoints {params.checkpoints}"
        " --steps {params.hp[steps]} --learning-rate {params.hp[learning_rate]}"
        " --batch-size {params.hp[batch_size]} --gradient-accumulation {params.hp[gradient_accumulation]}"
        " --crop-size {params.hp[crop_size]} --rcs-temperature {params.hp[rcs_temperature]}"
        " --rcs-min-pixels {params.hp[rcs_min_pixels]} --validation-every {params.hp[validation_every]}"
        " --mixed-precision {params.hp[mixed_precision]} --seed {params.hp[seed]}"
        " --checkpoint-every {params.hp[checkpoint_every]} > {log} 2>&1"


rule style_swap:
    input:
        unpack(prior_input),
        unet="results/generator/unet_source",
        controlnet="results/generator/controlnet",
    output:
        directory("results/generator/generators/{variant}"),
    log:
        "results/logs/style_swap/{variant}.log",
    benchmark:
        "results/benchmarks/rules/style_swap/{variant}.tsv"
    conda:
        "../../envs/generation.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        prior=prior_argument,
    shell:
        "python -m dginstyle style-swap --prior {params.prior} --unet {input.unet}"
        " --controlnet {input.controlnet} --variant {wildcards.variant} --out {output} > {log} 2>&1"
