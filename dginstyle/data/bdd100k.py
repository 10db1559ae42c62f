"""BDD100K semantic segmentation: images/10k/<split>/<name>.jpg + labels/sem_seg/masks/<split>/<name>.png.

The masks already hold Cityscapes train IDs (0..18) and 255; anything else is invalid.
"""

from __future__ import annotations

from pathlib import Path

from dginstyle.data.layouts import Pair, check_layout, pair_up, scan_suffix

FORMAT = "bdd100k"
MAPPING = "BDD100K sem_seg masks already hold train IDs 0..18 and 255 (identity); 19..254 invalid"


def lookup_table():
    from dginstyle.labels import identity_train_ids

    return identity_train_ids()


def list_pairs(root: Path, split: str) -> list[Pair]:
    check_layout(FORMAT, root, [split])
    image_dir = root / "images" / "10k" / split
    label_dir = root / "labels" / "sem_seg" / "masks" / split
    return pair_up(
        split,
        scan_suffix(image_dir, ".jpg", recursive=False),
        scan_suffix(label_dir, ".png", recursive=False),
        expected_label=lambda img, stem: label_dir / f"{stem}.png",
        expected_image=lambda lbl, stem: image_dir / f"{stem}.jpg",
    )
