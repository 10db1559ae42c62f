"""GTA5 (Playing for Data): images/<5-digit>.png + labels/<5-digit>.png, one split "train".

Labels are palette PNGs whose indices are Cityscapes label IDs (0..33); the Cityscapes table
maps them to train IDs. Stdlib at import time (the lookup table is built on demand).
"""

from __future__ import annotations

from pathlib import Path

from dginstyle.data.layouts import Pair, check_layout, pair_up, scan_suffix

FORMAT = "gta5"
MAPPING = "GTA5 palette indices are Cityscapes label IDs 0..33 -> Cityscapes train IDs (cityscapesscripts table); 34..255 invalid"


def lookup_table():
    from dginstyle.labels import cityscapes_id_to_train_id

    return cityscapes_id_to_train_id()


def list_pairs(root: Path, split: str = "train") -> list[Pair]:
    check_layout(FORMAT, root, [split])
    images = {s: p for s, p in scan_suffix(root / "images", ".png", recursive=False).items() if s.isdigit()}
    labels = {s: p for s, p in scan_suffix(root / "labels", ".png", recursive=False).items() if s.isdigit()}
    return pair_up(
        split,
        images,
        labels,
        expected_label=lambda img, stem: root / "labels" / f"{stem}.png",
        expected_image=lambda lbl, stem: root / "images" / f"{stem}.png",
    )
