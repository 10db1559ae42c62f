"""ACDC: rgb_anon/<cond>/<split>/<seq>/<name>_rgb_anon.png + gt/<cond>/<split>/<seq>/<name>_gt_labelIds.png.

Each split spans the four conditions (fog, night, rain, snow); every pair carries its
condition, which the manifest records. gt also holds *_gt_labelTrainIds.png,
*_gt_labelColor.png and *_gt_invIds.png (ignored); rgb_anon also holds *_ref splits (ignored).
"""

from __future__ import annotations

from pathlib import Path

from dginstyle.data.layouts import ACDC_CONDITIONS, Pair, check_layout, pair_up, scan_suffix

FORMAT = "acdc"
MAPPING = "ACDC gt label IDs 0..33 -> Cityscapes train IDs (cityscapesscripts table); 34..255 invalid"
IMAGE_SUFFIX = "_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelIds.png"


def lookup_table():
    from dginstyle.labels import cityscapes_id_to_train_id

    return cityscapes_id_to_train_id()


def list_pairs(root: Path, split: str) -> list[Pair]:
    check_layout(FORMAT, root, [split])
    pairs: list[Pair] = []
    for cond in ACDC_CONDITIONS:
        image_dir = root / "rgb_anon" / cond / split
        label_dir = root / "gt" / cond / split
        pairs += pair_up(
            split,
            scan_suffix(image_dir, IMAGE_SUFFIX, recursive=True),
            scan_suffix(label_dir, LABEL_SUFFIX, recursive=True),
            expected_label=lambda img, stem, d=label_dir: d / img.parent.name / f"{stem}{LABEL_SUFFIX}",
            expected_image=lambda lbl, stem, d=image_dir: d / lbl.parent.name / f"{stem}{IMAGE_SUFFIX}",
            condition=cond,
        )
    return sorted(pairs, key=lambda p: p.stem)
