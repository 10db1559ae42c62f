"""The official download layout of every real dataset, checked before any work starts.

STDLIB ONLY: the Snakefile imports this module while it builds the DAG, to fail fast on a
wrong `--root` and to know the stems of a split, so nothing here may import numpy or PIL.
`dginstyle.io.DataError` (whose module imports both) is imported only when a check fails.

    fmt         root layout (relative to <root>)                                labelled splits
    gta5        images/<5 digits>.png + labels/<5 digits>.png (palette IDs)     train
    cityscapes  leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
                + gtFine/<split>/<city>/<stem>_gtFine_labelIds.png              train, val
    bdd100k     images/10k/<split>/<name>.jpg
                + labels/sem_seg/masks/<split>/<name>.png (train IDs)           train, val
    mapillary   training|validation/images/<key>.jpg
                + training|validation/labels/<key>.png (v1.2 palette indices)   train, val
    acdc        rgb_anon/<cond>/<split>/<seq>/<name>_rgb_anon.png
                + gt/<cond>/<split>/<seq>/<name>_gt_labelIds.png                train, val
    darkzurich  rgb_anon/val/night/<seq>/<name>_rgb_anon.png
                + gt/val/night/<seq>/<name>_gt_labelIds.png                     val
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


@dataclass(frozen=True)
class Layout:
    """What one format's official download looks like."""

    fmt: str
    splits: tuple[str, ...]  # labelled splits (the default of `prepare`)
    expects: str  # one line for error messages: what the format expects under <root>
    # split -> folders (relative to root) that must exist to read that split
    split_dirs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # folders whose presence identifies this format (used to say "this looks like ...")
    signature: tuple[str, ...] = ()

    def required_dirs(self, splits: tuple[str, ...] | list[str] | None = None) -> list[str]:
        wanted = self.splits if splits is None else tuple(splits)
        out: list[str] = []
        for split in wanted:
            for rel in self.split_dirs.get(split, ()):
                if rel not in out:
                    out.append(rel)
        return out


def _acdc_dirs(split: str) -> tuple[str, ...]:
    return tuple(f"{top}/{cond}/{split}" for cond in ACDC_CONDITIONS for top in ("rgb_anon", "gt"))


LAYOUTS: dict[str, Layout] = {
    "gta5": Layout(
        "gta5",
        ("train",),
        "images/<5-digit>.png and labels/<5-digit>.png (palette PNGs of Cityscapes label IDs)",
        {"train": ("images", "labels")},
        ("images", "labels"),
    ),
    "cityscapes": Layout(
        "cityscapes",
        ("train", "val"),
        "leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png and gtFine/<split>/<city>/<stem>_gtFine_labelIds.png",
        {s: (f"leftImg8bit/{s}", f"gtFine/{s}") for s in ("train", "val")},
        ("leftImg8bit", "gtFine"),
    ),
    "bdd100k": Layout(
        "bdd100k",
        ("train", "val"),
        "images/10k/<split>/<name>.jpg and labels/sem_seg/masks/<split>/<name>.png (train IDs)",
        {s: (f"images/10k/{s}", f"labels/sem_seg/masks/{s}") for s in ("train", "val")},
        ("images/10k", "labels/sem_seg/masks"),
    ),
    "mapillary": Layout(
        "mapillary",
        ("train", "val"),
        "training|validation/images/<key>.jpg and training|validation/labels/<key>.png (Vistas v1.2 palette PNGs)",
        {"train": ("training/images", "training/labels"), "val": ("validation/images", "validation/labels")},
        ("training/images", "validation/images"),
    ),
    "acdc": Layout(
        "acdc",
        ("train", "val"),
        "rgb_anon/{fog,night,rain,snow}/<split>/<seq>/<name>_rgb_anon.png and "
        "gt/{fog,night,rain,snow}/<split>/<seq>/<name>_gt_labelIds.png",
        {s: _acdc_dirs(s) for s in ("train", "val")},
        ("rgb_anon/fog", "gt/fog"),
    ),
    "darkzurich": Layout(
        "darkzurich",
        ("val",),
        "rgb_anon/val/night/<seq>/<name>_rgb_anon.png and gt/val/night/<seq>/<name>_gt_labelIds.png",
        {"val": ("rgb_anon/val/night", "gt/val/night")},
        ("rgb_anon/val/night", "gt/val/night"),
    ),
}
FORMATS = tuple(LAYOUTS)


class Pair(NamedTuple):
    """One labelled sample of a split, as found in the download."""

    split: str
    stem: str
    image: Path
    label: Path
    condition: str | None = None  # ACDC weather condition


def _data_error(message: str) -> Exception:
    from dginstyle.io import DataError  # lazy: dginstyle.io imports numpy and PIL

    return DataError(message)


def get_layout(fmt: str) -> Layout:
    try:
        return LAYOUTS[fmt]
    except KeyError:
        raise _data_error(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}") from None


def default_splits(fmt: str) -> tuple[str, ...]:
    return get_layout(fmt).splits


def parse_splits(fmt: str, splits: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`"train,val"` (or a list, or None for the default) -> the validated split names."""
    layout = get_layout(fmt)
    if splits is None or splits == "":
        return layout.splits
    names = [s.strip() for s in splits.split(",")] if isinstance(splits, str) else [str(s).strip() for s in splits]
    if any(not n for n in names):
        raise _data_error(f"--splits {splits!r}: empty split name; give comma-separated names, e.g. {','.join(layout.splits)}")
    unknown = [n for n in names if n not in layout.split_dirs]
    if unknown:
        raise _data_error(
            f"{fmt}: split(s) {', '.join(map(repr, unknown))} have no labels in the official layout; "
            f"labelled splits are {', '.join(layout.split_dirs)}"
        )
    return tuple(dict.fromkeys(names))


def _looks_like(root: Path, fmt: str) -> list[str]:
    """Other formats whose signature folders all exist under root."""
    return [
        other
        for other, layout in LAYOUTS.items()
        if other != fmt and layout.signature and all((root / rel).is_dir() for rel in layout.signature)
    ]


def layout_problems(fmt: str, root: str | os.PathLike | None, splits=None) -> list[str]:
    """Every problem with `root` as a `fmt` download (empty list: the layout is fine)."""
    layout = get_layout(fmt)
    if root is None:
        return [f"{fmt}: no dataset root given (--root); it must hold {layout.expects}"]
    root = Path(root)
    if not root.exists():
        return [f"{root}: dataset root does not exist"]
    if not root.is_dir():
        return [f"{root}: dataset root is not a folder"]
    wanted = parse_splits(fmt, splits)
    problems = []
    for rel in layout.required_dirs(wanted):
        path = root / rel
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "missing folder"
            problems.append(f"{path}: {what} ({rel}/)")
    if problems:
        hint = ""
        others = _looks_like(root, fmt)
        if others:
            hint = f"; this looks like a {' or '.join(others)} root"
        if fmt == "mapillary" and (root / "training" / "v1.2" / "labels").is_dir():
            hint += "; this looks like the Vistas v2.0 download (labels under training/v1.2/labels), not v1.2"
        return [
            f"{root}: not a {fmt} dataset root: {'; '.join(problems)}. "
            f"{fmt} expects {layout.expects}{hint}"
        ]
    return []


def check_layout(fmt: str, root: str | os.PathLike | None, splits=None) -> None:
    """Raise `dginstyle.io.DataError` naming the root and the missing folders if `root` is not a `fmt` download."""
    problems = layout_problems(fmt, root, splits)
    if problems:
        raise _data_error("; ".join(problems))


def reader(fmt: str):
    """The reader module of a format (dginstyle.data.<fmt>): `list_pairs`, `lookup_table`, `MAPPING`."""
    get_layout(fmt)
    return importlib.import_module(f"dginstyle.data.{fmt}")


def list_pairs(fmt: str, root: str | os.PathLike, split: str) -> list[Pair]:
    """The (split, stem, image, label) pairs of one split, sorted by stem (stdlib only)."""
    return reader(fmt).list_pairs(Path(root), split)


# ----------------------------------------------------------------------------- listing helpers


def scan_suffix(folder: Path, suffix: str, recursive: bool) -> dict[str, Path]:
    """{name without `suffix`: path} for the files in `folder` (and one level of sub-folders if
    `recursive`) whose name ends with `suffix`; other files are ignored."""
    found: dict[str, Path] = {}
    dirs = [folder]
    if recursive:
        with os.scandir(folder) as entries:
            dirs = sorted(Path(e.path) for e in entries if e.is_dir())
    for d in dirs:
        with os.scandir(d) as entries:
            for e in entries:
                if e.name.endswith(suffix) and len(e.name) > len(suffix) and not e.name.startswith("."):
                    stem = e.name[: -len(suffix)]
                    if stem in found:
                        raise _data_error(
                            f"{e.path}: the name {stem!r} also occurs as {found[stem]}; stems must be unique within a split"
                        )
                    found[stem] = Path(e.path)
    return found


def pair_up(
    split: str,
    images: dict[str, Path],
    labels: dict[str, Path],
    expected_label,
    expected_image,
    condition: str | None = None,
) -> list[Pair]:
    """Match images and labels by stem; an image without its label (or the reverse) is an error
    naming the file and the counterpart path it expects."""
    lonely_images = sorted(set(images) - set(labels))
    lonely_labels = sorted(set(labels) - set(images))
    problems = []
    for stem in lonely_images[:3]:
        problems.append(f"{images[stem]}: image without its label (expected {expected_label(images[stem], stem)})")
    for stem in lonely_labels[:3]:
        problems.append(f"{labels[stem]}: label without its image (expected {expected_image(labels[stem], stem)})")
    if problems:
        more = len(lonely_images) + len(lonely_labels) - len(problems)
        raise _data_error("; ".join(problems) + (f"; and {more} more unmatched files" if more > 0 else ""))
    return [Pair(split, stem, images[stem], labels[stem], condition) for stem in sorted(images)]
