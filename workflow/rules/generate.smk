# Generated data: a layout plan per generated set, then MRLF generation in shards that run in
# parallel (one job per shard: one GPU or node each on a cluster).


rule select_layouts:
    input:
        source=f"results/datasets/{config['source']}",
    output:
        "results/generated/{gen}/plan.jsonl",
    log:
        "results/logs/select_layouts/{gen}.log",
    benchmark:
        "results/benchmarks/rules/select_layouts/{gen}.tsv"
    conda:
        "../../envs/generation.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        hp=settings(config["generation"]),
        rcs_temperature=config["controlnet"]["rcs_temperature"],
        rcs_min_pixels=config["controlnet"]["rcs_min_pixels"],
        weather=weather_schedule_argument,
        sampling=layout_sampling,
    shell:
        "python -m dginstyle select-layouts --source {input.source:q} --out {output:q}"
        " --num-pairs {params.hp[num_pairs]:q} --crop-size {params.hp[crop_size]:q}"
        " --crop-tries {params.hp[crop_tries]:q} --crop-min-share {params.hp[crop_min_share]:q}"
        " --rcs-temperature {params.rcs_temperature:q} --rcs-min-pixels {params.rcs_min_pixels:q}"
        " --weather {params.weather:q} --sampling {params.sampling:q} --seed {params.hp[seed]:q}"
        " > {log:q} 2>&1"


rule generate:
    input:
        generator=generator_of,
        plan="results/generated/{gen}/plan.jsonl",
        source=f"results/datasets/{config['source']}",
    output:
        # Snakemake's report globs the folder with each pattern's wildcards: a literal name
        # matches nothing, so the one file wanted is a wildcard constrained to its name.
        report(
            directory("results/generated/{gen}/shard{shard}"),
            patterns=["{sheet,contact_sheet}.png"],
            caption="../report/generated_shard.rst",
            category="Generated data",
            subcategory="{gen}",
            labels={"set": "{gen}", "shard": "{shard}"},
        ),
    log:
        "results/logs/generate/{gen}/shard{shard}.log",
    benchmark:
        "results/benchmarks/rules/generate/{gen}/shard{shard}.tsv"
    wildcard_constraints:
        gen="|".join(DIFFUSION_SETS) or "(?!)",
    conda:
        "../../envs/generation.yaml"
    # One thread: on a GPU the network runs there (a cluster profile's set-threads gives the job
    # CPU cores for its own reasons); on a CPU the tiny models scale poorly past one thread, so
    # one-thread shards side by side make more images per second than one shard on all the cores
    # (docs/performance.md).
    threads: 1
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    params:
        hp=settings(config["generation"]),
        mode=generated_set_mode,
    shell:
        "python -m dginstyle generate --generator {input.generator:q} --plan {input.plan:q}"
        " --source {input.source:q} --shard {wildcards.shard:q} --num-shards {params.hp[shards]:q}"
        " --out {output:q} --mode {params.mode:q} --scale {params.hp[scale]:q} --steps {params.hp[steps]:q}"
        " --guidance-scale {params.hp[guidance_scale]:q} --controlnet-scale {params.hp[controlnet_scale]:q}"
        " --window {params.hp[window]:q} --stride {params.hp[stride]:q}"
        " --area-threshold {params.hp[area_threshold]:q} --fusion-timestep {params.hp[fusion_timestep]:q}"
        " --timestep-spacing {params.hp[timestep_spacing]:q}"
        " --max-batch {params.hp[max_batch]:q} > {log:q} 2>&1"


# An upper bound, not the method (dginstyle/diffusion/oracle.py): the plan's crops as a perfect
# generator would return them, with the swap (the scenes re-rendered in the prior's styles by
# the miniature world) or without it (the source crops themselves). Seconds per shard.
rule render_oracle:
    input:
        plan="results/generated/{gen}/plan.jsonl",
        source=f"results/datasets/{config['source']}",
    output:
        # Snakemake's report globs the folder with each pattern's wildcards: a literal name
        # matches nothing, so the one file wanted is a wildcard constrained to its name.
        report(
            directory("results/generated/{gen}/shard{shard}"),
            patterns=["{sheet,contact_sheet}.png"],
            caption="../report/generated_shard.rst",
            category="Generated data",
            subcategory="{gen}",
            labels={"set": "{gen}", "shard": "{shard}"},
        ),
    log:
        "results/logs/render_oracle/{gen}/shard{shard}.log",
    benchmark:
        "results/benchmarks/rules/render_oracle/{gen}/shard{shard}.tsv"
    wildcard_constraints:
        gen="|".join(ORACLE_SETS) or "(?!)",
    conda:
        "../../envs/generation.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        shards=config["generation"]["shards"],
        look=oracle_look,
    shell:
        "python -m dginstyle render-oracle --plan {input.plan:q} --source {input.source:q}"
        " --shard {wildcards.shard:q} --num-shards {params.shards:q} --look {params.look:q}"
        " --out {output:q} > {log:q} 2>&1"


rule style_swap_figure:
    input:
        swapped="results/generator/generators/plain",
        unswapped="results/generator/generators/no_swap",
        plan=f"results/generated/{GENERATED_SETS[0]}/plan.jsonl",
        source=f"results/datasets/{config['source']}",
    output:
        figure=report(
            "results/figures/style_swap.png",
            caption="../report/style_swap.rst",
            category="Generator",
        ),
        numbers="results/figures/style_swap.json",
    log:
        "results/logs/style_swap_figure.log",
    benchmark:
        "results/benchmarks/rules/style_swap_figure.tsv"
    conda:
        "../../envs/generation.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    params:
        steps=config["generation"]["steps"],
        guidance=config["generation"]["guidance_scale"],
        controlnet_scale=config["generation"]["controlnet_scale"],
        spacing=config["generation"]["timestep_spacing"],
    shell:
        "python -m dginstyle style-swap-figure --swapped {input.swapped:q} --unswapped {input.unswapped:q}"
        " --plan {input.plan:q} --source {input.source:q} --out {output.figure:q} --count 4"
        " --steps {params.steps:q} --guidance-scale {params.guidance:q} --controlnet-scale {params.controlnet_scale:q}"
        " --timestep-spacing {params.spacing:q}"
        " --numbers {output.numbers:q} > {log:q} 2>&1"
