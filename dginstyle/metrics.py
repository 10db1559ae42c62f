"""Semantic-segmentation metrics over the 19 Cityscapes train classes (255 = ignore).

One dataset-level confusion matrix is accumulated over all images (rows = ground truth,
columns = prediction) and every metric is derived from it, so the numbers are those of
mmseg's `IoUMetric` (which sums per-image intersection/union histograms over the dataset):

* IoU_c  = TP_c / (TP_c + FP_c + FN_c), undefined (None in JSON) when the class is absent
  from both ground truth and prediction;
* mIoU   = mean of IoU_c over the classes whose union is > 0, i.e. present in the ground
  truth OR the prediction (mmseg: `np.nanmean` over a 0/0 = NaN vector);
* aAcc   = sum_c TP_c / valid pixels; Acc_c = TP_c / gt pixels of c; mAcc over gt classes.

All values are fractions in [0, 1]; tables multiply by 100.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dginstyle.data.contract import label_path, read_manifest, read_split
from dginstyle.io import DataError, atomic_write_json, read_label_png
from dginstyle.labels import CLASSES, IGNORE, NUM_CLASSES
from dginstyle.parallel import default_threads

log = logging.getLogger(__name__)

MIOU_OVER = "classes with union > 0 (present in ground truth or prediction), as mmseg IoUMetric"


def confusion_matrix(
    pred: np.ndarray, label: np.ndarray, num_classes: int = NUM_CLASSES, ignore: int = IGNORE
) -> np.ndarray:
    """(C, C) int64 confusion matrix of one image; rows = ground truth, columns = prediction.

    Pixels whose ground truth is `ignore` are skipped. Any other ground-truth value outside
    0..C-1, or a prediction outside 0..C-1 on a counted pixel, raises ValueError: a
    prediction must be a train ID and a label must be a train ID or `ignore`.

    One `np.bincount` over the whole image. For uint8 maps (every PNG this project reads) the
    index is gt * 256 + pred over all pixels, so no masking or int64 copy of the image is
    needed, and the ignore row and out-of-range values are read off the 256 x 256 histogram;
    other dtypes use gt * C + pred on the non-ignored pixels.
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if pred.dtype == np.uint8 and label.dtype == np.uint8 and num_classes <= 256 and 0 <= ignore < 256:
        index = (label.astype(np.uint16) << 8) | pred
        full = np.bincount(index.ravel(), minlength=256 * 256).reshape(256, 256)
        full[ignore] = 0
        counted = full.sum(axis=1)
        if counted[num_classes:].any():
            bad = np.flatnonzero(counted[num_classes:]) + num_classes
            raise ValueError(f"ground truth holds values {bad[:10].tolist()} that are neither train IDs 0..{num_classes - 1} nor ignore {ignore}")
        if full[:num_classes, num_classes:].any():
            bad = np.flatnonzero(full[:num_classes, num_classes:].sum(axis=0)) + num_classes
            raise ValueError(f"prediction holds values {bad[:10].tolist()} on non-ignored pixels; a prediction must be a train ID 0..{num_classes - 1}")
        return np.ascontiguousarray(full[:num_classes, :num_classes], dtype=np.int64)

    gt = label.ravel()
    pr = pred.ravel()
    valid = gt != ignore
    if not valid.all():
        gt = gt[valid]
        pr = pr[valid]
    # Widen before arithmetic: uint8 * 19 would overflow.
    gt = gt.astype(np.int64, copy=False)
    pr = pr.astype(np.int64, copy=False)
    if gt.size:
        if gt.min() < 0 or gt.max() >= num_classes:
            bad = np.unique(gt[(gt < 0) | (gt >= num_classes)])
            raise ValueError(f"ground truth holds values {bad[:10].tolist()} that are neither train IDs 0..{num_classes - 1} nor ignore {ignore}")
        if pr.min() < 0 or pr.max() >= num_classes:
            bad = np.unique(pr[(pr < 0) | (pr >= num_classes)])
            raise ValueError(f"prediction holds values {bad[:10].tolist()} on non-ignored pixels; a prediction must be a train ID 0..{num_classes - 1}")
    counts = np.bincount(gt * num_classes + pr, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def metrics_from_confusion(conf: np.ndarray, num_images: int | None = None, classes: tuple[str, ...] | None = None) -> dict:
    """Every metric of a (C, C) confusion matrix, JSON-ready (NaN -> None), as fractions."""
    conf = np.asarray(conf, dtype=np.int64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    num_classes = conf.shape[0]
    if classes is None:
        classes = CLASSES if num_classes == NUM_CLASSES else tuple(str(c) for c in range(num_classes))
    tp = np.diag(conf).astype(np.float64)
    gt_pixels = conf.sum(axis=1)
    pred_pixels = conf.sum(axis=0)
    union = gt_pixels + pred_pixels - np.diag(conf)
    iou = _ratio(tp, union)
    acc = _ratio(tp, gt_pixels)
    total = int(conf.sum())
    present = union > 0
    in_gt = gt_pixels > 0
    return {
        "values": "fractions in [0, 1] (tables show percent)",
        "miou_over": MIOU_OVER,
        "mIoU": float(np.mean(iou[present])) if present.any() else None,
        "aAcc": float(tp.sum() / total) if total else None,
        "mAcc": float(np.mean(acc[in_gt])) if in_gt.any() else None,
        "macc_over": "classes present in the ground truth, as mmseg IoUMetric",
        "num_classes_in_miou": int(present.sum()),
        "classes": list(classes),
        "IoU": dict(zip(classes, _listed(iou))),
        "Acc": dict(zip(classes, _listed(acc))),
        "gt_pixels": dict(zip(classes, (int(v) for v in gt_pixels))),
        "pred_pixels": dict(zip(classes, (int(v) for v in pred_pixels))),
        "valid_pixels": total,
        "num_images": num_images,
    }


def evaluate_prediction_folder(
    pred_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    split: str,
    out_json: str | os.PathLike,
    threads: int | None = None,
) -> dict:
    """Score <pred_dir>/<stem>.png against <dataset_dir>/labels/<split>/<stem>.png for every stem.

    Writes the metrics (plus the confusion matrix) to `out_json` atomically and returns them.
    A missing prediction, a size mismatch or an out-of-range value raises DataError.
    """
    pred_dir = Path(pred_dir)
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    stems = read_split(dataset_dir, split)
    if not stems:
        raise DataError(f"{dataset_dir}: split {split!r} is empty; nothing to evaluate")
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")

    present = {p.stem for p in pred_dir.iterdir() if p.suffix == ".png"}
    missing = [s for s in stems if s not in present]
    if missing:
        raise DataError(
            f"{pred_dir / (missing[0] + '.png')}: prediction missing "
            f"({len(missing)} of {len(stems)} predictions for split {split!r} are missing)"
        )
    extra = len(present - set(stems))

    def one(stem: str) -> np.ndarray:
        gt_file = label_path(dataset_dir, split, stem)
        pred_file = pred_dir / f"{stem}.png"
        gt = read_label_png(gt_file)
        pred = read_label_png(pred_file, what="prediction")
        if gt.shape != pred.shape:
            raise DataError(
                f"{pred_file}: prediction size {pred.shape[1]}x{pred.shape[0]} (WxH) differs from "
                f"label {gt_file} size {gt.shape[1]}x{gt.shape[0]}"
            )
        try:
            return confusion_matrix(pred, gt)
        except ValueError as exc:
            raise DataError(f"{pred_file} vs {gt_file}: {exc}") from None

    threads = threads or default_threads()
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    if threads == 1:
        for stem in stems:
            conf += one(stem)
    else:
        # PIL's PNG decoding and numpy's bincount release the GIL: threads overlap them.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for matrix in pool.map(one, stems):
                conf += matrix

    result = {
        "dataset": manifest.get("dataset") or manifest.get("name") or dataset_dir.name,
        "dataset_dir": str(dataset_dir),
        "split": split,
        "pred_dir": str(pred_dir),
        **metrics_from_confusion(conf, num_images=len(stems)),
        "extra_predictions_ignored": extra,
        "ignore_index": IGNORE,
        "confusion_matrix_axes": "rows = ground truth, columns = prediction (train IDs)",
        "confusion_matrix": conf.tolist(),
    }
    atomic_write_json(out_json, result)
    log.info("%s/%s: mIoU %.2f%% over %d images -> %s", result["dataset"], split, 100 * (result["mIoU"] or 0), len(stems), out_json)
    return result
