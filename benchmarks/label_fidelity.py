"""How faithfully generated images follow their condition labels, as a segmenter sees them.

    python benchmarks/label_fidelity.py --workdir DIR --judge RUN [--sets dginstyle,no_swap,...]

A judge segmenter (a finished segmentation run; best one trained with images in the prior's
styles, e.g. the `upper_bound` table's `oracle` run, so that an unfamiliar style does not read
as an unfaithful label) predicts every generated image of each set under DIR/results/generated,
and its prediction is scored against the label the image was generated from: mIoU over the
classes present, pixel accuracy, and IoU of the small classes (pole, traffic light, traffic
sign). The `oracle` set, whose images are exact renders of their labels, is the ceiling a
perfectly faithful generator reaches with this judge; the judge's own source images would be
another. Writes results/benchmarks/label_fidelity.json (in the repository).

    python benchmarks/label_fidelity.py --workdir DIR --judge RUN --sets oracle \
        --vae-round-trip DIR/results/generator/prior --scales 1,2

also scores each set's images after a round trip through the prior's VAE at each scale
(Lanczos up by the scale, encode to the posterior mean, decode, Lanczos back down): what the
codec alone costs an image decoded at crop size (a plain sample, scale 1) and at MRLF's
pass-2 size (scale 2). On the perfect generator's renders this is the part of MRLF's benefit
that comes from decoding at high resolution, whatever the UNet draws.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "results" / "benchmarks" / "label_fidelity.json"
SMALL = ("pole", "traffic light", "traffic sign")


def score_set(model, cfg, shards: list[Path]) -> dict:
    import numpy as np

    from dginstyle.labels import NUM_CLASSES
    from dginstyle.metrics import confusion_matrix, metrics_from_confusion
    from dginstyle.segmentation.datasets import generated_samples
    from dginstyle.segmentation.evaluate import iter_predictions

    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    samples = [sample for shard in shards for sample in generated_samples(shard)]
    for _, _, label, pred in iter_predictions(model, cfg, samples):
        conf += confusion_matrix(pred, label)
    pairs = len(samples)
    metrics = metrics_from_confusion(conf, num_images=pairs)

    def percent(value):
        return None if value is None else round(100 * value, 2)

    return {
        "pairs": pairs,
        "mIoU": percent(metrics["mIoU"]),
        "aAcc": percent(metrics["aAcc"]),
        "small_class_IoU": {name: percent(metrics["IoU"][name]) for name in SMALL},
        "IoU": {name: percent(value) for name, value in metrics["IoU"].items()},
    }


def vae_round_trip(vae, shards: list[Path], scale: int, out: Path) -> Path:
    """Write every image of `shards` through the VAE at `scale` into one shard folder `out`."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image

    from dginstyle.diffusion.mrlf import lanczos
    from dginstyle.io import read_rgb
    from dginstyle.segmentation.datasets import generated_samples

    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    rows = []
    for shard in shards:
        for pair_id, image_path, label_path in generated_samples(shard):
            image = np.array(read_rgb(image_path))
            height, width = image.shape[:2]
            x = torch.from_numpy(lanczos(image, (width * scale, height * scale)).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
            with torch.no_grad():
                y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            decoded = ((y[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            Image.fromarray(lanczos(decoded, (width, height))).save(out / "images" / f"{pair_id}.png")
            shutil.copyfile(label_path, out / "labels" / f"{pair_id}.png")
            rows.append(json.dumps({"id": pair_id}))
    (out / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a finished run's folder (results/generated/<set>/shard*)")
    parser.add_argument("--judge", type=Path, required=True, help="segmentation run folder that judges (relative to --workdir or absolute)")
    parser.add_argument("--sets", default=None, help="comma-separated generated sets (default: every set under results/generated)")
    parser.add_argument("--vae-round-trip", type=Path, default=None, metavar="PRIOR", help="a diffusers pipeline folder whose vae/ re-encodes each set (see above)")
    parser.add_argument("--scales", default="1,2", help="round-trip scales (with --vae-round-trip)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    import torch

    from dginstyle.parallel import default_threads
    from dginstyle.segmentation.evaluate import load_run

    torch.set_num_threads(default_threads())
    generated = args.workdir / "results" / "generated"
    names = args.sets.split(",") if args.sets else sorted(p.name for p in generated.iterdir() if p.is_dir())
    judge = args.judge if args.judge.is_absolute() else args.workdir / args.judge
    model, cfg = load_run(judge)
    vae = None
    if args.vae_round_trip:  # loaded once, as load_components loads a prior's parts (float32)
        from diffusers import AutoencoderKL

        from dginstyle.diffusion.models import _from

        vae = _from(AutoencoderKL, str(args.vae_round_trip), "vae", torch.float32).eval()
    start = time.perf_counter()
    sets = {}
    for name in names:
        shards = sorted(p for p in (generated / name).glob("shard*") if p.is_dir())
        if not shards:
            raise SystemExit(f"{generated / name}: no shards")
        sets[name] = score_set(model, cfg, shards)
        print(f"{name:>12}: mIoU {sets[name]['mIoU']:.2f}  aAcc {sets[name]['aAcc']}  small {sets[name]['small_class_IoU']}  ({sets[name]['pairs']} pairs)")
        if vae is not None:
            for scale in (int(v) for v in args.scales.split(",")):
                key = f"{name} via VAE x{scale}"
                with tempfile.TemporaryDirectory() as tmp:
                    sets[key] = score_set(model, cfg, [vae_round_trip(vae, shards, scale, Path(tmp) / "shard0")])
                print(f"{key:>12}: mIoU {sets[key]['mIoU']:.2f}  aAcc {sets[key]['aAcc']}  small {sets[key]['small_class_IoU']}")
    result = {
        "judge": str(args.judge),
        "vae_round_trip": None if args.vae_round_trip is None else {"prior": str(args.vae_round_trip), "scales": args.scales},
        "workdir": str(args.workdir),
        "what": "judge's prediction of each generated image scored against the label it was generated from (percent; mIoU over the classes present)",
        "sets": sets,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
