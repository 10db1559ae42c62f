"""Benchmark the MRLF pass-2 implementations on real miniature-world layouts.

    python benchmarks/mrlf.py [--layouts N --steps S --crop 64 --scale 2 --window 16
                               --strides 2,4 --max-batch 32 --threads T]

A tiny random generator (models.TinySpec defaults: the miniature world's widths) and crops of
a freshly rendered minicity source chosen by select_layouts (RCS, as in dataset generation).
For every stride and layout, three implementations run back to back on the same inputs and
seed (interleaved, so machine load drifts hit all three alike):
  (a) loop     per view, one ControlNet + UNet call per CFG half, as the released code;
  (b) batched  all views of a step in batched calls, CFG pair in the same batch;
  (c) skip     (b) + views wholly inside the large-region mask skipped (exact).
Reports UNet(+ControlNet) forward calls and evaluated samples (batch rows) per image, wall
time per image, speed-ups against (a), and the largest latent/image differences to (a).
Writes results/benchmarks/mrlf.json (`--spec test`: the tests' smaller widths, where per-call
overhead weighs more).

On a GPU, the paper's sizes with a random-init generator of Stable Diffusion 1.5's widths
(UNet 320/640/1280/1280 x 2 layers, CLIP-L text encoder, SD's VAE and ControlNet), fp16:

    python benchmarks/mrlf.py --spec sd15 --device cuda --dtype fp16 --crop 512 --scale 2 \
        --window 64 --strides 8,16 --steps 20 --layouts 4 --max-batch 16 --source-size 1024x512 \
        --out results/benchmarks/mrlf_sd15_gpu.json

(window 64 latent px = 512 px views on the 1024 canvas; the labels are 512 crops of a minicity
source rendered at 1024x512). Reports images per minute and names the card.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dginstyle.data import contract
from dginstyle.data.minicity import prepare_minicity
from dginstyle.diffusion import generate, models, mrlf
from dginstyle.diffusion.layouts import select_layouts
from dginstyle.io import read_label_png

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "results" / "benchmarks" / "mrlf.json"

# Generator widths. sd15: Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder
# (random init: speed does not depend on the weights).
SPECS = {
    "default": models.TinySpec,
    "test": lambda: generate.TINY_SPEC,
    "sd15": lambda: models.TinySpec(
        vae_channels=(128, 256, 512, 512), latent_channels=4, unet_channels=(320, 640, 1280, 1280),
        unet_attention_head_dim=8, layers_per_block=2, text_hidden=768, text_layers=12, text_heads=12,
        max_tokens=77, norm_groups=32,
    ),
}

VARIANTS = {
    "a_loop": dict(views="loop", skip_masked_views=False),
    "b_batched": dict(views="batched", skip_masked_views=False),
    "c_batched_skip": dict(views="batched", skip_masked_views=True),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--window", type=int, default=16, help="latent px (= crop / VAE factor: one crop per view, as 64 at 512)")
    p.add_argument("--strides", default="2,4", help="latent px; 2 and 4 at window 16 = the paper's 8 and 16 at window 64")
    p.add_argument("--area-threshold", type=int, default=None, help="default: 20000 px at 512 scaled to the crop")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--spec", choices=tuple(SPECS), default="default", help="generator widths: models.TinySpec() (the miniature world), generate.TINY_SPEC (the tests') or Stable Diffusion 1.5's (random init)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="on CUDA only; the CPU always runs float32")
    p.add_argument("--source-size", default="128x64", help="WxH the minicity source is rendered at (the crops come from it)")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    area = args.area_threshold if args.area_threshold is not None else round(20000 * (args.crop / 512) ** 2)

    device = torch.device(args.device)
    dtype = models.pick_dtype(device, {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[args.dtype])
    width, height = (int(v) for v in args.source_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = SPECS[args.spec]()
        gen = generate.tiny_generator(tmp / "gen", spec, resolution=args.crop)
        components = generate.load_generator(gen, device, dtype)
        source = tmp / "game"
        prepare_minicity(source, "game", {"train": 50}, 0, width, height, 1, None, 12)
        plan = select_layouts(source, tmp / "plan.jsonl", num_pairs=args.layouts, crop_size=args.crop, rcs_min_pixels=12, seed=0)
        labels = []
        for row in plan:
            x0, y0, x1, y1 = row["crop"]
            full = read_label_png(contract.label_path(source, row["split"], row["stem"]))
            labels.append((row, np.ascontiguousarray(full[y0:y1, x0:x1])))

    results = {}
    for stride in (int(s) for s in args.strides.split(",")):
        base = mrlf.MRLFSettings(
            scale=args.scale, steps=args.steps, window=args.window, stride=stride, area_threshold=area, max_batch=args.max_batch
        )
        acc = {name: {"seconds": [], "unet_calls": [], "unet_samples": [], "views_skipped": []} for name in VARIANTS}
        diffs = {name: {"latent": 0.0, "image": 0} for name in VARIANTS}
        views = None
        for row, label in labels:
            outputs = {}
            for name, switches in VARIANTS.items():
                stats = mrlf.SamplerStats()
                _sync(device)
                started = time.perf_counter()
                outputs[name] = mrlf.sample(components, label, row["prompt"], row["id"], replace(base, **switches), stats)
                _sync(device)
                acc[name]["seconds"].append(time.perf_counter() - started)
                acc[name]["unet_calls"].append(stats.unet_calls)
                acc[name]["unet_samples"].append(stats.unet_samples)
                acc[name]["views_skipped"].append(stats.views_skipped)
                views = stats.views
            for name in VARIANTS:
                diffs[name]["latent"] = max(diffs[name]["latent"], float((outputs[name]["z_hi"] - outputs["a_loop"]["z_hi"]).abs().max()))
                diffs[name]["image"] = max(diffs[name]["image"], int(np.abs(outputs[name]["image"].astype(int) - outputs["a_loop"]["image"].astype(int)).max()))
        t_loop = float(np.mean(acc["a_loop"]["seconds"]))
        entry = {"views_per_step": views, "variants": {}}
        for name in VARIANTS:
            t = float(np.mean(acc[name]["seconds"]))
            entry["variants"][name] = {
                "seconds_per_image": round(t, 4),
                "images_per_minute": round(60.0 / t, 2),
                "unet_calls_per_image": float(np.mean(acc[name]["unet_calls"])),
                "unet_samples_per_image": float(np.mean(acc[name]["unet_samples"])),
                "skipped_view_evaluations_per_image": float(np.mean(acc[name]["views_skipped"])),
                "speedup_vs_loop": round(t_loop / t, 2),
                "max_abs_latent_diff_vs_loop": diffs[name]["latent"],
                "max_abs_image_diff_vs_loop": diffs[name]["image"],
            }
        results[f"stride_{stride}"] = entry
        print(f"stride {stride} latent px: {views} views/step, {args.layouts} layouts, {args.steps} steps")
        for name, v in entry["variants"].items():
            print(
                f"  {name:15s} {v['seconds_per_image']:8.3f} s/image  {v['unet_calls_per_image']:7.1f} calls  "
                f"{v['unet_samples_per_image']:7.1f} samples  x{v['speedup_vs_loop']:.2f}  "
                f"dz={v['max_abs_latent_diff_vs_loop']:.1e} dimg={v['max_abs_image_diff_vs_loop']}"
            )

    report = {
        "benchmark": "mrlf",
        "settings": {
            "crop": args.crop, "scale": args.scale, "steps": args.steps, "window_latent": args.window,
            "area_threshold": area, "max_batch": args.max_batch, "layouts": args.layouts, "guidance_scale": 7.5,
            "generator": "random, " + {"default": "models.TinySpec() defaults", "test": "generate.TINY_SPEC (test widths)", "sd15": "Stable Diffusion 1.5 widths"}[args.spec],
            "vae_downsample": spec.downsample, "source_size": [width, height], "dtype": str(dtype).removeprefix("torch."),
        },
        "machine": {
            "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(), "threads": args.threads,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
