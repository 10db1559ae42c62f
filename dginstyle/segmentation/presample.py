"""`presample-source`: the presampled source subset of the paper's 512 setting (docs/method.md
section 3; docs/deviations.md section 3).

The authors' release trains its 512 rows (DAFormer, SegFormer, DeepLabV2) not on all 24,966
GTA5 images but on 6000 distinct ones drawn once by rare class sampling
(SegModel `tools/rcs_sample_gta.py`): p(c) = softmax((1 - f_c) / T), f_c the class's pixel share
over the source, T = 0.01; an image is a candidate of class c when it holds more than
`min_pixels` (3000) pixels of c; draw c ~ p, then a candidate of c uniformly; an image already
chosen is rejected and the draw repeated, until N images are chosen. Each image keeps the class
it was drawn for (the release writes it into the file name), which the DAFormer row's re-crop
uses during training (rcs.TaggedCropDataset).

Here the same draw, seeded (the release's is not) and without spinning: conditioned on being
accepted, a draw of the rejection loop picks the (class c, unchosen candidate i of c) pair with
probability proportional to p(c) / |candidates(c)|. So each step draws c with weight
p(c) x (unchosen candidates of c) / (candidates of c), then one of c's unchosen candidates
uniformly: the same distribution over subsets and tags as the release's loop, and it ends even
where the loop would almost never accept (every unchosen candidate belongs to classes of
vanishing probability). Classes without any candidate are left out of the softmax (as online
RCS, dginstyle.diffusion.crops.RareClassSampler; the release asserts there is none).

A source with fewer drawable distinct images (candidates of classes with p(c) > 0) than N is
refused (DataError, one line): the release's loop would never end, and taking them all would
silently change the source size and so the generated share of every run trained on it.

Output folder (the stage's marker, built in a hidden sibling and renamed when complete):
    subset.json   the settings, the source (path, name, sha256 of its manifest), the class
                  probabilities, the chosen stems in draw order each with its drawn class, and
                  the realised class histogram
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from dginstyle import __version__
from dginstyle.data import contract
from dginstyle.diffusion.crops import rcs_probabilities
from dginstyle.io import DataError, atomic_write_json, fresh_staging_dir, replace_dir, sha256_file
from dginstyle.labels import CLASSES, NUM_CLASSES

log = logging.getLogger(__name__)

STAGE = "presample-source"
SUBSET = "subset.json"
# The release's 512 setting (SegModel tools/rcs_sample_gta.py defaults, dg_dataset.py).
IMAGES = 6000
TEMPERATURE = 0.01
MIN_PIXELS = 3000


def draw_subset(stats: dict, images: int, temperature: float, min_pixels: int, seed: int, where: str = "class statistics") -> dict:
    """Draw `images` distinct images of a split's class statistics (class_stats/<split>.json)
    by rare class sampling, each tagged with the class it was drawn for (module docstring).

    Returns {"samples": [(stem, class), ...] in draw order, "probabilities": p (19,),
    "candidates": per-class candidate counts, "drawable_images": int}."""
    if images < 1:
        raise DataError(f"the subset must hold at least one image, got {images}")
    if min_pixels < 0:
        raise DataError(f"min pixels must be >= 0, got {min_pixels}")
    per_image = stats.get("image_class_pixels")
    if not per_image:
        raise DataError(f"{where}: no per-image class pixel counts (image_class_pixels)")
    stems = sorted(per_image)
    counts = np.asarray([per_image[s][:NUM_CLASSES] for s in stems], dtype=np.int64)
    totals = np.asarray(stats.get("class_pixels") or counts.sum(axis=0), dtype=np.int64)[:NUM_CLASSES]
    holds = counts > min_pixels  # (images, classes): candidate of the class
    size = holds.sum(axis=0)
    if not size.any():
        raise DataError(f"{where}: no image holds more than {min_pixels} pixels of any class; lower the min pixels")
    p = rcs_probabilities(totals, temperature, size > 0)
    drawable = holds[:, p > 0].any(axis=1)
    if int(drawable.sum()) < images:
        raise DataError(
            f"{where}: only {int(drawable.sum())} images hold more than {min_pixels} pixels of a class that can be drawn; "
            f"a subset of {images} distinct images cannot be drawn (lower the images or the min pixels)"
        )
    # Per class, its unchosen candidates; an image chosen leaves the pool of every class it holds.
    pool = [list(np.flatnonzero(holds[:, c])) for c in range(NUM_CLASSES)]
    position = [{int(i): k for k, i in enumerate(members)} for members in pool]
    rng = np.random.default_rng(int(seed))
    samples: list[tuple[str, int]] = []
    for _ in range(images):
        remaining = np.asarray([len(members) for members in pool], dtype=np.float64)
        weight = np.where(size > 0, p * remaining / np.maximum(size, 1), 0.0)
        cls = int(rng.choice(NUM_CLASSES, p=weight / weight.sum()))
        image = int(pool[cls][int(rng.integers(len(pool[cls])))])
        for c in np.flatnonzero(holds[image]):
            members, where_is = pool[c], position[c]
            k = where_is.pop(image)
            last = members.pop()
            if k < len(members):  # swap the last member into the freed place
                members[k] = last
                where_is[int(last)] = k
        samples.append((stems[image], cls))
    return {"samples": samples, "probabilities": p, "candidates": [int(n) for n in size], "drawable_images": int(drawable.sum())}


def presample_source(source: Path, out: Path, *, images: int = IMAGES, temperature: float = TEMPERATURE, min_pixels: int = MIN_PIXELS, seed: int = 0, split: str = "train") -> dict:
    """Draw the subset of a prepared source's `split` and write <out>/subset.json; returns it."""
    source, out = Path(source), Path(out)
    manifest = contract.read_manifest(source)
    stems = contract.read_split(source, split)
    stats, stats_path = contract.read_class_stats(source, split, "the subset is drawn from them")
    if sorted(stats.get("image_class_pixels") or {}) != sorted(stems):
        raise DataError(f"{stats_path}: the class statistics do not describe the images of {split}.txt; prepare the dataset again")
    drawn = draw_subset(stats, int(images), float(temperature), int(min_pixels), int(seed), str(stats_path))
    histogram = np.bincount([c for _, c in drawn["samples"]], minlength=NUM_CLASSES)
    p = drawn["probabilities"]
    subset = {
        "stage": STAGE,
        "source": str(source),
        "source_dataset": manifest.get("dataset"),
        "source_manifest_sha256": sha256_file(source / contract.MANIFEST),
        "split": split,
        "settings": {"images": int(images), "temperature": float(temperature), "min_pixels": int(min_pixels), "seed": int(seed)},
        "method": "rare class sampling without replacement (SegModel tools/rcs_sample_gta.py), seeded; each image keeps the class it was drawn for",
        "source_images": len(stems),
        "drawable_images": drawn["drawable_images"],
        "candidates_per_class": {CLASSES[c]: n for c, n in enumerate(drawn["candidates"]) if n},
        "class_probabilities": {CLASSES[c]: round(float(p[c]), 6) for c in range(NUM_CLASSES) if round(float(p[c]), 6) > 0},
        "class_histogram": {CLASSES[c]: int(n) for c, n in enumerate(histogram) if n},
        "samples": [{"stem": stem, "class": cls, "class_name": CLASSES[cls]} for stem, cls in drawn["samples"]],
        "dginstyle_version": __version__,
    }
    staging = fresh_staging_dir(out, STAGE)
    atomic_write_json(staging / SUBSET, subset)
    replace_dir(staging, out)
    log.info("%s: %d of %d images (seed %d), drawn classes %s", out, len(drawn["samples"]), len(stems), seed, subset["class_histogram"])
    return subset


def read_subset(folder: Path, source: Path | None = None, split: str = "train") -> dict:
    """A subset written by presample_source, checked (DataError, one line): when `source` is
    given, it must be the prepared dataset the subset was drawn from (same manifest)."""
    path = Path(folder) / SUBSET
    if not path.is_file():
        raise DataError(f"{folder}: not a presampled source subset (no {SUBSET}; written by `dginstyle {STAGE}`)")
    try:
        subset = json.loads(path.read_text())
        samples = [(str(s["stem"]), int(s["class"])) for s in subset["samples"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataError(f"{path}: not a subset written by `dginstyle {STAGE}` (unreadable samples)") from None
    if not samples or any(not 0 <= c < NUM_CLASSES for _, c in samples) or len({s for s, _ in samples}) != len(samples):
        raise DataError(f"{path}: the samples must be distinct stems, each with a class in 0..{NUM_CLASSES - 1}")
    if subset.get("split", split) != split:
        raise DataError(f"{path}: drawn from split {subset.get('split')!r}, not {split!r}")
    if source is not None:
        manifest = Path(source) / contract.MANIFEST
        if not manifest.is_file():
            raise DataError(f"{source}: not a prepared dataset (no {contract.MANIFEST})")
        if sha256_file(manifest) != subset.get("source_manifest_sha256"):
            raise DataError(f"{path}: drawn from another source dataset than {source} (its manifest differs); run `dginstyle {STAGE}` again")
    subset["pairs"] = samples
    return subset


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        STAGE,
        help="the release's presampled source subset: N distinct images drawn once by rare class sampling, each tagged with its class",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--source", required=True, type=Path, help="prepared source dataset (its class statistics)")
    p.add_argument("--out", required=True, type=Path, help="output folder (subset.json; replaced only when complete)")
    p.add_argument("--images", type=int, default=IMAGES, help="distinct images to draw (the release: 6000)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="RCS temperature T of p(c) = softmax((1 - f_c) / T)")
    p.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help="an image is a candidate of a class when it holds more pixels of it than this")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same subset")
    p.add_argument("--split", default="train")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    presample_source(args.source, args.out, images=args.images, temperature=args.temperature, min_pixels=args.min_pixels, seed=args.seed, split=args.split)
