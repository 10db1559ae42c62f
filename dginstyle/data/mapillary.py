"""Mapillary Vistas v1.2: {training,validation}/images/<key>.jpg + {training,validation}/labels/<key>.png.

Labels are palette PNGs of the 66 v1.2 class indices (0..65), mapped to train IDs by
`labels.mapillary_v12_to_train_id()` (docs/method.md section 4). Splits: train <- training,
val <- validation.
"""

from __future__ import annotations

from pathlib import Path

from dginstyle.data.layouts import Pair, check_layout, pair_up, scan_suffix

FORMAT = "mapillary"
MAPPING = (
    "Mapillary Vistas v1.2 class indices 0..65 -> train IDs (docs/method.md section 4: road <- 13,24,41; "
    "sidewalk <- 2,15; pole <- 45,47; rider <- 20,21,22; ...; all else 255); 66..255 invalid"
)
SPLIT_FOLDERS = {"train": "training", "val": "validation"}


def lookup_table():
    from dginstyle.labels import mapillary_v12_to_train_id

    return mapillary_v12_to_train_id()


def list_pairs(root: Path, split: str) -> list[Pair]:
    check_layout(FORMAT, root, [split])
    image_dir = root / SPLIT_FOLDERS[split] / "images"
    label_dir = root / SPLIT_FOLDERS[split] / "labels"
    return pair_up(
        split,
        scan_suffix(image_dir, ".jpg", recursive=False),
        scan_suffix(label_dir, ".png", recursive=False),
        expected_label=lambda img, stem: label_dir / f"{stem}.png",
        expected_image=lambda lbl, stem: image_dir / f"{stem}.jpg",
    )
