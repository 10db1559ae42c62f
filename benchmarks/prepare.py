"""Benchmark `dginstyle prepare` against its floor: decoding and re-encoding the same labels.

    python benchmarks/prepare.py [--images N --width W --height H --workers K --repeats R]

Builds a synthetic Cityscapes-layout tree in a temporary folder: label maps with blocky,
street-scene-like content (sky, buildings, road, sidewalk, cars, people, poles, signs as
jagged polygons, so they compress like real gtFine labels rather than like noise) and RGB
PNG images of the right size (flat by default: images are never decoded, only their header
read and chunk CRCs verified; `--image-content photo` makes them about as large as real
Cityscapes PNGs, which makes `verify()` read realistic amounts of data).

Times (best of `--repeats`, page cache warm):
  prepare  the whole `prepare` of that tree (listing, image checks, label conversion,
           symlinks, class statistics, manifest), `--workers` processes;
  floor    `io.read_label_png` + `io.encode_label_png` of every label, nothing else, with
           the same worker count, the same chunking and the same process pool.
Prints images/s of both and their ratio, and writes results/benchmarks/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dginstyle.data.prepare import chunked, parallel_map, prepare
from dginstyle.io import encode_label_png, read_label_png

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "results" / "benchmarks" / "prepare.json"

# Cityscapes label IDs used by the generator
SKY, BUILDING, ROAD, SIDEWALK, VEGETATION, CAR, PERSON, POLE, SIGN, LIGHT, EGO, UNLABELED = 23, 11, 7, 8, 21, 26, 24, 17, 20, 19, 1, 0


def _jagged(rng, cx, cy, rx, ry, n=12):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.6, 1.0, n)
    return [(float(cx + rx * r * np.cos(a)), float(cy + ry * r * np.sin(a))) for a, r in zip(angles, radii)]


def street_label(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A street-scene-like label map of Cityscapes label IDs."""
    img = Image.new("L", (width, height), SKY)
    draw = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.35, 0.5))
    # buildings: a skyline of rectangles with jagged tops
    x = 0
    while x < width:
        w = int(rng.integers(width // 30, width // 8))
        top = int(rng.integers(height // 20, horizon))
        draw.polygon([(x, horizon), (x, top), (x + w // 2, top + rng.integers(-20, 20)), (x + w, top), (x + w, horizon)], fill=int(rng.choice([BUILDING, BUILDING, VEGETATION, 12])))
        x += w
    # road and sidewalks in perspective
    draw.rectangle([0, horizon, width, height], fill=ROAD)
    vx = width * rng.uniform(0.4, 0.6)
    draw.polygon([(0, horizon + 5), (vx - 40, horizon), (width * 0.15, height), (0, height)], fill=SIDEWALK)
    draw.polygon([(width, horizon + 5), (vx + 40, horizon), (width * 0.85, height), (width, height)], fill=SIDEWALK)
    # trees, cars, people, poles, signs, lights
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0, width), rng.uniform(horizon * 0.3, horizon)
        draw.polygon(_jagged(rng, cx, cy, width * rng.uniform(0.03, 0.1), height * rng.uniform(0.05, 0.15), 40), fill=VEGETATION)
    for _ in range(int(rng.integers(4, 14))):
        cy = rng.uniform(horizon, height * 0.9)
        scale = (cy - horizon) / (height - horizon) + 0.2
        cx = rng.uniform(0, width)
        draw.polygon(_jagged(rng, cx, cy, 120 * scale * width / 2048, 60 * scale * height / 1024, 16), fill=CAR)
    for _ in range(int(rng.integers(2, 10))):
        cx, cy = rng.uniform(0, width), rng.uniform(horizon, height * 0.8)
        draw.polygon(_jagged(rng, cx, cy, 12 * width / 2048, 45 * height / 1024, 10), fill=PERSON)
    for _ in range(int(rng.integers(3, 10))):
        px = rng.uniform(0, width)
        top = rng.uniform(horizon * 0.3, horizon)
        draw.rectangle([px, top, px + max(2, 6 * width / 2048), horizon + rng.uniform(0, height * 0.2)], fill=POLE)
        draw.rectangle([px - 10, top - 25, px + 15, top], fill=int(rng.choice([SIGN, LIGHT])))
    # ego vehicle at the bottom, unlabeled borders
    draw.polygon(_jagged(rng, width / 2, height * 1.02, width * 0.6, height * 0.12, 30), fill=EGO)
    draw.rectangle([0, 0, width, 2], fill=UNLABELED)
    return np.asarray(img)


def build_tree(root: Path, images: int, width: int, height: int, content: str, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    cities = ("aachen", "bochum", "bremen", "cologne")
    labels, originals = [], []
    if content == "photo":
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    for i in range(images):
        split = "train" if i % 5 else "val"
        city = cities[i % len(cities)]
        stem = f"{city}_{i:06d}_000019"
        image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        label = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(street_label(rng, width, height), "L").save(label, format="PNG")
        if content == "photo":
            if i < 8:  # a few distinct ones, then copies: building the tree must stay quick
                noise = rng.integers(0, 48, (height, width, 3), dtype=np.uint8)
                Image.fromarray(base + noise, "RGB").save(image, format="PNG", compress_level=6)
                originals.append(image)
            else:
                shutil.copyfile(originals[i % 8], image)
        else:
            Image.new("RGB", (width, height), (90, 100, 110)).save(image, format="PNG")
        labels.append(label)
    return labels


def _floor_chunk(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        total += len(encode_label_png(read_label_png(path)))
    return total


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def floor(labels: list[Path], workers: int) -> tuple[float, float]:
    """(wall s, CPU s) of decoding and re-encoding every label."""
    start, cpu = time.perf_counter(), _cpu()
    for _ in parallel_map(_floor_chunk, chunked(labels, workers), workers):
        pass
    return time.perf_counter() - start, _cpu() - cpu


def run_prepare(root: Path, out: Path, workers: int) -> tuple[float, float]:
    start, cpu = time.perf_counter(), _cpu()
    prepare("cityscapes", out, root=root, workers=workers)
    return time.perf_counter() - start, _cpu() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-content", choices=("flat", "photo"), default="flat")
    parser.add_argument("--out", type=Path, default=RESULT, help="result JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dginstyle-bench-") as tmp:
        root = Path(tmp) / "cityscapes"
        t0 = time.perf_counter()
        labels = build_tree(root, args.images, args.width, args.height, args.image_content)
        build_s = time.perf_counter() - t0
        label_bytes = sum(p.stat().st_size for p in labels)
        image_bytes = sum(p.stat().st_size for p in root.joinpath("leftImg8bit").rglob("*.png"))
        print(f"tree: {args.images} pairs of {args.width}x{args.height} built in {build_s:.1f} s; "
              f"labels {label_bytes / len(labels) / 1e3:.1f} kB avg, images {image_bytes / len(labels) / 1e3:.1f} kB avg", flush=True)
        # warm the page cache and the code paths once
        floor(labels, args.workers)
        prepare_s, floor_s, prepare_cpu, floor_cpu = [], [], [], []
        for r in range(args.repeats):  # interleaved, so that load from elsewhere hits both alike
            wall, cpu = floor(labels, args.workers)
            floor_s.append(wall)
            floor_cpu.append(cpu)
            wall, cpu = run_prepare(root, Path(tmp) / "out", args.workers)
            prepare_s.append(wall)
            prepare_cpu.append(cpu)
            print(f"repeat {r + 1}: prepare {prepare_s[-1]:.2f} s wall {prepare_cpu[-1]:.2f} s CPU, "
                  f"floor {floor_s[-1]:.2f} s wall {floor_cpu[-1]:.2f} s CPU", flush=True)

    best_prepare, best_floor = min(prepare_s), min(floor_s)
    result = {
        "benchmark": "prepare (cityscapes layout) vs floor (decode + re-encode the labels)",
        "parameters": {
            "images": args.images,
            "width": args.width,
            "height": args.height,
            "workers": args.workers,
            "repeats": args.repeats,
            "image_content": args.image_content,
            "label_kB_avg": round(label_bytes / len(labels) / 1e3, 1),
            "image_kB_avg": round(image_bytes / len(labels) / 1e3, 1),
        },
        "prepare_s": [round(s, 3) for s in prepare_s],
        "floor_s": [round(s, 3) for s in floor_s],
        "prepare_cpu_s": [round(s, 3) for s in prepare_cpu],
        "floor_cpu_s": [round(s, 3) for s in floor_cpu],
        "ratio_cpu_prepare_over_floor": round(min(prepare_cpu) / min(floor_cpu), 3),
        "note": "wall figures are the best of the repeats; on a shared machine wall time is noisy, CPU time "
        "(this process plus the pool's workers) is the steadier comparison",
        "prepare_images_per_s": round(args.images / best_prepare, 1),
        "floor_images_per_s": round(args.images / best_floor, 1),
        "ratio_prepare_over_floor": round(best_prepare / best_floor, 3),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": sys.version.split()[0],
        },
    }
    print(f"prepare: {result['prepare_images_per_s']} images/s   floor: {result['floor_images_per_s']} images/s   "
          f"ratio (time prepare / time floor): {result['ratio_prepare_over_floor']} wall, "
          f"{result['ratio_cpu_prepare_over_floor']} CPU")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
