"""mmseg dataset classes reading our prepared-dataset contract and our generated shards.

Registered in mmseg's DATASETS:
- `PreparedSegDataset(dataset_dir, split, subset=None)`: images/<split>/<stem>.<ext> +
  labels/<split>/<stem>.png for every stem of <split>.txt (dginstyle.data.contract); with
  `subset` (a folder written by `dginstyle presample-source`), only the subset's stems, in its
  order, each sample's info carrying the class it was drawn for (`tagged_class`).
- `GeneratedSegDataset(shards)`: for each shard folder, images/<id>.png + labels/<id>.png for
  every row of pairs.jsonl.
Both: the 19 Cityscapes train classes and palette, labels already in train IDs
(reduce_zero_label False, no label map), 255 = ignore. Each sample's info carries `origin`
("source" / "generated") besides img_path and seg_map_path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dginstyle.compat import import_mmseg

import_mmseg(init_default_scope=False)

from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402

from dginstyle.data.contract import IMAGE_SUFFIXES, image_dir, label_path, read_manifest, read_split  # noqa: E402
from dginstyle.io import DataError  # noqa: E402
from dginstyle.labels import CLASSES, IGNORE, NUM_CLASSES, PALETTE  # noqa: E402

METAINFO = dict(classes=tuple(CLASSES), palette=[[int(v) for v in PALETTE[c]] for c in range(NUM_CLASSES)])


def _info(img: Path, label: Path, origin: str) -> dict:
    return dict(
        img_path=str(img),
        seg_map_path=str(label),
        label_map=None,
        reduce_zero_label=False,
        seg_fields=[],
        origin=origin,
    )


def prepared_samples(dataset_dir: str | os.PathLike, split: str) -> list[tuple[str, Path, Path]]:
    """(stem, image, label) for every stem of a prepared split; DataError on anything missing."""
    root = Path(dataset_dir)
    read_manifest(root)
    stems = read_split(root, split)
    folder = image_dir(root, split)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder of split {split!r} not found")
    by_stem: dict[str, Path] = {}
    for entry in os.scandir(folder):
        path = Path(entry.path)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, path)
    samples = []
    for stem in stems:
        img = by_stem.get(stem)
        label = label_path(root, split, stem)
        if img is None:
            raise DataError(f"{folder / stem}.*: image of {split}/{stem} not found")
        if not label.is_file():
            raise DataError(f"{label}: label of {split}/{stem} not found")
        samples.append((stem, img, label))
    return samples


def generated_samples(shard: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(id, image, label) for every row of <shard>/pairs.jsonl; DataError on anything missing."""
    shard = Path(shard)
    pairs = shard / "pairs.jsonl"
    if not pairs.is_file():
        raise DataError(f"{shard}: not a generated shard (no pairs.jsonl)")
    samples = []
    for number, line in enumerate(pairs.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            pair_id = str(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{pairs}:{number}: not a JSON object with an 'id'") from None
        img = shard / "images" / f"{pair_id}.png"
        label = shard / "labels" / f"{pair_id}.png"
        for path in (img, label):
            if not path.is_file():
                raise DataError(f"{path}: listed in {pairs} but missing")
        samples.append((pair_id, img, label))
    return samples


@DATASETS.register_module()
class PreparedSegDataset(BaseSegDataset):
    """One split of a prepared dataset (dginstyle.data.contract), labels in train IDs."""

    METAINFO = METAINFO

    def __init__(self, dataset_dir: str, split: str, subset: str | None = None, **kwargs):
        self.dataset_dir = str(dataset_dir)
        self.split = split
        self.subset = None if subset is None else str(subset)
        kwargs.setdefault("img_suffix", ".png")
        kwargs.setdefault("seg_map_suffix", ".png")
        kwargs["reduce_zero_label"] = False
        kwargs["ignore_index"] = IGNORE
        kwargs.setdefault("data_root", None)
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict]:
        samples = prepared_samples(self.dataset_dir, self.split)
        if not samples:
            raise DataError(f"{self.dataset_dir}: split {self.split!r} is empty")
        if self.subset is None:
            return [_info(img, label, "source") for _, img, label in samples]
        from dginstyle.segmentation.presample import read_subset

        by_stem = {stem: (img, label) for stem, img, label in samples}
        pairs = read_subset(self.subset, self.dataset_dir, self.split)["pairs"]
        missing = [stem for stem, _ in pairs if stem not in by_stem]
        if missing:
            raise DataError(f"{self.subset}: subset image {missing[0]!r} is not in split {self.split!r} of {self.dataset_dir}")
        return [dict(_info(*by_stem[stem], "source"), tagged_class=cls) for stem, cls in pairs]


@DATASETS.register_module()
class GeneratedSegDataset(BaseSegDataset):
    """The pairs of one or more generated shards (images/<id>.png, labels/<id>.png, pairs.jsonl)."""

    METAINFO = METAINFO

    def __init__(self, shards: list[str], **kwargs):
        if isinstance(shards, (str, os.PathLike)):
            shards = [shards]
        self.shards = [str(s) for s in shards]
        kwargs["reduce_zero_label"] = False
        kwargs["ignore_index"] = IGNORE
        kwargs.setdefault("data_root", None)
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict]:
        data = [_info(img, label, "generated") for shard in self.shards for _, img, label in generated_samples(shard)]
        if not data:
            raise DataError(f"generated shards {self.shards}: no pairs")
        return data
