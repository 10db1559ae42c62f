"""`select-layouts`: the generation plan (docs/method.md 1.5 and 2), one JSONL row per pair.

For every pair: a rare class c drawn by Rare Class Sampling (RCS), a source image holding
more than `rcs_min_pixels` of c, a crop centred on a random pixel of c (up to `crop_tries`
tries, accepted when c covers more than `crop_min_share` of the crop, else the last try is
kept), the classes present in the crop, and a prompt.

Prompts. A "plain" prompt is the names of the classes present in the crop in train-ID order,
space-joined (docs/method.md 1.2), e.g. "road sidewalk building sky car". A weather prompt is
"A city street scene with {classes}, in {w} weather." The weather schedule (the released data
set: 3000 adverse, 1000 night, 3000 plain of 7000) is scaled to `num_pairs` by largest
remainders and its assignment to pairs shuffled by the seed.

How "sunny" counts (an explicit decision): the released word list is {snowy, rainy, sunny,
foggy, night}, but the released schedule names *adverse-weather* prompts and night prompts.
Sunny weather is not adverse (it is the source's own condition and none of the target
conditions of ACDC: fog, night, rain, snow), so by default an adverse prompt draws w uniformly
from {snowy, rainy, foggy} and a night prompt uses w = night; sunny is never drawn.
`adverse_words` (CLI `--adverse-words`) puts it back for whoever wants the released list.

Every random choice comes from numpy Generators derived from `seed`: one for the schedule
shuffle and, per pair, one seeded by (seed, pair id); the same inputs give a byte-identical
plan and a different seed gives a different one. The plan is written atomically.

Plan row:
    {"id": 17, "split": "train", "stem": "...", "crop": [x0, y0, x1, y1], "size": [height, width],
     "rare_class": {"id": 6, "name": "traffic light"}, "prompt": "...",
     "prompt_kind": "plain" | "adverse" | "night", "weather": "snowy" | ... | null,
     "classes": ["road", ...], "class_ids": [0, ...], "rare_share": 0.031}
`crop` is in native source pixels (x1, y1 exclusive); `size` is the source image's size.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from dginstyle.data import contract
from dginstyle.diffusion.crops import rcs_probabilities  # the one RCS formula, shared with ControlNet training
from dginstyle.io import DataError, atomic_write_text, read_label_png
from dginstyle.labels import CLASSES, NUM_CLASSES

log = logging.getLogger(__name__)

PROMPT_KINDS = ("adverse", "night", "plain")
LAYOUT_SAMPLING = ("rcs", "uniform")
DEFAULT_WEATHER_SCHEDULE = {"adverse": 3000, "night": 1000, "plain": 3000}
ADVERSE_WORDS = ("snowy", "rainy", "foggy")
WEATHER_TEMPLATE = "A city street scene with {classes}, in {weather} weather."


# ----------------------------------------------------------------------------- RCS


def eligible_images(stats: dict, min_pixels: int) -> dict[int, list[str]]:
    """Per class id, the sorted stems holding more than `min_pixels` of it.

    Computed from the per-image counts in class_stats, so that `min_pixels` may differ from
    the threshold the dataset was prepared with (images_by_class is this list at that one).
    """
    per_image = stats["image_class_pixels"]
    return {c: sorted(stem for stem, counts in per_image.items() if counts[c] > min_pixels) for c in range(NUM_CLASSES)}


# ----------------------------------------------------------------------------- crops


def parse_crop_size(value: int | str | tuple[int, int]) -> tuple[int, int]:
    """`512` or "512" -> (512, 512); "WIDTHxHEIGHT" or (width, height) -> (width, height)."""
    if isinstance(value, (tuple, list)):
        width, height = (int(v) for v in value)
    elif isinstance(value, str) and "x" in value:
        width, height = (int(v) for v in value.lower().split("x"))
    else:
        width = height = int(value)
    if width < 1 or height < 1:
        raise ValueError(f"crop size must be positive, got {width}x{height}")
    return width, height


def centred_box(x: int, y: int, crop: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """A crop (width, height) centred on pixel (x, y), clamped into an image of (height, width)."""
    cw, ch = crop
    h, w = size
    x0 = min(max(x - cw // 2, 0), w - cw)
    y0 = min(max(y - ch // 2, 0), h - ch)
    return [int(x0), int(y0), int(x0 + cw), int(y0 + ch)]


def choose_crop(label: np.ndarray, cls: int, crop: tuple[int, int], tries: int, min_share: float, rng: np.random.Generator, where: str = "") -> tuple[list[int], float]:
    """Up to `tries` crops centred on random pixels of `cls`; the first with share > min_share.

    Returns (box, share of `cls` in the box); the last try when none is accepted.
    """
    h, w = label.shape
    if crop[0] > w or crop[1] > h:
        raise DataError(f"{where}: crop {crop[0]}x{crop[1]} is larger than the image {w}x{h}")
    ys, xs = np.nonzero(label == cls)
    if len(ys) == 0:
        raise DataError(f"{where}: holds no pixel of class {CLASSES[cls]!r} although class_stats says it does")
    area = crop[0] * crop[1]
    box, share = None, 0.0
    for _ in range(max(1, tries)):
        i = int(rng.integers(len(ys)))
        box = centred_box(int(xs[i]), int(ys[i]), crop, (h, w))
        x0, y0, x1, y1 = box
        share = float((label[y0:y1, x0:x1] == cls).sum()) / area
        if share > min_share:
            break
    return box, share


def uniform_crop(label: np.ndarray, crop: tuple[int, int], rng: np.random.Generator, where: str = "") -> list[int]:
    """A crop at a uniformly random position (the ablation without rare-class layouts)."""
    h, w = label.shape
    if crop[0] > w or crop[1] > h:
        raise DataError(f"{where}: crop {crop[0]}x{crop[1]} is larger than the image {w}x{h}")
    x0, y0 = int(rng.integers(w - crop[0] + 1)), int(rng.integers(h - crop[1] + 1))
    return [x0, y0, x0 + crop[0], y0 + crop[1]]


# ----------------------------------------------------------------------------- prompts


def class_names(class_ids: list[int]) -> str:
    """Class names in train-ID order, space-joined (docs/method.md 1.2)."""
    return " ".join(CLASSES[c] for c in sorted(class_ids))


def prompt_vocabulary() -> list[str]:
    """Every text the generator's prompts are made of: each class name, the weather template
    and each weather word. A tokenizer built offline for a tiny prior must spell these as whole
    tokens, or a class-list prompt becomes dozens of single characters and the weather word
    falls off the end of the context."""
    weathers = sorted(set(ADVERSE_WORDS) | {"night", "sunny"})
    return list(CLASSES) + [make_prompt(list(range(NUM_CLASSES)), w) for w in weathers]


def make_prompt(class_ids: list[int], weather: str | None) -> str:
    names = class_names(class_ids)
    if weather is None:
        return names
    return WEATHER_TEMPLATE.format(classes=names, weather=weather)


def schedule_counts(schedule: dict[str, int], num_pairs: int) -> dict[str, int]:
    """Scale a {kind: count} schedule to `num_pairs` by largest remainders (ties: kind order)."""
    unknown = set(schedule) - set(PROMPT_KINDS)
    if unknown:
        raise ValueError(f"unknown prompt kinds {sorted(unknown)} in the weather schedule; use {list(PROMPT_KINDS)}")
    if any(v < 0 for v in schedule.values()) or sum(schedule.values()) <= 0:
        raise ValueError(f"weather schedule needs non-negative counts with a positive sum, got {schedule}")
    kinds = [k for k in PROMPT_KINDS if k in schedule]
    total = sum(schedule.values())
    exact = {k: schedule[k] * num_pairs / total for k in kinds}
    counts = {k: int(np.floor(exact[k])) for k in kinds}
    rest = num_pairs - sum(counts.values())
    for k in sorted(kinds, key=lambda k: (-(exact[k] - counts[k]), kinds.index(k)))[:rest]:
        counts[k] += 1
    return counts


def parse_schedule(text: str) -> dict[str, int]:
    """"adverse=3000,night=1000,plain=3000" -> dict."""
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad schedule entry {part!r}: expected kind=count") from None
    return out


# ----------------------------------------------------------------------------- the plan


def select_layouts(
    source: Path,
    out_jsonl: Path,
    num_pairs: int,
    crop_size: int | str | tuple[int, int],
    crop_tries: int = 10,
    crop_min_share: float = 0.01,
    rcs_temperature: float = 0.01,
    rcs_min_pixels: int = contract.DEFAULT_RCS_MIN_PIXELS,
    weather_schedule: dict[str, int] | None = None,
    seed: int = 0,
    split: str = "train",
    adverse_words: tuple[str, ...] = ADVERSE_WORDS,
    sampling: str = "rcs",
) -> list[dict]:
    """Write the generation plan for `num_pairs` pairs to `out_jsonl`; return its rows.

    sampling "rcs" (the paper): a rare class is drawn by RCS and the crop centred on it;
    "uniform" (the ablation without rare-class layouts): a uniformly drawn image and crop.
    """
    source, out_jsonl = Path(source), Path(out_jsonl)
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
    if sampling not in LAYOUT_SAMPLING:
        raise ValueError(f"sampling must be one of {LAYOUT_SAMPLING}, got {sampling!r}")
    crop = parse_crop_size(crop_size)
    contract.read_manifest(source)
    stats_path = source / "class_stats" / f"{split}.json"
    if not stats_path.is_file():
        raise DataError(f"{stats_path}: no class statistics for split {split!r} (is the source labelled?)")
    stats = json.loads(stats_path.read_text())
    images = eligible_images(stats, rcs_min_pixels)
    probs = rcs_probabilities(stats["class_pixels"], rcs_temperature, eligible=np.array([len(images[c]) > 0 for c in range(NUM_CLASSES)]))
    schedule = dict(DEFAULT_WEATHER_SCHEDULE if weather_schedule is None else weather_schedule)
    counts = schedule_counts(schedule, num_pairs)
    if counts.get("adverse") and not adverse_words:
        raise ValueError("the schedule asks for adverse prompts but no adverse weather words are given")

    all_stems = sorted(stats["image_class_pixels"]) if sampling == "uniform" else []
    kinds = np.array([k for k in PROMPT_KINDS for _ in range(counts.get(k, 0))])
    np.random.default_rng(seed).shuffle(kinds)

    rows = []
    for pair_id in range(num_pairs):
        rng = np.random.default_rng([seed, pair_id])
        if sampling == "rcs":
            cls = int(rng.choice(NUM_CLASSES, p=probs))
            stem = images[cls][int(rng.integers(len(images[cls])))]
            path = contract.label_path(source, split, stem)
            label = read_label_png(path)
            box, share = choose_crop(label, cls, crop, crop_tries, crop_min_share, rng, where=str(path))
        else:
            cls, share = None, None
            stem = all_stems[int(rng.integers(len(all_stems)))]
            path = contract.label_path(source, split, stem)
            label = read_label_png(path)
            box = uniform_crop(label, crop, rng, where=str(path))
        x0, y0, x1, y1 = box
        present = [int(c) for c in np.unique(label[y0:y1, x0:x1]) if c < NUM_CLASSES]
        kind = str(kinds[pair_id])
        weather = None if kind == "plain" else "night" if kind == "night" else str(adverse_words[int(rng.integers(len(adverse_words)))])
        rows.append(
            {
                "id": pair_id,
                "split": split,
                "stem": stem,
                "crop": box,
                "size": [int(label.shape[0]), int(label.shape[1])],
                "rare_class": None if cls is None else {"id": cls, "name": CLASSES[cls]},
                "prompt": make_prompt(present, weather),
                "prompt_kind": kind,
                "weather": weather,
                "classes": [CLASSES[c] for c in present],
                "class_ids": present,
                "rare_share": None if share is None else round(share, 6),
            }
        )
    atomic_write_text(out_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    log.info("wrote %d layouts to %s (%s)", len(rows), out_jsonl, counts)
    return rows


def crop_of(full: np.ndarray, row: dict, where: Path | str) -> np.ndarray:
    """The train-ID crop a plan row names, cut from its full source label (checked to fit)."""
    x0, y0, x1, y1 = row["crop"]
    if x0 < 0 or y0 < 0 or y1 > full.shape[0] or x1 > full.shape[1]:
        raise DataError(f"{where}: pair {row['id']}: crop {row['crop']} lies outside {row['stem']} ({full.shape[1]}x{full.shape[0]})")
    return np.ascontiguousarray(full[y0:y1, x0:x1])


def read_plan(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: plan not found (run `dginstyle select-layouts` first)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not a JSON row ({exc})") from None
    return rows


# ----------------------------------------------------------------------------- CLI


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select-layouts",
        help="the generation plan: RCS-chosen source crops and their prompts (JSONL)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--source", required=True, type=Path, help="prepared source dataset")
    p.add_argument("--out", required=True, type=Path, help="plan JSONL (written atomically)")
    p.add_argument("--num-pairs", required=True, type=int, help="number of pairs")
    p.add_argument("--crop-size", default="512", help="crop size in native pixels: N or WIDTHxHEIGHT")
    p.add_argument("--crop-tries", type=int, default=10)
    p.add_argument("--crop-min-share", type=float, default=0.01, help="accept a crop when the rare class covers more than this share")
    p.add_argument("--rcs-temperature", type=float, default=0.01)
    p.add_argument("--rcs-min-pixels", type=int, default=contract.DEFAULT_RCS_MIN_PIXELS)
    p.add_argument("--weather", type=parse_schedule, default=dict(DEFAULT_WEATHER_SCHEDULE), help="prompt schedule, e.g. adverse=3000,night=1000,plain=3000")
    p.add_argument("--adverse-words", default=",".join(ADVERSE_WORDS), help="weather words of adverse prompts (default excludes sunny)")
    p.add_argument("--sampling", choices=LAYOUT_SAMPLING, default="rcs", help="rcs: crops centred on RCS-drawn rare classes (paper); uniform: random image and crop (ablation)")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    select_layouts(
        source=args.source,
        out_jsonl=args.out,
        num_pairs=args.num_pairs,
        crop_size=args.crop_size,
        crop_tries=args.crop_tries,
        crop_min_share=args.crop_min_share,
        rcs_temperature=args.rcs_temperature,
        rcs_min_pixels=args.rcs_min_pixels,
        weather_schedule=args.weather,
        seed=args.seed,
        split=args.split,
        adverse_words=tuple(w.strip() for w in args.adverse_words.split(",") if w.strip()),
        sampling=args.sampling,
    )
