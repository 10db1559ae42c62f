"""Training samples for the generator: source images and labels, crops, one-hot maps, prompts, RCS.

Shared by the UNet fine-tune (random resized crops of images) and the ControlNet training
(rare-class-centred crops of image + label, the 20-channel condition, class-list prompts).
Every random choice takes an explicit numpy Generator, so a caller can seed it per step and
resume without saving any RNG state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dginstyle.data import contract
from dginstyle.io import DataError, read_label_png
from dginstyle.labels import CLASSES, NUM_CLASSES

IGNORE_CHANNEL = NUM_CLASSES  # channel 19 of the condition holds the ignore pixels (docs/method.md 1.2)


def seeded_rng(*keys: int) -> np.random.Generator:
    """A numpy Generator determined by a tuple of non-negative ints (seed, stage, step, ...)."""
    return np.random.default_rng([int(k) for k in keys])


# ----------------------------------------------------------------------------- files


def source_stems(root: Path, split: str = "train") -> list[str]:
    """The stems of a prepared source split; DataError when there are none."""
    root = Path(root)
    contract.read_manifest(root)
    stems = contract.read_split(root, split)
    if not stems:
        raise DataError(f"{root}: split {split!r} is empty")
    return stems


def to_unit_range(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return (rgb.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0


# ----------------------------------------------------------------------------- fine-tune augmentation


def resize_ratio_for(ratio: float, height: int, width: int, crop: int) -> float:
    """The drawn ratio, raised just enough that the resized image covers a crop x crop window.

    At paper scale (GTA 1914x1052, ratios >= 0.5, crop 512) this never changes the ratio. For
    small sources (the miniature world) we upscale instead of padding: padding would teach the
    UNet flat or mirrored borders that never occur at generation time.
    """
    return max(float(ratio), crop / height, crop / width)


def random_resized_crop(image: Image.Image, ratios: list[float], crop: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Bilinear resize by a ratio drawn from `ratios` (raised to cover the crop), random crop.

    Returns the (crop, crop, 3) uint8 array and a record of what was done.
    """
    width, height = image.size
    drawn = float(ratios[int(rng.integers(len(ratios)))])
    ratio = resize_ratio_for(drawn, height, width, crop)
    new_w = max(crop, int(round(width * ratio)))
    new_h = max(crop, int(round(height * ratio)))
    resized = image if (new_w, new_h) == (width, height) else image.resize((new_w, new_h), Image.BILINEAR)
    top = int(rng.integers(new_h - crop + 1))
    left = int(rng.integers(new_w - crop + 1))
    array = np.asarray(resized)[top : top + crop, left : left + crop]
    return np.ascontiguousarray(array), {"ratio": drawn, "ratio_used": ratio, "top": top, "left": left}


# ----------------------------------------------------------------------------- condition and prompt


def one_hot(label: np.ndarray) -> np.ndarray:
    """(H, W) train IDs -> (20, H, W) float32 in {0, 1}; channel 19 = 255 (and any non-class value)."""
    index = np.where(label < NUM_CLASSES, label, IGNORE_CHANNEL).astype(np.int64)
    out = np.zeros((NUM_CLASSES + 1,) + label.shape, dtype=np.float32)
    np.put_along_axis(out, index[None], 1.0, axis=0)
    return out


def class_prompt(label: np.ndarray) -> str:
    """Names of the classes present in the label, in train-ID order, space-joined (docs/method.md 1.2)."""
    present = np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES] > 0
    return " ".join(name for name, here in zip(CLASSES, present) if here)


# ----------------------------------------------------------------------------- rare class sampling


def rcs_probabilities(class_pixels: list[int] | np.ndarray, temperature: float, eligible: np.ndarray | None = None) -> np.ndarray:
    """p(c) = softmax((1 - f_c) / T), f_c = N_c / sum N (docs/method.md section 2), over the classes
    with pixels (and `eligible`, when given); 0 elsewhere."""
    if temperature <= 0:
        raise DataError(f"RCS temperature must be > 0, got {temperature}")
    counts = np.asarray(class_pixels, dtype=np.float64)[:NUM_CLASSES]
    present = counts > 0
    if eligible is not None:
        present &= np.asarray(eligible, dtype=bool)
    if not present.any():
        raise DataError("RCS: the class statistics hold no labelled pixel")
    freq = counts / counts.sum()
    logits = np.where(present, (1.0 - freq) / temperature, -np.inf)
    logits -= logits[present].max()
    prob = np.exp(logits)
    return prob / prob.sum()


class RareClassSampler:
    """Draws (class, image) pairs: c ~ p(c), then an image holding more than `min_pixels` of c.

    Classes are those present in the source statistics with at least one such image. The
    per-image counts of class_stats/<split>.json are used directly, so `min_pixels` may differ
    from the threshold the dataset was prepared with.
    """

    def __init__(self, stats: dict, temperature: float, min_pixels: int, where: str = "class statistics"):
        per_image = stats.get("image_class_pixels")
        if not per_image:
            raise DataError(f"{where}: no per-image class pixel counts (image_class_pixels)")
        self.stems = sorted(per_image)
        counts = np.asarray([per_image[s][:NUM_CLASSES] for s in self.stems], dtype=np.int64)
        totals = np.asarray(stats.get("class_pixels") or counts.sum(axis=0), dtype=np.int64)[:NUM_CLASSES]
        self.images_by_class = {c: [s for s, n in zip(self.stems, counts[:, c]) if n > min_pixels] for c in range(NUM_CLASSES)}
        eligible = np.asarray([bool(self.images_by_class[c]) for c in range(NUM_CLASSES)])
        if not eligible.any():
            raise DataError(f"{where}: no image holds more than {min_pixels} pixels of any class; lower --rcs-min-pixels")
        self.probabilities = rcs_probabilities(totals, temperature, eligible)
        self.min_pixels = min_pixels
        self.temperature = temperature

    def sample(self, rng: np.random.Generator) -> tuple[int, str]:
        cls = int(rng.choice(NUM_CLASSES, p=self.probabilities))
        images = self.images_by_class[cls]
        return cls, images[int(rng.integers(len(images)))]


def source_rare_class_sampler(source: Path, split: str, temperature: float, min_pixels: int) -> RareClassSampler:
    """The RareClassSampler of a prepared labelled dataset's class_stats/<split>.json."""
    import json

    stats_path = Path(source) / "class_stats" / f"{split}.json"
    if not stats_path.is_file():
        raise DataError(f"{stats_path}: no class statistics for RCS (is {source} a labelled prepared dataset?)")
    return RareClassSampler(json.loads(stats_path.read_text()), temperature, min_pixels, str(stats_path))


def centred_window(label: np.ndarray, cls: int, crop: int, rng: np.random.Generator, where: str = "label") -> tuple[int, int, int, int]:
    """A crop x crop window centred on a random pixel of `cls`, clamped to the image.

    Returns (top, left, y, x) with (y, x) the chosen pixel (inside the window).
    """
    height, width = label.shape
    if height < crop or width < crop:
        raise DataError(f"{where}: image is {width}x{height}, smaller than the crop size {crop}; lower --crop-size")
    ys, xs = np.nonzero(label == cls)
    if len(ys) == 0:
        raise DataError(f"{where}: holds no pixel of class {CLASSES[cls]!r} although the class statistics say it does")
    i = int(rng.integers(len(ys)))
    y, x = int(ys[i]), int(xs[i])
    top = min(max(y - crop // 2, 0), height - crop)
    left = min(max(x - crop // 2, 0), width - crop)
    return top, left, y, x


def load_label(root: Path, split: str, stem: str) -> np.ndarray:
    return read_label_png(contract.label_path(Path(root), split, stem))
