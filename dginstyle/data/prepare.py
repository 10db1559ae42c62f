"""`dginstyle prepare`: convert a real dataset from its official layout into the contract.

The conversion engine, per pair (image, label):

* the image is checked cheaply, never decoded: its size comes from the header; a PNG is
  checked with PIL's `verify()` (every chunk CRC, no pixel decode), a JPEG by its SOI marker,
  its EOI marker (FF D9) at the end and a header parse;
* the label is decoded once, its 256-bin histogram (one C pass) gives both the raw values
  outside the dataset's ID range and the class pixel counts of the converted map, and the
  256-entry lookup table is applied in one C pass (PIL `point`, which maps palette indices
  directly), then re-encoded with `io.encode_label_png` into the staging folder;
* the original image is symlinked.

Pairs are converted in chunks by a pool of `workers` processes that return small `Record`s.
The first error stops the pool (pending chunks cancelled, running ones stop at their next
pair), the staging folder is deleted and the error surfaces as a `DataError`; a previous
complete <out> is untouched because only `contract.finalize` renames staging -> out.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dginstyle.data import contract
from dginstyle.data.layouts import LAYOUTS, Pair, check_layout, parse_splits, reader
from dginstyle.io import DataError
from dginstyle.parallel import chunked, parallel_map, stopped
from dginstyle.labels import lut_as_pairs, map_label

log = logging.getLogger(__name__)

SIZE_MISMATCH_POLICIES = ("error", "skip")

# ------------------------------------------------------------------------------ per-pair work


def _describe_valid(table: np.ndarray) -> str:
    """'0..33' or '0..18, 255': the raw values a table accepts."""
    valid = [v for v in range(256) if table[v] >= 0]
    runs: list[str] = []
    start = prev = None
    for v in valid + [None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}..{prev}")
        start = prev = v
    return ", ".join(runs)


class Converter:
    """Everything a worker needs to convert pairs of one dataset (small and picklable)."""

    def __init__(self, fmt: str, staging: Path, table: np.ndarray, size_mismatch: str):
        self.fmt = fmt
        self.staging = Path(staging)
        self.table = np.asarray(table)  # raw -> train ID, negative = invalid
        self.valid = _describe_valid(table)
        self.size_mismatch = size_mismatch

    def __call__(self, pairs: list[Pair]) -> list:
        out = []
        for pair in pairs:
            if stopped():
                break
            try:
                out.append(self.convert(pair))
            except DataError:
                raise
            except Exception as exc:  # a bug or an OS error: name the pair, keep it one line
                raise DataError(
                    f"{pair.label}: conversion failed ({exc.__class__.__name__}: {exc}); image {pair.image}"
                ) from None
        return out

    def convert(self, pair: Pair):
        width, height = check_image(pair.image)
        label = open_label(pair.label)
        try:
            if label.size != (width, height):
                message = (
                    f"label is {label.size[0]}x{label.size[1]} but its image {pair.image} is {width}x{height}"
                )
                if self.size_mismatch == "skip":
                    return {"split": pair.split, "stem": pair.stem, "image": str(pair.image), "label": str(pair.label), "reason": message}
                raise DataError(f"{pair.label}: {message} (use --size-mismatch skip to skip such pairs)")
            decode_label(label, pair.label)
            mapped, bad, counts = map_label(label, self.table)
            if bad:
                raise DataError(
                    f"{pair.label}: label values {bad} are outside the {self.fmt} ID range ({self.valid})"
                )
        finally:
            label.close()
        contract.link_image(self.staging, pair.split, pair.stem, pair.image)
        record = contract.write_label(self.staging, pair.split, pair.stem, mapped, class_pixels=counts)
        if pair.condition:
            record.extra["condition"] = pair.condition
        return record


_JPEG_SUFFIXES = (".jpg", ".jpeg")


def check_image(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header; DataError if it is corrupt or truncated.

    PNG: every chunk's CRC up to IEND (PIL `verify`, no pixel decode). JPEG: SOI at the start,
    EOI (FF D9) at the end (trailing zero padding tolerated), and a parsable header.
    """
    jpeg = path.suffix.lower() in _JPEG_SUFFIXES
    try:
        with open(path, "rb") as handle:
            if jpeg:
                if handle.read(2) != b"\xff\xd8":
                    raise DataError(f"{path}: not a JPEG file (no start-of-image marker FF D8)")
                handle.seek(0, 2)
                end = handle.tell()
                handle.seek(max(0, end - 64))
                if not handle.read().rstrip(b"\x00").endswith(b"\xff\xd9"):
                    raise DataError(f"{path}: truncated JPEG (no end-of-image marker FF D9 at the end of the file)")
                handle.seek(0)
            with Image.open(handle) as img:
                size = img.size
                kind = img.format
                if not jpeg:
                    img.verify()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as exc:  # PIL: OSError / SyntaxError / struct.error on damaged files
        raise DataError(f"{path}: corrupt or truncated image ({exc.__class__.__name__}: {exc})") from None
    expected = "JPEG" if jpeg else "PNG"
    if kind != expected:
        raise DataError(f"{path}: file is {kind}, expected {expected} as its name says")
    return size


def open_label(path: Path) -> Image.Image:
    """Open a label PNG lazily (header only): the caller compares sizes before decoding."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot decode label PNG ({exc.__class__.__name__}: {exc}); the file is corrupt or truncated") from None
    if img.format != "PNG" or img.mode not in ("L", "P"):
        img.close()
        raise DataError(f"{path}: label image is {img.format} mode {img.mode}, expected a single-channel 8-bit PNG (L or P)")
    return img


def decode_label(img: Image.Image, path: Path) -> None:
    """Fully decode (as io.read_label_png does): truncation and corrupt data are detected here."""
    try:
        img.load()
    except Exception as exc:
        raise DataError(f"{path}: cannot decode label PNG ({exc.__class__.__name__}: {exc}); the file is corrupt or truncated") from None


# ------------------------------------------------------------------------------ entry point


def _parse_size(size: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(size or ""))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise DataError(f"--size {size!r}: expected WIDTHxHEIGHT with positive integers, e.g. 128x64")
    return int(match[1]), int(match[2])


def _parse_split_counts(splits: str | None) -> dict[str, int]:
    if not splits:
        raise DataError("minicity: --splits is required as name=count pairs, e.g. train=800,val=200")
    counts: dict[str, int] = {}
    for item in splits.split(","):
        match = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\s*=\s*(\d+)\s*", item)
        if not match:
            raise DataError(f"--splits {splits!r}: {item!r} is not name=count; expected e.g. train=800,val=200")
        name, count = match[1], int(match[2])
        if name in counts:
            raise DataError(f"--splits {splits!r}: split {name!r} given twice")
        if count < 1:
            raise DataError(f"--splits {splits!r}: split {name!r} needs a positive count")
        counts[name] = count
    return counts


def prepare(
    fmt: str,
    out: Path,
    root: Path | None = None,
    splits: str | None = None,
    name: str | None = None,
    workers: int = 1,
    rcs_min_pixels: int = contract.DEFAULT_RCS_MIN_PIXELS,
    size_mismatch: str = "error",
    domain: str | None = None,
    seed: int = 0,
    size: str = "128x64",
    thin_objects_px: float = 0.0,
) -> dict:
    """Build the prepared dataset <out> from a real download (or the miniature world); returns the manifest."""
    out = Path(out)
    if fmt == "minicity":
        from dginstyle.data.minicity import prepare_minicity

        width, height = _parse_size(size)
        return prepare_minicity(
            out=out,
            domain=domain,
            splits=_parse_split_counts(splits),
            seed=seed,
            width=width,
            height=height,
            workers=workers,
            name=name,
            rcs_min_pixels=rcs_min_pixels,
            thin_objects_px=thin_objects_px,
        )
    return prepare_real(fmt, out, root, splits, name=name, workers=workers, rcs_min_pixels=rcs_min_pixels, size_mismatch=size_mismatch)


def shown_path(path: str | Path) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 (Python holds them
    as surrogate escapes) shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_text_names(root: Path, pairs: list[Pair]) -> None:
    """Refuse, before any work, a file whose name cannot be written as text: the prepared dataset
    lists every stem in its split lists and manifest.json (UTF-8), one per line."""
    for path in [root] + [p for pair in pairs for p in (pair.image, pair.label)]:
        name = str(path)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            what = "the dataset root's path" if path == root else "the file name"
            raise DataError(
                f"{shown_path(path)}: {what} is not valid UTF-8 (bytes shown as \\xNN); the prepared dataset lists "
                "its files by name in UTF-8 text (split lists, manifest.json): rename it"
            ) from None
        if "\n" in name or "\r" in name:
            raise DataError(f"{name!r}: the file name holds a line break; the split lists hold one name per line: rename it")


def list_all_pairs(fmt: str, root: Path, wanted: tuple[str, ...]) -> list[Pair]:
    """The pairs of every wanted split, checked for emptiness, unique stems and names that can
    be written as text."""
    module = reader(fmt)
    pairs: list[Pair] = []
    for split in wanted:
        found = module.list_pairs(root, split)
        if not found:
            raise DataError(f"{root}: split {split!r} holds no image/label pairs; {fmt} expects {LAYOUTS[fmt].expects}")
        seen: dict[str, Pair] = {}
        for pair in found:
            if pair.stem in seen:
                raise DataError(
                    f"{pair.image}: the name {pair.stem!r} also occurs as {seen[pair.stem].image}; stems must be unique within split {split!r}"
                )
            seen[pair.stem] = pair
        pairs += found
    check_text_names(root, pairs)
    return pairs


def prepare_real(
    fmt: str,
    out: Path,
    root: Path | None,
    splits: str | list[str] | None = None,
    *,
    name: str | None = None,
    workers: int = 1,
    rcs_min_pixels: int = contract.DEFAULT_RCS_MIN_PIXELS,
    size_mismatch: str = "error",
) -> dict:
    if fmt not in LAYOUTS:
        raise DataError(f"unknown dataset format {fmt!r}; expected one of {', '.join(LAYOUTS)} or minicity")
    if size_mismatch not in SIZE_MISMATCH_POLICIES:
        raise DataError(f"--size-mismatch {size_mismatch!r}: expected one of {', '.join(SIZE_MISMATCH_POLICIES)}")
    wanted = parse_splits(fmt, splits)
    check_layout(fmt, root, wanted)
    root = Path(root).resolve()
    out = Path(out)
    started = time.perf_counter()
    pairs = list_all_pairs(fmt, root, wanted)
    module = reader(fmt)
    table = module.lookup_table()
    log.info("%s: %d pairs in %s under %s; %d workers", fmt, len(pairs), ", ".join(wanted), root, workers)

    staging = contract.start(out)
    complete = False
    try:
        for split in wanted:
            contract.label_path(staging, split, "x").parent.mkdir(parents=True, exist_ok=True)
            contract.image_dir(staging, split).mkdir(parents=True, exist_ok=True)
        converter = Converter(fmt, staging, table, size_mismatch)
        records: list[contract.Record] = []
        skipped: list[dict] = []
        done, step = 0, max(1, len(pairs) // 10)
        for results in parallel_map(converter, chunked(pairs, workers), workers):
            for result in results:
                (records if isinstance(result, contract.Record) else skipped).append(result)
            new_done = len(records) + len(skipped)
            if new_done // step != done // step:
                log.info("%s: %d / %d pairs", fmt, new_done, len(pairs))
            done = new_done
        for item in skipped:
            log.warning("skipped %s/%s: %s", item["split"], item["stem"], item["reason"])
        kept = {split: sum(1 for r in records if r.split == split) for split in wanted}
        empty = [split for split, n in kept.items() if n == 0]
        if empty:
            raise DataError(f"{root}: every pair of split(s) {', '.join(empty)} was skipped (size mismatch); nothing to prepare")
        manifest: dict[str, Any] = {
            "dataset": name or out.name,
            "format": fmt,
            "source_root": str(root),
            "mapping": lut_as_pairs(table),
            "mapping_description": module.MAPPING,
            "valid_raw_values": _describe_valid(table),
            "size_mismatch": size_mismatch,
            "skipped": sorted(skipped, key=lambda s: (s["split"], s["stem"])),
        }
        manifest = contract.finalize(staging, out, records, manifest, rcs_min_pixels)
        complete = True
    finally:
        if not complete:
            shutil.rmtree(staging, ignore_errors=True)
    elapsed = time.perf_counter() - started
    log.info("%s: wrote %s (%d pairs, %d skipped) in %.1f s", fmt, out, len(records), len(skipped), elapsed)
    return manifest
