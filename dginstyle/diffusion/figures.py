"""The Style Swap figure: the same layouts generated with U^S and with U^P under weather prompts.

Rows are the first plan rows (source crops); columns: the condition label, the ControlNet with
the source UNet U^S (the `no_swap` generator: source style), then the ControlNet with the prior
UNet U^P (the swapped generator) with the plain class prompt and with each weather prompt.
Plain (single-pass) sampling: the figure is about style, not resolution.

Beside the PNG, a JSON file holds the figure's numbers, so that what it shows can be checked
and compared across runs:

- `control_transfer`: how much of the ControlNet's control survives the swap. The swap rests on
  the ControlNet, trained against U^S, still steering U^P; when U^S has drifted far from U^P it
  does not (in the miniature world a U^S fine-tuned at lr 5e-4 kept 45 % of the control after
  the swap, one at 1e-4 all of it). Measured with `controlnet.control_gain`: the denoising loss
  of RCS source crops with the ControlNet off and on, for the unswapped generator (U^S) and the
  swapped one, on the same crops, noise and timesteps. `kept` = the swapped generator's
  relative loss drop over U^S's.
- `columns`: mean saturation and brightness of each column's images: how much of the source
  look each generator draws (the source images' own values are given for scale).
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dginstyle.data import contract
from dginstyle.io import DataError, atomic_write_bytes, atomic_write_json, read_label_png, read_rgb
from dginstyle.labels import colorize

log = logging.getLogger(__name__)

WEATHERS = ("sunny", "foggy", "rainy", "snowy", "night")


def plan_crops(source: Path, row: dict) -> tuple[np.ndarray, np.ndarray]:
    """The train-ID crop a plan row names and the same crop of its RGB image, read from the
    prepared source dataset."""
    from dginstyle.diffusion.layouts import crop_of

    split = row.get("split", "train")
    label = read_label_png(contract.label_path(source, split, row["stem"]))
    image = np.asarray(read_rgb(contract.find_image(source, split, row["stem"])))
    return crop_of(label, row, source), crop_of(image, row, source)


#: Source crops the control transfer is measured on (one batch per timestep).
TRANSFER_CROPS = 32


def saturation(image: np.ndarray) -> float:
    """Mean HSV saturation of an RGB uint8 image: (max - min) / max per pixel, 0 where black."""
    rgb = image.astype(np.float64)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    return float(np.mean(np.where(high > 0, (high - low) / np.maximum(high, 1e-9), 0.0)))


def look(images: list[np.ndarray]) -> dict:
    """Mean saturation and brightness (in [0, 1]) of a list of RGB uint8 images."""
    return {"saturation": round(float(np.mean([saturation(i) for i in images])), 4), "brightness": round(float(np.mean([i.mean() / 255 for i in images])), 4)}


def control_transfer(
    with_us: dict, with_up: dict, source: Path, crops_count: int = TRANSFER_CROPS, seed: int = 0, device: str = "cpu", precision: str = "no"
) -> dict:
    """Control gain of the unswapped (U^S) and the swapped generator on the same source crops.

    Crops as the ControlNet was trained (its crop size, RCS temperature and minimum pixels, from
    its metadata in the generator), prompts = their class lists. `device` and `precision` must be
    those the generators were loaded with.
    """
    from dginstyle.diffusion import crops
    from dginstyle.diffusion.controlnet import CONTROL_GAIN_TIMESTEPS, control_gain, validation_layouts
    from dginstyle.diffusion.finetune import Runtime

    if crops_count < 1:
        raise DataError(f"--transfer-crops must be at least 1, got {crops_count}")
    hp = with_up["metadata"].get("controlnet_metadata", {}).get("hyperparameters", {})
    if "crop_size" not in hp:
        raise DataError("the swapped generator's dginstyle.json has no controlnet_metadata.hyperparameters.crop_size")
    sampler = crops.source_rare_class_sampler(Path(source), "train", hp.get("rcs_temperature", 0.01), hp.get("rcs_min_pixels", 3000))
    layouts = validation_layouts(Path(source), "train", sampler, int(hp["crop_size"]), crops_count, None, seed)
    rt = Runtime.create(device, precision, seed)
    gain = {"unswapped": control_gain(with_us, layouts, rt, seed), "swapped": control_gain(with_up, layouts, rt, seed)}
    drop = {k: 1.0 - g["with_control"] / g["without_control"] for k, g in gain.items()}
    return dict(
        crops=crops_count,
        seed=seed,
        timesteps=list(CONTROL_GAIN_TIMESTEPS),
        loss_unswapped=gain["unswapped"],
        loss_swapped=gain["swapped"],
        loss_drop_unswapped=round(drop["unswapped"], 4),
        loss_drop_swapped=round(drop["swapped"], 4),
        kept=round(drop["swapped"] / drop["unswapped"], 4) if drop["unswapped"] > 0 else None,
    )


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
    controlnet_scale: float = 1.0,
    timestep_spacing: str = "leading",
    cell: int = 96,
    numbers: Path | None = None,
    transfer_crops: int = TRANSFER_CROPS,
    device: str = "auto",
    precision: str = "fp16",
) -> dict:
    """Draw the figure to `out` (PNG, written atomically); its numbers (returned) to `numbers` (JSON).

    On the GPU the rule asks for where there is one (fp16/bf16 as `precision` says), else on the
    CPU in float32: at paper scale 28 images of 20 steps and the transfer measure are SD passes.
    """
    from dginstyle.diffusion import models
    from dginstyle.diffusion.layouts import make_prompt, read_plan
    from dginstyle.diffusion.mrlf import MRLFSettings, generate_image
    from dginstyle.diffusion.style_swap import load_generator

    rows = read_plan(Path(plan))[:count]
    if not rows:
        raise DataError(f"{plan}: the plan is empty")
    # The images are drawn as `generate` draws them (same steps, guidance, ControlNet scale and
    # timestep spacing); the control transfer below is measured at scale 1, as the ControlNet trained.
    settings = MRLFSettings(
        mode="plain", steps=steps, guidance_scale=guidance_scale, controlnet_scale=controlnet_scale, timestep_spacing=timestep_spacing
    )
    dev = models.pick_device(device)
    dtype = models.pick_dtype(dev, precision)
    with_us = load_generator(unswapped, dev, dtype)
    with_up = load_generator(swapped, dev, dtype)
    # Measured first: it needs only the generators and fails fast on a bad --transfer-crops.
    transfer = control_transfer(with_us, with_up, Path(source), transfer_crops, device=str(dev), precision=precision if dev.type == "cuda" else "no")
    headers = ["condition", "U^S (no swap)", "U^P (swap)"] + [f"U^P, {w}" for w in weathers]
    grid: list[list[np.ndarray]] = []
    source_images = []
    for row in rows:
        label, image = plan_crops(Path(source), row)
        source_images.append(image)
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

    result = dict(
        figure=str(out),
        layouts=[int(row["id"]) for row in rows],
        steps=steps,
        guidance_scale=guidance_scale,
        controlnet_scale=controlnet_scale,
        timestep_spacing=timestep_spacing,
        columns={"source images": look(source_images), **{h: look([cells[c] for cells in grid]) for c, h in enumerate(headers) if c > 0}},
        device=dev.type,
        dtype=str(dtype).replace("torch.", ""),
        control_transfer=transfer,
    )
    if numbers is not None:
        atomic_write_json(Path(numbers), result)
    t = result["control_transfer"]
    log.info("style swap figure: loss drop with control: U^S %.1f %%, swapped %.1f %% (kept %s)", 100 * t["loss_drop_unswapped"], 100 * t["loss_drop_swapped"], t["kept"])
    return result


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
    p.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet residual scale of the images (as generate's)")
    # mrlf.TIMESTEP_SPACINGS, spelt out: this module does not import torch until it runs.
    p.add_argument("--timestep-spacing", choices=("leading", "trailing"), default="leading", help="DDIM timesteps (as generate's)")
    p.add_argument("--numbers", type=Path, default=None, help="JSON of the figure's numbers: each column's look, and the control transfer")
    p.add_argument("--transfer-crops", type=int, default=TRANSFER_CROPS, help="source crops the control transfer is measured on")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("fp16", "bf16", "no"), default="fp16", help="model precision on CUDA (CPU: float32)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    import os

    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    style_swap_figure(
        args.swapped, args.unswapped, args.plan, args.source, args.out, count=args.count, steps=args.steps,
        guidance_scale=args.guidance_scale, controlnet_scale=args.controlnet_scale,
        timestep_spacing=args.timestep_spacing, numbers=args.numbers, transfer_crops=args.transfer_crops,
        device=args.device, precision=args.precision,
    )  # fmt: skip
