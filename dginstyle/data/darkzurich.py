"""Dark Zurich: rgb_anon/val/night/<seq>/<name>_rgb_anon.png + gt/val/night/<seq>/<name>_gt_labelIds.png.

Only val is labelled; rgb_anon/train, rgb_anon/val_ref and the other gt files
(*_gt_labelColor.png, *_gt_invIds.png) exist in the download and are ignored.
"""

from __future__ import annotations

from pathlib import Path

from dginstyle.data.layouts import Pair, check_layout, pair_up, scan_suffix

FORMAT = "darkzurich"
MAPPING = "Dark Zurich gt label IDs 0..33 -> Cityscapes train IDs (cityscapesscripts table); 34..255 invalid"
IMAGE_SUFFIX = "_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelIds.png"


def lookup_table():
    from dginstyle.labels import cityscapes_id_to_train_id

    return cityscapes_id_to_train_id()


def list_pairs(root: Path, split: str = "val") -> list[Pair]:
    check_layout(FORMAT, root, [split])
    image_dir = root / "rgb_anon" / split / "night"
    label_dir = root / "gt" / split / "night"
    return pair_up(
        split,
        scan_suffix(image_dir, IMAGE_SUFFIX, recursive=True),
        scan_suffix(label_dir, LABEL_SUFFIX, recursive=True),
        expected_label=lambda img, stem: label_dir / img.parent.name / f"{stem}{LABEL_SUFFIX}",
        expected_image=lambda lbl, stem: image_dir / lbl.parent.name / f"{stem}{IMAGE_SUFFIX}",
    )
