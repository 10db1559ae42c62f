"""Cityscapes: leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png + gtFine/<split>/<city>/<stem>_gtFine_labelIds.png.

The gtFine folders also hold *_color.png, *_instanceIds.png and *_polygons.json: ignored.
Stem = <city>_<seq>_<frame>, e.g. aachen_000000_000019.
"""

from __future__ import annotations

from pathlib import Path

from dginstyle.data.layouts import Pair, check_layout, pair_up, scan_suffix

FORMAT = "cityscapes"
MAPPING = "Cityscapes gtFine label IDs 0..33 -> train IDs (cityscapesscripts table); 34..255 invalid"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def lookup_table():
    from dginstyle.labels import cityscapes_id_to_train_id

    return cityscapes_id_to_train_id()


def list_pairs(root: Path, split: str) -> list[Pair]:
    check_layout(FORMAT, root, [split])
    image_dir = root / "leftImg8bit" / split
    label_dir = root / "gtFine" / split
    return pair_up(
        split,
        scan_suffix(image_dir, IMAGE_SUFFIX, recursive=True),
        scan_suffix(label_dir, LABEL_SUFFIX, recursive=True),
        expected_label=lambda img, stem: label_dir / img.parent.name / f"{stem}{LABEL_SUFFIX}",
        expected_image=lambda lbl, stem: image_dir / lbl.parent.name / f"{stem}{IMAGE_SUFFIX}",
    )
