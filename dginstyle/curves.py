"""Training curves of a run as one PNG: the U^S fine-tune, the ControlNet and every
segmentation run (one line per seed), for the report.

Reads files only (`loss_curve.json` of the generator stages, `train_log.jsonl` of the
segmentation runs) and draws with PIL, so it runs in the light environment.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dginstyle.io import DataError, atomic_write_bytes

PANEL_W, PANEL_H, MARGIN = 360, 200, 34
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


#: The loss's name for each prediction target a stage can be trained on (a curve without one: "loss").
LOSS_NAMES = {"epsilon": "noise (epsilon) MSE", "v_prediction": "velocity MSE"}


def read_generator_curve(folder: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(steps, losses, the loss's name) of a generator stage folder (U^S or ControlNet)."""
    path = Path(folder) / "loss_curve.json"
    try:
        data = json.loads(path.read_text())
        steps, losses = np.asarray(data["step"], dtype=float), np.asarray(data["loss"], dtype=float)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read a loss curve ({exc})") from None
    return steps, losses, LOSS_NAMES.get(data.get("target"), "loss")


def read_segmentation_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, losses) of a segmentation run folder."""
    path = Path(run) / "train_log.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "iter" in r and "loss" in r]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the training log ({exc})") from None
    return np.asarray([r["iter"] for r in rows], dtype=float), np.asarray([r["loss"] for r in rows], dtype=float)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average (window clipped at the ends), so noisy per-step losses read as a trend."""
    if window <= 1 or len(values) < 3:
        return values
    kernel = np.ones(window) / window
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def _panel(title: str, series: list[tuple[str, np.ndarray, np.ndarray]]) -> Image.Image:
    image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((MARGIN, 4), title, fill="black", font=font)
    x0, y0, x1, y1 = MARGIN, 20, PANEL_W - 8, PANEL_H - 18
    draw.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
    xs = np.concatenate([s[1] for s in series]) if series else np.array([0.0, 1.0])
    ys = np.concatenate([s[2] for s in series]) if series else np.array([0.0, 1.0])
    xmin, xmax = float(xs.min()), float(max(xs.max(), xs.min() + 1))
    ymin, ymax = float(ys.min()), float(ys.max())
    if ymax - ymin < 1e-9:
        ymax = ymin + 1.0
    draw.text((2, y0), f"{ymax:.3g}", fill="black", font=font)
    draw.text((2, y1 - 10), f"{ymin:.3g}", fill="black", font=font)
    draw.text((x0, y1 + 3), f"{xmin:.0f}", fill="black", font=font)
    draw.text((x1 - 40, y1 + 3), f"{xmax:.0f}", fill="black", font=font)
    for i, (name, steps, losses) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        px = x0 + (steps - xmin) / (xmax - xmin) * (x1 - x0)
        py = y1 - (losses - ymin) / (ymax - ymin) * (y1 - y0)
        if len(px) > 1:
            draw.line(list(zip(px.tolist(), py.tolist())), fill=colour, width=2)
        draw.text((x1 - 70, y0 + 4 + 11 * i), name, fill=colour, font=font)
    return image


def training_curves(out: Path, unet_source: Path | None = None, controlnet: Path | None = None, runs: list[Path] = ()) -> None:
    """Write the curves PNG: one panel per generator stage and one per segmentation
    experiment (runs are <experiment>/seed<k> folders; one line per seed)."""
    panels = []
    for stage, folder in (("U^S fine-tune", unet_source), ("ControlNet", controlnet)):
        if folder is not None:
            steps, losses, name = read_generator_curve(folder)
            panels.append(_panel(f"{stage}: {name}", [("loss", steps, smooth(losses, max(1, len(losses) // 30)))]))
    by_experiment: dict[str, list] = {}
    for run in runs:
        run = Path(run)
        steps, losses = read_segmentation_curve(run)
        by_experiment.setdefault(run.parent.name, []).append((run.name, steps, losses))
    for experiment, series in sorted(by_experiment.items()):
        panels.append(_panel(f"segmentation {experiment}: loss", series))
    if not panels:
        raise DataError("training-curves: nothing to plot (give --unet-source, --controlnet or --runs)")
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * PANEL_W, rows * PANEL_H), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % columns) * PANEL_W, (i // columns) * PANEL_H))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
