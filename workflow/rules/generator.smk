# The generator: prior (miniature world only), U^P -> U^S fine-tune, ControlNet, Style Swap.
# Training checkpoints live under results/checkpoints/, outside the declared outputs, so that
# a killed job (which Snakemake cleans up) resumes from its last checkpoint when rerun.


if SHIPPED_PRIOR_IN_USE:

    rule install_prior:
        output:
            prior=directory(PRIOR),
        log:
            "results/logs/install_prior.log",
        benchmark:
            "results/benchmarks/rules/install_prior.tsv"
        conda:
            "../../envs/generation.yaml"
        threads: 1
        resources:
            runtime=10,
        params:
            request=json.dumps(prior_request(), sort_keys=True),
            shipped=shipped_prior_id(),
        shell:
            "python -m dginstyle install-prior --request {params.request:q} --out {output.prior:q} > {log:q} 2>&1"

elif PRIOR_TRAINED_HERE:

    rule pretrain_prior:
        input:
            corpus=f"results/datasets/{config['prior']['corpus']}",
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
            "python -m dginstyle pretrain-prior --corpus {input.corpus:q} --out {output.prior:q}"
            " --checkpoints {params.checkpoints:q} --resolution {params.resolution:q}"
            " --vae-steps {params.training[vae_steps]:q} --unet-steps {params.training[unet_steps]:q}"
            " --batch-size {params.training[batch_size]:q} --vae-batch-size {params.training[vae_batch_size]:q}"
            " --vae-crop {params.training[vae_crop]:q} --vae-learning-rate {params.training[vae_learning_rate]:q}"
            " --learning-rate {params.training[learning_rate]:q} --seed {params.training[seed]:q}"
            " --prediction-type {params.training[prediction_type]:q}"
            " --checkpoint-every {params.training[checkpoint_every]:q}{params.vae_extra} > {log:q} 2>&1"


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
        prior_config=prior_config_option,
        hp=settings(config["finetune_unet"]),
        ratios=",".join(str(r) for r in config["finetune_unet"]["resize_ratios"]),
        checkpointing=(
            "--gradient-checkpointing"
            if config["finetune_unet"]["gradient_checkpointing"]
            else ""
        ),
        checkpoints="results/checkpoints/finetune_unet",
    shell:
        "python -m dginstyle finetune-unet --prior {params.prior:q} {params.prior_config} --source {input.source:q}"
        " --out {output:q} --checkpoints {params.checkpoints:q} --steps {params.hp[steps]:q}"
        " --learning-rate {params.hp[learning_rate]:q} --batch-size {params.hp[batch_size]:q}"
        " --gradient-accumulation {params.hp[gradient_accumulation]:q}"
        " --adam-beta1 {params.hp[adam_beta1]:q} --adam-beta2 {params.hp[adam_beta2]:q}"
        " --weight-decay {params.hp[weight_decay]:q} --adam-epsilon {params.hp[adam_epsilon]:q}"
        " --max-grad-norm {params.hp[max_grad_norm]:q} --resize-ratios {params.ratios:q}"
        " --crop-size {params.hp[crop_size]:q} --mixed-precision {params.hp[mixed_precision]:q}"
        " {params.checkpointing} --seed {params.hp[seed]:q}"
        " --checkpoint-every {params.hp[checkpoint_every]:q} > {log:q} 2>&1"


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
        prior_config=prior_config_option,
        hp=settings(config["controlnet"]),
        checkpointing=(
            "--gradient-checkpointing"
            if config["controlnet"]["gradient_checkpointing"]
            else ""
        ),
        # Its validation grids are drawn as the generated data will be: at the generation's guidance.
        guidance=config["generation"]["guidance_scale"],
        checkpoints="results/checkpoints/train_controlnet",
    shell:
        "python -m dginstyle train-controlnet --prior {params.prior:q} {params.prior_config} --unet {input.unet:q}"
        " --source {input.source:q} --out {output:q} --checkpoints {params.checkpoints:q}"
        " --steps {params.hp[steps]:q} --learning-rate {params.hp[learning_rate]:q}"
        " --batch-size {params.hp[batch_size]:q} --gradient-accumulation {params.hp[gradient_accumulation]:q}"
        " --crop-size {params.hp[crop_size]:q} --rcs-temperature {params.hp[rcs_temperature]:q}"
        " --rcs-min-pixels {params.hp[rcs_min_pixels]:q} --validation-every {params.hp[validation_every]:q}"
        " --mixed-precision {params.hp[mixed_precision]:q} --seed {params.hp[seed]:q}"
        " --guidance-scale {params.guidance:q} {params.checkpointing} --checkpoint-every {params.hp[checkpoint_every]:q} > {log:q} 2>&1"


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
        prior_config=prior_config_option,
    shell:
        "python -m dginstyle style-swap --prior {params.prior:q} {params.prior_config} --unet {input.unet:q}"
        " --controlnet {input.controlnet:q} --variant {wildcards.variant:q} --out {output:q} > {log:q} 2>&1"
