"""Small fake dataset trees in each official download layout, for tests.

`make_tree(fmt, root, count=3)` writes `count` tiny image/label pairs per labelled split
(12x8 px by default) with random label values from the dataset's real raw ID set (or
`label_values`), plus the sibling files of the real download that a reader must ignore
(`extras`). It returns a `FakeTree` whose samples carry the raw label arrays, so a test can
compute its own expectations. `names_only=True` only creates the folders and empty files
(fast: tens of thousands of files in a few seconds) for DAG dry runs against real-size trees.

Fault helpers (`truncate`, `corrupt_png_crc`, `write_label_png`, `write_image`) let a test
damage a tree after building it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
DEFAULT_SPLITS = {
    "gta5": ("train",),
    "cityscapes": ("train", "val"),
    "bdd100k": ("train", "val"),
    "mapillary": ("train", "val"),
    "acdc": ("train", "val"),
    "darkzurich": ("val",),
}
# The raw label values each dataset really uses.
ID_SETS = {
    "gta5": tuple(range(34)),
    "cityscapes": tuple(range(34)),
    "acdc": tuple(range(34)),
    "darkzurich": tuple(range(34)),
    "bdd100k": tuple(range(19)) + (255,),
    "mapillary": tuple(range(66)),
}
PALETTE_LABELS = {"gta5", "mapillary"}  # labels stored as palette ('P') PNGs
JPEG_IMAGES = {"bdd100k", "mapillary"}
CITIES = ("aachen", "bochum", "zurich")


@dataclass
class FakeSample:
    split: str
    stem: str
    image: Path
    label: Path
    raw: np.ndarray | None = None  # the raw label IDs written (None in names_only mode)
    condition: str | None = None


@dataclass
class FakeTree:
    fmt: str
    root: Path
    samples: list[FakeSample] = field(default_factory=list)

    def split(self, name: str) -> list[FakeSample]:
        return sorted((s for s in self.samples if s.split == name), key=lambda s: s.stem)

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.samples})


# ------------------------------------------------------------------------------ paths


def pair_paths(fmt: str, root: Path, split: str, stem: str, group: str | None = None) -> tuple[Path, Path]:
    """(image, label) paths of a sample in the official layout; `group` is the city, the
    ACDC `condition/sequence` or the Dark Zurich sequence."""
    root = Path(root)
    if fmt == "gta5":
        return root / "images" / f"{stem}.png", root / "labels" / f"{stem}.png"
    if fmt == "cityscapes":
        city = group or stem.split("_")[0]
        return (
            root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
        )
    if fmt == "bdd100k":
        return root / "images" / "10k" / split / f"{stem}.jpg", root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png"
    if fmt == "mapillary":
        folder = {"train": "training", "val": "validation"}[split]
        return root / folder / "images" / f"{stem}.jpg", root / folder / "labels" / f"{stem}.png"
    if fmt == "acdc":
        condition, seq = (group or f"fog/{stem.split('_')[0]}").split("/")
        return (
            root / "rgb_anon" / condition / split / seq / f"{stem}_rgb_anon.png",
            root / "gt" / condition / split / seq / f"{stem}_gt_labelIds.png",
        )
    if fmt == "darkzurich":
        seq = group or stem.split("_")[0]
        return (
            root / "rgb_anon" / split / "night" / seq / f"{stem}_rgb_anon.png",
            root / "gt" / split / "night" / seq / f"{stem}_gt_labelIds.png",
        )
    raise ValueError(f"unknown format {fmt!r}")


_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _stems(fmt: str, split: str, count: int, rng: np.random.Generator) -> list[tuple[str, str | None]]:
    """(stem, group) of each sample in a split, in the dataset's naming scheme."""
    offset = {"train": 0, "val": 500_000}.get(split, 900_000)
    out: list[tuple[str, str | None]] = []
    for i in range(count):
        if fmt == "gta5":
            out.append((f"{i + 1:05d}", None))
        elif fmt == "cityscapes":
            city = CITIES[i % len(CITIES)] if split == "train" else ("frankfurt", "lindau")[i % 2]
            out.append((f"{city}_{i:06d}_{19 + i % 7:06d}", city))
        elif fmt == "bdd100k":
            n = offset + i
            out.append((f"{(n * 2654435761) % 2**32:08x}-{n:08x}", None))
        elif fmt == "mapillary":
            out.append(("".join(rng.choice(list(_KEY_CHARS), 22)) + f"{offset + i}", None))
        elif fmt == "acdc":
            condition = ACDC_CONDITIONS[i % 4]
            seq = f"GOPR{475 + 10 * ACDC_CONDITIONS.index(condition) + (offset // 500_000):04d}"
            out.append((f"{seq}_frame_{i:06d}", f"{condition}/{seq}"))
        elif fmt == "darkzurich":
            seq = ("GOPR0356", "GOPR0357")[i % 2]
            out.append((f"{seq}_frame_{i:06d}", seq))
        else:
            raise ValueError(f"unknown format {fmt!r}")
    return out


# ------------------------------------------------------------------------------ file writers


def write_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    """A small random RGB image, JPEG or PNG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(pixels, "RGB").save(path, format="JPEG", quality=90)
    else:
        Image.fromarray(pixels, "RGB").save(path, format="PNG")


def write_label_png(path: Path, raw: np.ndarray, palette: bool = False) -> None:
    """Raw label IDs as a greyscale PNG, or as a palette PNG whose indices are the IDs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if palette:
        img = Image.frombytes("P", (raw.shape[1], raw.shape[0]), raw.tobytes())
        colours = np.random.default_rng(7).integers(0, 256, (256, 3), dtype=np.uint8)
        img.putpalette(colours.ravel().tolist())
        img.save(path, format="PNG")
    else:
        Image.fromarray(raw, "L").save(path, format="PNG")


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cut a file to `keep` of its length."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])


def corrupt_png_crc(path: Path) -> None:
    """Flip one byte inside the first IDAT chunk's data (its CRC no longer matches)."""
    data = bytearray(Path(path).read_bytes())
    pos = 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        if kind == b"IDAT":
            data[pos + 8 + length // 2] ^= 0xFF
            Path(path).write_bytes(bytes(data))
            return
        pos += 12 + length
    raise ValueError(f"{path}: no IDAT chunk")


def _touch(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


# ------------------------------------------------------------------------------ the builder


def _extras(fmt: str, tree: FakeTree, names_only: bool, width: int, height: int) -> None:
    """Files of the real download that readers must ignore (siblings, unlabelled splits)."""
    root = tree.root

    def put(path: Path, kind: str = "png") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if names_only or kind == "json":
            _touch(path) if names_only else path.write_text("{}")
        elif kind == "jpg":
            write_image(path, width, height)
        else:
            write_label_png(path, np.zeros((height, width), np.uint8))

    for s in tree.samples:
        if fmt == "cityscapes":
            base = s.label.parent / s.stem
            for suffix in ("_gtFine_color.png", "_gtFine_instanceIds.png"):
                put(Path(f"{base}{suffix}"))
            put(Path(f"{base}_gtFine_polygons.json"), "json")
        elif fmt in ("acdc", "darkzurich"):
            base = s.label.parent / s.stem
            suffixes = ("_gt_labelTrainIds.png", "_gt_labelColor.png", "_gt_invIds.png") if fmt == "acdc" else ("_gt_labelColor.png", "_gt_invIds.png")
            for suffix in suffixes:
                put(Path(f"{base}{suffix}"))
    if fmt == "cityscapes":
        put(root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png")
    elif fmt == "bdd100k":
        put(root / "images" / "10k" / "test" / "ac6d4f42-00000000.jpg", "jpg")
        put(root / "labels" / "sem_seg" / "polygons" / "sem_seg_train.json", "json")
    elif fmt == "mapillary":
        put(root / "testing" / "images" / "AAAAAAAAAAAAAAAAAAAAAA.jpg", "jpg")
        put(root / "config.json", "json")
    elif fmt == "acdc":
        for cond in ACDC_CONDITIONS:
            put(root / "rgb_anon" / cond / "test" / "GOPR0999" / "GOPR0999_frame_000001_rgb_anon.png")
            put(root / "rgb_anon" / cond / "train_ref" / "GOPR0998" / "GOPR0998_frame_000001_ref_anon.png")
    elif fmt == "darkzurich":
        put(root / "rgb_anon" / "train" / "night" / "GOPR0094" / "GOPR0094_frame_000001_rgb_anon.png")
        put(root / "rgb_anon" / "train" / "day" / "GOPR0091" / "GOPR0091_frame_000001_rgb_anon.png")
        put(root / "rgb_anon" / "val_ref" / "day" / "GOPR0355" / "GOPR0355_frame_000001_ref_rgb_anon.png")


def make_tree(
    fmt: str,
    root: str | os.PathLike,
    count: int | dict[str, int] = 3,
    *,
    splits: tuple[str, ...] | None = None,
    width: int = 12,
    height: int = 8,
    seed: int = 0,
    label_values: tuple[int, ...] | list[int] | None = None,
    names_only: bool = False,
    extras: bool = True,
) -> FakeTree:
    """Write a fake `fmt` download under `root`: `count` pairs per split (an int, or {split: n})."""
    root = Path(root)
    splits = tuple(count) if isinstance(count, dict) else (splits or DEFAULT_SPLITS[fmt])
    counts = count if isinstance(count, dict) else {s: count for s in splits}
    values = np.asarray(label_values if label_values is not None else ID_SETS[fmt], dtype=np.uint8)
    rng = np.random.default_rng(seed)
    tree = FakeTree(fmt, root)
    made: set[Path] = set()
    # the split folders exist even when empty (ACDC conditions with fewer samples than 4)
    for split in splits:
        for stem, group in _stems(fmt, split, 4 if fmt == "acdc" else 1, np.random.default_rng(0)):
            for path in pair_paths(fmt, root, split, stem, group):
                (path.parent.parent if fmt in ("acdc", "cityscapes", "darkzurich") else path.parent).mkdir(parents=True, exist_ok=True)
    for split in splits:
        for i, (stem, group) in enumerate(_stems(fmt, split, counts[split], rng)):
            image, label = pair_paths(fmt, root, split, stem, group)
            for folder in (image.parent, label.parent):
                if folder not in made:
                    folder.mkdir(parents=True, exist_ok=True)
                    made.add(folder)
            condition = group.split("/")[0] if fmt == "acdc" else None
            if names_only:
                _touch(image)
                _touch(label)
                tree.samples.append(FakeSample(split, stem, image, label, None, condition))
                continue
            raw = rng.choice(values, size=(height, width)).astype(np.uint8)
            write_image(image, width, height, seed=seed * 100_003 + i)
            write_label_png(label, raw, palette=fmt in PALETTE_LABELS)
            tree.samples.append(FakeSample(split, stem, image, label, raw, condition))
    if extras:
        _extras(fmt, tree, names_only, width, height)
    return tree
