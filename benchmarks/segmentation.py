"""Segmentation speed on the machine that runs it: training iterations/s, evaluation
megapixels/s, and the share of evaluation time spent outside the network forward.

    python benchmarks/segmentation.py [--models daformer_tiny,daformer_mitb5] [--threads N]

For each model:
  train   one optimisation step (forward, loss, backward, AdamW) of the network on a random
          batch at the model's setting (tiny: batch 8 at 64x64; paper size: batch 2 at
          512x512, docs/method.md section 3); data loading left out. Best of `--repeats` after
          one warm-up step.
  eval    `evaluate_segmentation` of a prepared miniature target (tiny: 200 images of 128x64,
          window 64; paper size: 2 images of 1024x512, window 512, stride 256 as on
          Cityscapes), the weights of a one-iteration run. megapixels/s counts input pixels;
          "outside forward" is the wall time not spent in `model.inference` (reading,
          resizing, normalising, resizing logits, argmax, confusion matrix). Goal: < 20 %.
Writes results/benchmarks/segmentation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULT = REPO / "results" / "benchmarks" / "segmentation.json"

# model -> (train batch, train crop (h, w), eval images, eval image (w, h))
SETTINGS = {
    "tiny": dict(batch=8, crop=(64, 64), eval_images=200, eval_size=(128, 64)),
    "paper": dict(batch=2, crop=(512, 512), eval_images=2, eval_size=(1024, 512)),
}


def setting_of(model: str) -> dict:
    return SETTINGS["tiny" if model.endswith("_tiny") else "paper"]


def time_training_step(model_name: str, setting: dict, repeats: int) -> dict:
    import torch
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    from dginstyle.labels import NUM_CLASSES
    from dginstyle.segmentation.configs import model_config

    h, w = setting["crop"]
    model = MODELS.build(model_config(model_name, (h, w)))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((setting["batch"], 3, h, w), generator=generator)
    samples = []
    for _ in range(setting["batch"]):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, h, w), generator=generator))
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(sample)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        losses = model.loss(inputs, samples)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    best = min(times[1:])
    return {"batch": setting["batch"], "crop_hw": list(setting["crop"]), "seconds_per_iteration": round(best, 4),
            "iterations_per_second": round(1.0 / best, 3), "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def time_evaluation(model_name: str, setting: dict, tmp: Path, threads: int) -> dict:
    from dginstyle.data.prepare import prepare
    from dginstyle.segmentation import evaluate as evaluation
    from dginstyle.segmentation.train import train_segmentation

    w, h = setting["eval_size"]
    crop = setting["crop"]
    source, target, run = tmp / f"{model_name}_source", tmp / f"{model_name}_target", tmp / f"{model_name}_run"
    prepare("minicity", source, domain="game", splits="train=2", seed=0, size=f"{w}x{h}", workers=1)
    prepare("minicity", target, domain="cityscapes", splits=f"val={setting['eval_images']}", seed=1, size=f"{w}x{h}", workers=1)
    train_segmentation(source, [], run, tmp / f"{model_name}_work", model=model_name, iterations=1, batch_size=1,
                       crop_size=crop, warmup_iterations=0, threads=threads, checkpoint_interval=1, log_interval=1)

    inside = [0.0]
    original = evaluation.load_run

    def load_run_timed(*args, **kwargs):
        model, cfg = original(*args, **kwargs)
        forward = model.inference

        def timed(*a, **k):
            start = time.perf_counter()
            out = forward(*a, **k)
            inside[0] += time.perf_counter() - start
            return out

        model.inference = timed
        return model, cfg

    evaluation.load_run = load_run_timed
    try:
        result = evaluation.evaluate_segmentation(run, target, "val", tmp / f"{model_name}_metrics.json")
    finally:
        evaluation.load_run = original
    seconds = result["seconds"]
    megapixels = setting["eval_images"] * w * h / 1e6
    return {"images": setting["eval_images"], "image_wh": [w, h], "window_hw": result["inference"]["window_hw"],
            "stride_hw": result["inference"]["stride_hw"], "batch_size": result.get("batch_size"),
            "seconds": round(seconds, 3), "megapixels_per_second": round(megapixels / seconds, 4),
            "forward_seconds": round(inside[0], 3), "outside_forward_share": round(1 - inside[0] / seconds, 4)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="daformer_tiny,daformer_mitb5", help="comma-separated model names (dginstyle.segmentation.configs)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)

    import torch

    from dginstyle.compat import import_mmseg
    from dginstyle.segmentation import register_modules

    torch.set_num_threads(args.threads)
    import_mmseg()
    register_modules()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            setting = setting_of(name)
            train = time_training_step(name, setting, args.repeats)
            evaluation = time_evaluation(name, setting, Path(tmp), args.threads)
            results[name] = {"train": train, "eval": evaluation}
            print(f"{name:18s} train {train['iterations_per_second']:8.3f} it/s (batch {train['batch']}, {train['crop_hw'][0]}x{train['crop_hw'][1]})  "
                  f"eval {evaluation['megapixels_per_second']:8.3f} MP/s  outside forward {100 * evaluation['outside_forward_share']:.1f} %")
    report = {
        "benchmark": "segmentation",
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "cpus": os.cpu_count(), "threads": args.threads, "device": "cpu"},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
