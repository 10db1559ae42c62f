"""Contact sheets: a PNG grid of the first samples of a prepared dataset, for eyeballing.

One row per sample: the image and its colour-coded label (Cityscapes palette, ignore black),
both scaled to a common row height; for an unlabelled caption corpus (the prior) the image and
its caption. A title line names the dataset, its format/domain and the split.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dginstyle.data import contract
from dginstyle.io import DataError, atomic_write_bytes, read_label_png, read_rgb
from dginstyle.labels import colorize

ROW_HEIGHT = 128
GAP = 4
TITLE_HEIGHT = 20
CAPTION_WIDTH = 320
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _captions(root: Path) -> dict[tuple[str, str], str]:
    path = root / "captions.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[(rec["split"], rec["stem"])] = rec.get("caption", "")
    return out


def row_width(image_size: tuple[int, int], height: int = ROW_HEIGHT, labelled: bool = True) -> int:
    """Width of one row for an image of (width, height) `image_size`."""
    w = max(1, round(image_size[0] * height / image_size[1]))
    return w + GAP + (w if labelled else CAPTION_WIDTH)


def contact_sheet(dataset: Path, out: Path, split: str | None = None, count: int = 8, *, height: int = ROW_HEIGHT) -> None:
    """Write a PNG grid of the first `count` samples of `split` (default: the manifest's first)."""
    dataset = Path(dataset)
    manifest = contract.read_manifest(dataset)
    splits = list(manifest.get("splits", {}))
    if split is None:
        if not splits:
            raise DataError(f"{dataset}: the manifest lists no splits")
        split = splits[0]
    stems = contract.read_split(dataset, split)
    if count < 1:
        raise DataError(f"contact sheet: count must be >= 1, got {count}")
    stems = stems[:count]
    if not stems:
        raise DataError(f"{dataset}: split {split!r} is empty")
    labelled = manifest.get("labelled", True)
    captions = {} if labelled else _captions(dataset)

    rows: list[Image.Image] = []
    for stem in stems:
        img = read_rgb(contract.find_image(dataset, split, stem))
        w = max(1, round(img.width * height / img.height))
        img = img.resize((w, height), Image.BILINEAR)
        if labelled:
            label = read_label_png(contract.label_path(dataset, split, stem))
            right = Image.fromarray(colorize(label)).resize((w, height), Image.NEAREST)
        else:
            right = Image.new("RGB", (CAPTION_WIDTH, height), BACKGROUND)
            draw = ImageDraw.Draw(right)
            text = captions.get((split, stem), "(no caption)")
            draw.multiline_text((6, 6), "\n".join(textwrap.wrap(text, width=44)), fill=TEXT, font=_font(12), spacing=3)
        row = Image.new("RGB", (w + GAP + right.width, height), BACKGROUND)
        row.paste(img, (0, 0))
        row.paste(right, (w + GAP, 0))
        rows.append(row)

    width = max(r.width for r in rows)
    total_h = TITLE_HEIGHT + sum(r.height + GAP for r in rows)
    sheet = Image.new("RGB", (width, total_h), BACKGROUND)
    name = manifest.get("dataset", dataset.name)
    kind = manifest.get("domain") or manifest.get("format", "")
    title = f"{name} [{kind}] {split}: {len(rows)} of {manifest.get('splits', {}).get(split, '?')}"
    ImageDraw.Draw(sheet).text((4, 3), title, fill=TEXT, font=_font(12))
    y = TITLE_HEIGHT
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + GAP
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())


__all__ = ["contact_sheet", "row_width", "ROW_HEIGHT", "GAP", "TITLE_HEIGHT", "CAPTION_WIDTH"]
