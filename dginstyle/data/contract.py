"""The prepared-dataset contract every later stage reads.

    <out>/labels/<split>/<stem>.png     uint8 Cityscapes train IDs, 255 = ignore
    <out>/images/<split>/<stem>.<ext>   a symlink to the original image (or, for the
                                        miniature world, the rendered PNG itself)
    <out>/<split>.txt                   the stems of the split, sorted, one per line
    <out>/class_stats/<split>.json      per-image class pixel counts and, per class, the
                                        images holding more than `min_pixels` of it (RCS)
    <out>/conditions.json               {split: {stem: condition}} where samples carry one
                                        (ACDC's fog/night/rain/snow, the miniature world's weather)
    <out>/captions.jsonl                only for an unlabelled caption corpus (the prior)
    <out>/manifest.json                 dataset, split counts, source root, mapping used,
                                        sha256 of every written label file

A dataset is built in a hidden staging folder and renamed to <out> only when complete, so a
half-written <out> never exists. Workers call `write_label` / `link_image` / `write_image`
on the staging folder in parallel; the parent then calls `finalize` with their records.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dginstyle import __version__
from dginstyle.io import (
    DataError,
    atomic_write_json,
    atomic_write_text,
    encode_label_png,
    encode_rgb_png,
    fresh_staging_dir,
    replace_dir,
    sha256_bytes,
    write_bytes,
)
from dginstyle.labels import CLASSES, IGNORE, NUM_CLASSES

MANIFEST = "manifest.json"
DEFAULT_RCS_MIN_PIXELS = 3000  # docs/method.md 1.2/1.5: an image must hold > 3000 px of the class


@dataclass
class Record:
    """What a worker reports about one written sample."""

    split: str
    stem: str
    label_sha256: str | None = None
    class_pixels: list[int] | None = None  # 19 train classes + ignore (index 19)
    size: tuple[int, int] | None = None  # (height, width)
    extra: dict = field(default_factory=dict)  # {"condition": ...}; {"caption": ...} for the prior corpus


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def label_path(root: Path, split: str, stem: str) -> Path:
    return root / "labels" / split / f"{stem}.png"


def image_dir(root: Path, split: str) -> Path:
    return root / "images" / split


def find_image(root: Path, split: str, stem: str) -> Path:
    """The image of a sample, whatever its extension (PNG, or a linked JPEG original)."""
    folder = image_dir(Path(root), split)
    hits = sorted(p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not hits:
        raise DataError(f"{folder}: no image for sample {stem!r}")
    return hits[0]


def class_pixel_counts(label: np.ndarray) -> list[int]:
    """Pixels per train class (19) plus the ignore count, in one bincount over the image."""
    counts = np.bincount(label.ravel(), minlength=256)
    return [int(c) for c in counts[:NUM_CLASSES]] + [int(counts[IGNORE])]


def write_label(staging: Path, split: str, stem: str, label: np.ndarray, class_pixels: list[int] | None = None) -> Record:
    """Encode and write one train-ID map; return its checksum and class pixel counts.

    `class_pixels` may be passed when the caller already has them (prepare derives them from
    the raw label's histogram, saving a second pass over the image).
    """
    data = encode_label_png(label)
    path = label_path(staging, split, stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)  # the staging folder as a whole is what is atomic
    counts = class_pixel_counts(label) if class_pixels is None else class_pixels
    return Record(split, stem, sha256_bytes(data), counts, tuple(label.shape))


def link_image(staging: Path, split: str, stem: str, original: Path) -> None:
    """Link the original image (absolute path) as images/<split>/<stem><ext>."""
    folder = image_dir(staging, split)
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink(Path(original).resolve(), folder / f"{stem}{Path(original).suffix.lower()}")


def write_image(staging: Path, split: str, stem: str, rgb: np.ndarray) -> None:
    """Write a rendered (H, W, 3) uint8 image as images/<split>/<stem>.png."""
    folder = image_dir(staging, split)
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes(folder / f"{stem}.png", encode_rgb_png(rgb))


def class_stats(records: list[Record], min_pixels: int) -> dict:
    """Rare-class-sampling statistics of one split (docs/method.md section 2)."""
    per_image = {r.stem: r.class_pixels[:NUM_CLASSES] for r in records}
    totals = np.zeros(NUM_CLASSES, dtype=np.int64)
    for counts in per_image.values():
        totals += np.asarray(counts, dtype=np.int64)
    images_by_class = {
        name: sorted(stem for stem, counts in per_image.items() if counts[c] > min_pixels)
        for c, name in enumerate(CLASSES)
    }
    return {
        "classes": list(CLASSES),
        "min_pixels": min_pixels,
        "class_pixels": [int(t) for t in totals],
        "image_class_pixels": per_image,
        "images_by_class": images_by_class,
    }


def finalize(
    staging: Path,
    out: Path,
    records: list[Record],
    manifest: dict,
    rcs_min_pixels: int = DEFAULT_RCS_MIN_PIXELS,
) -> dict:
    """Write split lists, class statistics and the manifest, then move staging -> out."""
    splits: dict[str, list[Record]] = {}
    for record in records:
        splits.setdefault(record.split, []).append(record)
    seen: dict[tuple[str, str], Record] = {}
    for record in records:
        key = (record.split, record.stem)
        if key in seen:
            raise DataError(f"two samples share the name {record.stem!r} in split {record.split!r}: stems must be unique within a split")
        seen[key] = record

    labelled = all(r.label_sha256 is not None for r in records)
    for split, split_records in splits.items():
        split_records.sort(key=lambda r: r.stem)
        atomic_write_text(staging / f"{split}.txt", "".join(f"{r.stem}\n" for r in split_records))
        if labelled:
            atomic_write_json(staging / "class_stats" / f"{split}.json", class_stats(split_records, rcs_min_pixels))
    conditions: dict[str, dict[str, str]] = {}
    for record in sorted(records, key=lambda r: (r.split, r.stem)):
        if record.extra.get("condition"):
            conditions.setdefault(record.split, {})[record.stem] = record.extra["condition"]
    if conditions:
        atomic_write_json(staging / "conditions.json", conditions)
        manifest = {**manifest, "conditions": {split: dict(sorted(Counter(c.values()).items())) for split, c in conditions.items()}}
    captions = [dict(split=r.split, stem=r.stem, **r.extra) for r in sorted(records, key=lambda r: (r.split, r.stem)) if "caption" in r.extra]
    if captions:
        atomic_write_text(staging / "captions.jsonl", "".join(json.dumps(c) + "\n" for c in captions))

    manifest = {
        **manifest,
        "labelled": labelled,
        "splits": {split: len(rs) for split, rs in sorted(splits.items())},
        "label_format": "uint8 Cityscapes train IDs, 255 = ignore" if labelled else None,
        "dginstyle_version": __version__,
        "label_sha256": {f"{r.split}/{r.stem}": r.label_sha256 for r in sorted(records, key=lambda r: (r.split, r.stem))} if labelled else {},
    }
    # The manifest is written last inside the staging folder: a folder without one is never complete.
    atomic_write_json(staging / MANIFEST, manifest)
    replace_dir(staging, out)
    return manifest


def start(out: Path) -> Path:
    """Begin building the dataset that will live at `out`; returns the staging folder."""
    return fresh_staging_dir(Path(out), "prepare")


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{root}: not a prepared dataset (no {MANIFEST}); run `dginstyle prepare` first")
    return json.loads(path.read_text())


def read_class_stats(root: Path, split: str, needed_for: str) -> tuple[dict, Path]:
    """(class_stats/<split>.json of a prepared dataset, its path); `needed_for` ends the one-line
    error when the file is missing ("rare class sampling needs them")."""
    path = Path(root) / "class_stats" / f"{split}.json"
    if not path.is_file():
        raise DataError(f"{path}: class statistics not found (written by `dginstyle prepare`); {needed_for}")
    try:
        return json.loads(path.read_text()), path
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg})") from None


def read_split(root: Path, split: str) -> list[str]:
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{root}: no split {split!r} (missing {path.name})")
    return [line for line in path.read_text().splitlines() if line]
