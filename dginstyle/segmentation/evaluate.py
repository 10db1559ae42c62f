"""`evaluate`: a trained segmentation run on one split of a prepared target dataset (docs/method.md section 4).

Each image is resized to the test size (keep ratio by default, as mmseg's Resize), predicted
by sliding-window inference (window = training crop, stride = half, mmseg's slide mode), its
logits resized back to the label's resolution (bilinear) and arg-maxed; the dataset-level
confusion matrix (dginstyle.metrics) gives the metrics JSON.

Memory: the network sees a batch of images at the test size, but logits at a label's full
size exist for one image at a time (a 4000x3000 Mapillary label holds ~0.9 GB of float32
logits), and the confusion matrix is accumulated image by image. Everything runs on the
device the stage was given (`--device`, CUDA when present).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from dginstyle.devices import DEVICE_CHOICES_HELP
from dginstyle.io import DataError, atomic_write_bytes, atomic_write_json, encode_label_png, read_label_png
from dginstyle.parallel import default_threads

log = logging.getLogger(__name__)


def load_run(run: Path, *, window: tuple[int, int] | None = None, stride: tuple[int, int] | None = None, device: str = "auto"):
    """(model in eval mode, config) of a run folder: config.py + weights.safetensors.

    window / stride are (h, w); defaults: the run's training crop and half of it. device:
    see dginstyle.devices.resolve_device (auto = CUDA when present).
    """
    from dginstyle.compat import import_mmseg, load_weights
    from dginstyle.devices import resolve_device
    from dginstyle.segmentation import register_modules
    from dginstyle.segmentation.train import CONFIG, WEIGHTS

    import_mmseg()
    register_modules()
    from mmengine.config import Config
    from mmseg.apis import init_model

    device = resolve_device(device)
    run = Path(run)
    config_file, weights_file = run / CONFIG, run / WEIGHTS
    if not config_file.is_file():
        raise DataError(f"{run}: not a segmentation run (no {CONFIG})")
    cfg = Config.fromfile(str(config_file))
    crop = tuple(cfg.model.data_preprocessor.get("size") or cfg.model.test_cfg.crop_size)
    window = tuple(window or crop)
    stride = tuple(stride or (max(1, window[0] // 2), max(1, window[1] // 2)))
    cfg.model.test_cfg = dict(mode="slide", crop_size=window, stride=stride)
    model = init_model(cfg, None, device=device)
    state, _ = load_weights(weights_file, device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{weights_file}: does not match the run's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return model, cfg


def read_bgr(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])  # mmseg's LoadImageFromFile gives BGR


def _resize(image: np.ndarray, test_size: tuple[int, int] | None, keep_ratio: bool) -> np.ndarray:
    import mmcv

    if test_size is None:
        return image
    if keep_ratio:
        return mmcv.imrescale(image, tuple(test_size), interpolation="bilinear")
    return mmcv.imresize(image, tuple(test_size), interpolation="bilinear")


def _normalise(cfg, resized_bgr: np.ndarray):
    """[3, H, W] float tensor normalised as the run's data preprocessor does."""
    import torch

    pre = cfg.model.data_preprocessor
    x = torch.from_numpy(np.ascontiguousarray(resized_bgr)).permute(2, 0, 1).float()
    if pre.get("bgr_to_rgb", False):
        x = x[[2, 1, 0]]
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def model_device(model):
    """The torch device the model's weights live on (inputs go there)."""
    return next(model.parameters()).device


def test_size_logits(model, cfg, images_bgr: list[np.ndarray], test_size=None, keep_ratio: bool = True):
    """Float logits [1, C, h_i, w_i] of each BGR image at its size after resizing to the test
    size (sliding-window inference), on the model's device.

    Images that have the same size after resizing go through the network together: mmseg's
    slide inference cuts the same windows from every image of a batch, so a batch of N costs
    one forward per window instead of N (the tiny models are dominated by per-call overhead).
    """
    import torch

    device = model_device(model)
    tensors = [_normalise(cfg, _resize(image, test_size, keep_ratio)) for image in images_bgr]
    results: list = [None] * len(tensors)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(tensors):
        by_shape.setdefault(tuple(x.shape[1:]), []).append(i)
    for (h, w), members in by_shape.items():
        batch = torch.stack([tensors[i] for i in members]).to(device)
        meta = dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])
        with torch.no_grad():
            logits = model.inference(batch, [meta] * len(members))
        for row, i in enumerate(members):
            results[i] = logits[row : row + 1]
    return results


def at_size(logits, out_hw: tuple[int, int]):
    """[1, C, H, W] logits resized (bilinear) to out_hw = (H, W); unchanged when already there."""
    import torch.nn.functional as F

    if tuple(logits.shape[2:]) == tuple(out_hw):
        return logits
    return F.interpolate(logits, size=tuple(out_hw), mode="bilinear", align_corners=False)


def predict_logits_batch(model, cfg, images_bgr: list[np.ndarray], out_hw: list[tuple[int, int]], test_size=None, keep_ratio: bool = True):
    """Float logits [1, C, H_i, W_i] of each BGR image at its out_hw[i] (sliding-window inference).

    Holds every image's full-size logits at once: for a few small images only (tests, a
    benchmark); evaluation goes through iter_predictions, one full-size image at a time.
    """
    if len(images_bgr) != len(out_hw):
        raise ValueError("one output size per image")
    small = test_size_logits(model, cfg, images_bgr, test_size=test_size, keep_ratio=keep_ratio)
    return [at_size(one, hw) for one, hw in zip(small, out_hw)]


def predict_logits(model, cfg, image_bgr: np.ndarray, out_hw: tuple[int, int], test_size=None, keep_ratio: bool = True):
    """(1, C, H, W) float logits of one BGR image at `out_hw` (sliding-window inference), on the model's device."""
    return predict_logits_batch(model, cfg, [image_bgr], [out_hw], test_size=test_size, keep_ratio=keep_ratio)[0]


def predict(model, cfg, image_bgr: np.ndarray, out_hw: tuple[int, int], test_size=None, keep_ratio: bool = True) -> np.ndarray:
    """(H, W) uint8 train-ID prediction of one BGR image, at `out_hw`."""
    return _argmax_uint8(predict_logits(model, cfg, image_bgr, out_hw, test_size=test_size, keep_ratio=keep_ratio))


def _argmax_uint8(logits) -> np.ndarray:
    import torch

    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


#: Images predicted together (same size after resizing). Memory: batch x window x classes logits.
EVAL_BATCH = 16


def iter_predictions(model, cfg, samples, *, test_size=None, keep_ratio: bool = True, batch_size: int = EVAL_BATCH):
    """Yield (stem, label_file, label, prediction) for (stem, image_file, label_file) samples.

    Images are read and predicted `batch_size` at a time at the test size (test_size_logits);
    each is then resized to its label's resolution and arg-maxed on its own, so full-size logits
    exist for one image at a time. Each prediction is the (H, W) uint8 train-ID map at its
    label's resolution. Shared by `evaluate` and the label-fidelity benchmark, so that both
    score images the same way.
    """
    for first in range(0, len(samples), batch_size):
        chunk = samples[first : first + batch_size]
        labels = [read_label_png(label_file) for _, _, label_file in chunk]
        images = [read_bgr(image_file) for _, image_file, _ in chunk]
        small = test_size_logits(model, cfg, images, test_size=test_size, keep_ratio=keep_ratio)
        del images
        for index, ((stem, _, label_file), label) in enumerate(zip(chunk, labels)):
            prediction = _argmax_uint8(at_size(small[index], label.shape))
            small[index] = None  # this image's logits are done with
            yield stem, label_file, label, prediction


def evaluate_segmentation(
    run: Path,
    dataset: Path,
    split: str,
    out_json: Path,
    *,
    test_size: tuple[int, int] | None = None,
    keep_ratio: bool = True,
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    save_predictions: Path | None = None,
    batch_size: int = EVAL_BATCH,
    device: str = "auto",
) -> dict:
    """Predict every image of `split` and write the metrics JSON; returns it.

    test_size is (w, h) (None: native size); window / stride are (h, w) (default: the
    training crop and half of it). `save_predictions`: a folder for <stem>.png predictions.
    device: auto (CUDA when present), cpu, cuda, cuda:N.
    """
    import torch

    from dginstyle.data.contract import read_manifest
    from dginstyle.labels import NUM_CLASSES
    from dginstyle.metrics import confusion_matrix, metrics_from_confusion
    from dginstyle.segmentation.datasets import prepared_samples

    torch.set_num_threads(default_threads())
    run, dataset = Path(run), Path(dataset)
    manifest = read_manifest(dataset)
    samples = prepared_samples(dataset, split)
    if not samples:
        raise DataError(f"{dataset}: split {split!r} is empty")
    if batch_size < 1:
        raise DataError(f"evaluate: --batch-size must be at least 1, got {batch_size}")
    model, cfg = load_run(run, window=window, stride=stride, device=device)
    test_cfg = dict(cfg.model.test_cfg)
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    if save_predictions is not None:
        Path(save_predictions).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for stem, label_file, label, pred in iter_predictions(model, cfg, samples, test_size=test_size, keep_ratio=keep_ratio, batch_size=batch_size):
        try:
            conf += confusion_matrix(pred, label)
        except ValueError as exc:
            raise DataError(f"{label_file}: {exc}") from None
        if save_predictions is not None:
            atomic_write_bytes(Path(save_predictions) / f"{stem}.png", encode_label_png(pred))
    seconds = time.perf_counter() - start
    result = {
        "dataset": manifest.get("dataset") or manifest.get("name") or dataset.name,
        "dataset_dir": str(dataset),
        "split": split,
        "run": str(run),
        **metrics_from_confusion(conf, num_images=len(samples)),
        "test_size_wh": list(test_size) if test_size else None,
        "keep_ratio": keep_ratio,
        "inference": {"mode": "slide", "window_hw": list(test_cfg["crop_size"]), "stride_hw": list(test_cfg["stride"]), "flip": False, "multi_scale": False},
        "predictions_resized_to": "label resolution (bilinear logits, then argmax)",
        "seconds": round(seconds, 3),
        "images_per_second": round(len(samples) / seconds, 4) if seconds > 0 else None,
        "threads": torch.get_num_threads(),
        "device": str(model_device(model)),
        "batch_size": batch_size,
        "confusion_matrix": conf.tolist(),
    }
    atomic_write_json(out_json, result)
    return result


def _size_wh(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT") from None
    return (w, h)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="mIoU of a trained segmentation run on a prepared dataset split (sliding window)",
        description="Resize to the test size, sliding-window inference (window = training crop, stride = half), "
        "predictions resized to the label size, dataset-level confusion matrix and per-class IoU as JSON.",
    )
    p.add_argument("--run", required=True, type=Path, help="train-segmentation output folder")
    p.add_argument("--dataset", required=True, type=Path, help="prepared target dataset")
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True, type=Path, help="metrics JSON")
    p.add_argument("--test-size", type=_size_wh, default=None, help="WIDTHxHEIGHT to resize to before inference (default: native)")
    p.add_argument("--no-keep-ratio", action="store_true", help="resize to exactly the test size")
    p.add_argument("--window", type=_size_wh, default=None, help="sliding window WIDTHxHEIGHT (default: the training crop)")
    p.add_argument("--stride", type=_size_wh, default=None, help="sliding stride WIDTHxHEIGHT (default: half the window)")
    p.add_argument("--save-predictions", type=Path, default=None, help="folder for <stem>.png train-ID predictions")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH, help="images predicted together at the test size (default %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    flip = lambda wh: (wh[1], wh[0]) if wh else None  # noqa: E731  (CLI is WxH, internals h, w)
    evaluate_segmentation(
        args.run, args.dataset, args.split, args.out, test_size=args.test_size, keep_ratio=not args.no_keep_ratio,
        window=flip(args.window), stride=flip(args.stride), save_predictions=args.save_predictions,
        batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
