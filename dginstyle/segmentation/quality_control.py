"""`quality-control`: filter a generated shard's labels with a segmenter trained on the source.

docs/method.md 1.6: the released DGInStyle has no quality control; peers (FreeMask, IELDG) mark
noisy synthetic pixels as ignore. A segmentation run trained on the source alone predicts
each generated image, and where it disagrees with the condition label the label becomes 255:

- mode `class`: a class of the condition whose pixels the segmenter recognises less often
  than `threshold` (recall: the share of the class's pixels predicted as that class) is
  ignored wherever it occurs in that label. A generator that did not draw a car where the
  layout asked for one loses the car, not the whole image.
- mode `pixel`: a pixel whose prediction differs from the label, with a softmax confidence of
  at least `threshold`, is ignored (an unsure disagreement is kept).

It lives in the segmentation layer because it needs a segmenter; it reads the shard's files
and never imports the generator. The output is a complete shard (images hard-linked or
copied, pairs.jsonl, filtered labels, manifest.json) built in a hidden folder and moved into
place at the end, plus quality_control.json: the fraction of labelled pixels filtered,
overall, per class and per pair. Its manifest is the input shard's with the sha256 of its own
files (the filtered labels'; the input's label hashes kept as `unfiltered_label_sha256`), so
that train-segmentation checks it as it checks a generated shard (shard_check.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from dginstyle.io import DataError, atomic_write_json, encode_label_png, fresh_staging_dir, read_label_png, replace_dir, sha256_bytes, sha256_file
from dginstyle.labels import CLASSES, IGNORE, NUM_CLASSES
from dginstyle.devices import DEVICE_CHOICES_HELP
from dginstyle.parallel import default_threads

log = logging.getLogger(__name__)

MODES = ("class", "pixel")
REPORT = "quality_control.json"


def filter_label(label: np.ndarray, probabilities: np.ndarray, mode: str, threshold: float) -> np.ndarray:
    """The label with the pixels the segmenter disagrees with set to ignore.

    label: (H, W) uint8 train IDs (255 = ignore); probabilities: (C, H, W) softmax of the
    segmenter at the label's resolution.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if probabilities.shape[1:] != label.shape:
        raise ValueError(f"probabilities {probabilities.shape[1:]} and label {label.shape} differ in size")
    prediction = probabilities.argmax(axis=0)
    out = label.copy()
    labelled = label != IGNORE
    if mode == "pixel":
        confidence = probabilities.max(axis=0)
        out[labelled & (prediction != label) & (confidence >= threshold)] = IGNORE
        return out
    for c in np.unique(label[labelled]):
        where = label == c
        recall = float((prediction[where] == c).mean())
        if recall < threshold:
            out[where] = IGNORE
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def quality_control(shard: Path, run: Path, out: Path, mode: str = "class", threshold: float = 0.5, device: str = "auto") -> dict:
    """Write the filtered copy of generated `shard` to `out`; returns the report. device: auto
    (CUDA when present), cpu, cuda, cuda:N."""
    import torch

    from dginstyle.segmentation.datasets import generated_samples
    from dginstyle.segmentation.evaluate import load_run, predict_logits, read_bgr
    from dginstyle.segmentation.shard_check import UNFILTERED_LABEL_SHA256, verify_shard

    if mode not in MODES:
        raise DataError(f"quality-control: mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= threshold <= 1.0:
        raise DataError(f"quality-control: threshold must lie in [0, 1], got {threshold}")
    torch.set_num_threads(default_threads())
    shard, run, out = Path(shard), Path(run), Path(out)
    samples = generated_samples(shard)
    verify_shard(shard, samples, default_threads())  # a damaged pair: one line naming it, before the segmenter loads
    model, cfg = load_run(run, device=device)
    staging = fresh_staging_dir(out, "quality-control")
    (staging / "images").mkdir()
    (staging / "labels").mkdir()
    start = time.perf_counter()
    labelled = np.zeros(NUM_CLASSES, dtype=np.int64)
    removed = np.zeros(NUM_CLASSES, dtype=np.int64)
    pairs = []
    label_sha256, image_sha256 = {}, {}
    for pair_id, image_path, label_path in samples:
        label = read_label_png(label_path)
        logits = predict_logits(model, cfg, read_bgr(image_path), label.shape)
        probabilities = torch.softmax(logits[0].float(), dim=0).cpu().numpy()
        del logits
        if probabilities.shape[0] != NUM_CLASSES:
            raise DataError(f"{run}: the segmenter predicts {probabilities.shape[0]} classes, expected {NUM_CLASSES}")
        filtered = filter_label(label, probabilities, mode, threshold)
        before = np.bincount(label[label != IGNORE], minlength=NUM_CLASSES)[:NUM_CLASSES]
        after = np.bincount(filtered[filtered != IGNORE], minlength=NUM_CLASSES)[:NUM_CLASSES]
        labelled += before
        removed += before - after
        pairs.append({"id": pair_id, "filtered_fraction": round(float((before - after).sum() / max(1, before.sum())), 6)})
        encoded = encode_label_png(filtered)
        (staging / "labels" / label_path.name).write_bytes(encoded)
        label_sha256[str(pair_id)] = sha256_bytes(encoded)
        _link_or_copy(image_path, staging / "images" / image_path.name)
        image_sha256[str(pair_id)] = sha256_file(staging / "images" / image_path.name)
    shutil.copyfile(shard / "pairs.jsonl", staging / "pairs.jsonl")
    manifest = json.loads((shard / "manifest.json").read_text()) if (shard / "manifest.json").is_file() else {}
    settings = {"mode": mode, "threshold": threshold, "segmenter": str(run), "shard": str(shard)}
    report = {
        **settings,
        "pairs": len(samples),
        "filtered_fraction": round(float(removed.sum() / max(1, labelled.sum())), 6),
        "per_class": {
            CLASSES[c]: {"labelled_pixels": int(labelled[c]), "filtered_fraction": round(float(removed[c] / labelled[c]), 6) if labelled[c] else None}
            for c in range(NUM_CLASSES)
        },
        "per_pair": pairs,
        "seconds": round(time.perf_counter() - start, 3),
    }
    # The hashes are those of this folder's files (train-segmentation checks them); the
    # generator's label hashes are kept under their own key, as a record of what was filtered.
    qc_manifest = dict(manifest, quality_control=settings, image_sha256=image_sha256, label_sha256=label_sha256)
    qc_manifest[UNFILTERED_LABEL_SHA256] = manifest.get("label_sha256")
    atomic_write_json(staging / "manifest.json", qc_manifest)
    atomic_write_json(staging / REPORT, report)
    replace_dir(staging, out)
    log.info("%s: %d pairs, %.2f%% of labelled pixels filtered (%s, threshold %g)", out, len(samples), 100 * report["filtered_fraction"], mode, threshold)
    return report


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quality-control",
        help="filter a generated shard's labels where a source-trained segmenter disagrees",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--shard", required=True, type=Path, help="generated shard folder (pairs.jsonl, images/, labels/)")
    p.add_argument("--run", required=True, type=Path, help="segmentation run trained on the source only")
    p.add_argument("--out", required=True, type=Path, help="the filtered shard (written whole or not at all)")
    p.add_argument("--mode", choices=MODES, default="class")
    p.add_argument("--threshold", type=float, default=0.5, help="class: minimum recall kept; pixel: minimum confidence of a disagreement that is filtered")
    p.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    quality_control(args.shard, args.run, args.out, mode=args.mode, threshold=args.threshold, device=args.device)
