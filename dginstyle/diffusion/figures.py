"""The Style Swap figure: the same layouts generated with U^S and with U^P under weather prompts.

Rows are the first plan rows (source crops); columns: the condition label, the ControlNet with
the source UNet U^S (the `no_swap` generator: source style), then the ControlNet with the prior
UNet U^P (the swapped generator) with the plain class prompt and with each weather prompt.
Plain (single-pass) sampling: the figure is about style, not resolution.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dginstyle.data import contract
from dginstyle.io import DataError, atomic_write_bytes, read_label_png
from dginstyle.labels import colorize

log = logging.getLogger(__name__)

WEATHERS = ("sunny", "foggy", "rainy", "snowy", "night")


def plan_crop(source: Path, row: dict) -> np.ndarray:
    """The train-ID crop a plan row names, read from the prepared source dataset."""
    from dginstyle.diffusion.layouts import crop_of

    full = read_label_png(contract.label_path(source, row.get("split", "train"), row["stem"]))
    return crop_of(full, row, source)


def style_swap_figure(
    swapped: Path,
    unswapped: Path,
    plan: Path,
    source: Path,
    out: Path,
    count: int = 4,
    weathers: tuple[str, ...] = WEATHERS,
    steps: int = 20,
    guidance_scale: float = 7.5,
    cell: int = 96,
) -> None:
    """Draw the figure to `out` (PNG, written atomically)."""
    from dginstyle.diffusion.layouts import make_prompt, read_plan
    from dginstyle.diffusion.mrlf import MRLFSettings, generate_image
    from dginstyle.diffusion.style_swap import load_generator

    rows = read_plan(Path(plan))[:count]
    if not rows:
        raise DataError(f"{plan}: the plan is empty")
    settings = MRLFSettings(mode="plain", steps=steps, guidance_scale=guidance_scale)
    with_us = load_generator(unswapped)
    with_up = load_generator(swapped)
    headers = ["condition", "U^S (no swap)", "U^P (swap)"] + [f"U^P, {w}" for w in weathers]
    grid: list[list[np.ndarray]] = []
    for row in rows:
        label = plan_crop(Path(source), row)
        classes = make_prompt(row["class_ids"], None)
        seed = int(row["id"])
        cells = [colorize(label), generate_image(with_us, label, classes, seed, settings), generate_image(with_up, label, classes, seed, settings)]
        for weather in weathers:
            cells.append(generate_image(with_up, label, make_prompt(row["class_ids"], weather), seed, settings))
        grid.append(cells)
        log.info("style swap figure: layout %s done", row["id"])

    header_h = 18
    sheet = Image.new("RGB", (cell * len(headers), header_h + cell * len(grid)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(headers):
        draw.text((c * cell + 3, 3), text, fill=(235, 235, 235))
    for r, cells in enumerate(grid):
        for c, array in enumerate(cells):
            tile = Image.fromarray(array).resize((cell, cell), Image.NEAREST if c == 0 else Image.LANCZOS)
            sheet.paste(tile, (c * cell, header_h + r * cell))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "style-swap-figure",
        help="the same layouts generated with U^S and with U^P under weather prompts",
        description="Rows: the first plan layouts; columns: condition, ControlNet + U^S, ControlNet + U^P with the class prompt and with each weather prompt.",
    )
    p.add_argument("--swapped", required=True, type=Path, help="generator folder with U^P (variant plain)")
    p.add_argument("--unswapped", required=True, type=Path, help="generator folder with U^S (variant no_swap)")
    p.add_argument("--plan", required=True, type=Path, help="plan JSONL (select-layouts)")
    p.add_argument("--source", required=True, type=Path, help="prepared source dataset")
    p.add_argument("--out", required=True, type=Path, help="output PNG")
    p.add_argument("--count", type=int, default=4, help="number of layouts (rows)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    import os

    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    style_swap_figure(args.swapped, args.unswapped, args.plan, args.source, args.out, count=args.count, steps=args.steps, guidance_scale=args.guidance_scale)
