"""`train-segmentation`: a segmenter (DAFormer, DeepLabV2 or SegFormer: `catalog.MODELS_`) on
source + generated data, mmengine Runner.

Schedule (docs/method.md section 3): AdamW (head lr x10), linear warm-up then poly decay, an
iteration-based loop, checkpoints every N iterations in `work_dir`; a killed run started again
with the same `work_dir` resumes from its latest checkpoint (loaded weights-only with the
mmengine allowlist of dginstyle.compat; a checkpoint outside `work_dir` is refused).

Output folder (written in a hidden sibling, renamed when complete):
    weights.safetensors   final model state dict
    config.py             the mmseg/mmengine config (mmseg.apis.init_model(config.py) builds the model)
    train_log.jsonl       one JSON row per log interval: iter, loss, lr, sample origins
    metadata.json         settings, dataset sizes, timing, versions

Source-only extras of the paper's setting (DAFormer's and HRDA's; all off by default):
    --feature-distance      ImageNet feature distance on thing classes against a frozen copy of
                            the pretrained backbone (feature_distance.py; needs --pretrained)
    --rare-class-sampling   rare class sampling of the source images (rcs.py)
    --source-subset         train on a presampled source subset (presample.py, the release's
                            512 setting) instead of the whole source split; with --tagged-recrop
                            each of its images is re-cut until it shows the class it was drawn for
    --shade                 SHADE style hallucination with style (and retrospection) consistency
                            (shade.py; the retrospection term needs --pretrained)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path

from dginstyle.io import DataError, atomic_write_json, fresh_staging_dir, naming, replace_dir, set_aside, sha256_file
from dginstyle.parallel import default_threads
from dginstyle.segmentation import shade as shade_defaults
from dginstyle.segmentation.catalog import MODEL_NAMES

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
CONFIG = "config.py"
TRAIN_LOG = "train_log.jsonl"
METADATA = "metadata.json"

# Paper (docs/method.md section 3): lr 6e-5, wd 0.01, 1500 warm-up, poly power 1.0, 40k iterations, batch 2, crop 512.
DEFAULTS = dict(
    model="daformer_mitb5", iterations=40000, batch_size=2, crop_size=(512, 512), learning_rate=6e-5,
    head_lr_mult=10.0, weight_decay=0.01, warmup_iterations=1500, poly_power=1.0, seed=0,
)  # fmt: skip


def default_loader_workers(threads: int) -> int:
    """Data-loader workers when none are asked for: with CUDA, decoding and augmenting images on
    the main process starves the GPU, so one worker per thread of the job (at most 8); on a CPU
    the workers would compete with the network for the same cores, so none."""
    import torch

    return min(8, max(1, threads)) if torch.cuda.is_available() else 0


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint named in <work_dir>/last_checkpoint, checked to lie inside work_dir."""
    from dginstyle.compat import check_inside_run_dir

    pointer = Path(work_dir) / "last_checkpoint"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name:
        return None
    path = Path(name) if Path(name).is_absolute() else Path(work_dir) / name
    moved = Path(work_dir) / path.name
    if not path.resolve().is_relative_to(Path(work_dir).resolve()) and moved.is_file():
        # mmengine writes the pointer as an absolute path, so a run folder that was moved or
        # copied names its old place; the checkpoint of that name in this folder is the one meant
        log.warning("%s names %s, outside the run folder (moved?): resuming from %s", pointer, path, moved)
        path = moved
    return check_inside_run_dir(path, work_dir)


#: In the work folder: what the checkpoints there were trained with (see set_aside_stale_checkpoints).
SETTINGS = "settings.json"


def data_fingerprint(source: Path, generated: list[Path], source_subset: Path | None = None) -> dict:
    """sha256 of the manifests of the training data: the source's (it lists every label file's
    hash) and each generated shard's (its generator, plan and settings), and of the presampled
    subset's list, so that new data under the same paths counts as other settings (None where a
    folder has no manifest)."""

    def manifest_sha256(folder: Path, name: str = "manifest.json") -> str | None:
        manifest = Path(folder) / name
        return sha256_file(manifest) if manifest.is_file() else None

    fingerprint = {"source_manifest": manifest_sha256(source), "generated_manifests": [manifest_sha256(g) for g in generated]}
    if source_subset is not None:  # only then: the record of runs without a subset stays as it was
        from dginstyle.segmentation.presample import SUBSET

        fingerprint["source_subset"] = manifest_sha256(source_subset, SUBSET)
    return fingerprint


def epoch_mix(dataset) -> dict:
    """Samples per epoch of a built training dataset, {"source": n, "generated": m}: its source
    part (the first of a ConcatDataset, or the whole) and the rest (generated pairs, after
    repeats). Online RCS and the re-crop wrap the dataset and keep its length; the RCS sampler
    replaces each source position of a pass by a draw, so the counts are those of a pass."""
    from mmengine.dataset import BaseDataset, ConcatDataset

    inner = dataset
    while hasattr(inner, "dataset") and not isinstance(inner, (BaseDataset, ConcatDataset)):
        inner = inner.dataset  # RareClassDataset / TaggedCropDataset
    total = len(dataset)
    source = len(inner.datasets[0]) if isinstance(inner, ConcatDataset) else total
    return {"source": source, "generated": total - source}


def set_aside_stale_checkpoints(work_dir: Path, settings: dict) -> None:
    """Make `work_dir` hold only checkpoints of these settings, then record them there.

    A rerun with other settings (Snakemake reruns a job whose params or inputs changed, into the
    same work folder) must not resume the old run: it would finish at once with a model of the
    old settings under the new name. Such checkpoints are moved to `<work_dir>.stale` (not
    deleted) and training starts afresh. The schedule length (iterations) is left out on
    purpose: a run may be resumed to train longer (the schedule is re-synced). A work folder
    without a settings record (older versions) is resumed as before.
    """
    work_dir = Path(work_dir)
    record = work_dir / SETTINGS
    settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)
    if record.is_file() and latest_checkpoint(work_dir) is not None:
        try:
            saved = json.loads(record.read_text())
        except json.JSONDecodeError:
            saved = None
        if saved != settings:
            differ = sorted(k for k in set(settings) | set(saved or {}) if (saved or {}).get(k) != settings.get(k))
            stale = set_aside(work_dir, "train-segmentation")
            log.warning("%s: checkpoints of other settings (%s); moved to %s, training afresh", work_dir, ", ".join(differ) or "unreadable record", stale)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, settings)


def _schedule_factor(it: int, iterations: int, warmup: int, power: float) -> float:
    """Closed-form lr factor at iteration `it` of mmengine's LinearLR(start 1e-6, begin 0, end
    warmup) then PolyLR(power, eta_min 0, begin warmup, end iterations), as mmengine computes
    them (total_iters = end - begin - 1: the warm-up reaches 1 at warmup - 1, the poly decay 0
    at the last iteration)."""
    warmup = max(0, min(warmup, iterations))
    if it < warmup:
        span = warmup - 1
        return 1e-6 + (1 - 1e-6) * min(it, span) / span if span > 0 else 1e-6
    span = iterations - warmup - 1
    return (1 - min(it - warmup, span) / span) ** power if span > 0 else 1.0


def _log_iter(line: str) -> int | None:
    """The iteration of a train_log.jsonl row; None for a blank line or one cut short by a kill."""
    try:
        return int(json.loads(line)["iter"])
    except (ValueError, KeyError, TypeError):
        return None


def _make_hooks(log_path: Path, log_interval: int, generated_roots: list[str], pretrained: tuple[Path, dict] | None, schedule: dict):
    from mmengine.hooks import Hook

    from dginstyle.segmentation.pretrained import load_into_backbone

    class RunHook(Hook):
        """Loss log (JSON lines), sample-origin counts, pretrained backbone, schedule re-sync on resume."""

        priority = "LOW"

        def __init__(self):
            self.origins = {"source": 0, "generated": 0}
            self.start_iter = 0
            self.start_time = None
            self.lr = None

        def before_train(self, runner):
            self.start_iter = runner.iter
            self.start_time = time.perf_counter()
            if log_path.is_file():  # drop rows past the resumed iteration (written after the last checkpoint)
                rows = [line for line in log_path.read_text().splitlines() if (it := _log_iter(line)) is not None and it <= runner.iter]
                with naming(log_path):
                    log_path.write_text("".join(r + "\n" for r in rows))
            if runner.iter == 0 and pretrained is not None:  # after the model's own init_weights
                path, state = pretrained
                count = load_into_backbone(runner.model.backbone, state, path)
                log.info("pretrained backbone from %s: %d tensors", path, count)
            if runner.iter > 0:
                self._resync_schedule(runner)

        def _resync_schedule(self, runner):
            # A resumed run whose schedule length changed (e.g. 2 then 4 iterations): the
            # restored schedulers hold the old begin/end; give them the new ones and set the
            # lr to the closed-form value at the current iteration.
            warmup = max(0, min(schedule["warmup"], schedule["iterations"]))
            changed = False
            for sched in runner.param_schedulers:
                name = type(sched).__name__
                begin, end = (0, warmup) if name == "LinearLR" else (warmup, schedule["iterations"])
                if (sched.begin, sched.end) != (begin, end):
                    sched.begin, sched.end, sched.total_iters = begin, end, end - begin - 1
                    # the steps it has taken inside its range by now (its chained formula counts on it)
                    sched.last_step = max(0, min(runner.iter, end - 1) - begin)
                    changed = True
            if changed:
                factor = _schedule_factor(runner.iter, schedule["iterations"], schedule["warmup"], schedule["power"])
                for group in runner.optim_wrapper.optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
                log.info("resumed at iteration %d with a new schedule length; lr factor %.4g", runner.iter, factor)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.lr = float(runner.optim_wrapper.optimizer.param_groups[0]["lr"])  # the lr this iteration uses

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            for sample in (data_batch or {}).get("data_samples", []):
                path = str(sample.metainfo.get("img_path", ""))
                self.origins["generated" if any(path.startswith(r) for r in generated_roots) else "source"] += 1
            it = runner.iter + 1
            if it % log_interval and it != runner.max_iters:
                return
            row = {"iter": it}
            for key, value in (outputs or {}).items():
                row[key] = float(value.detach().mean()) if hasattr(value, "detach") else float(value)
            row["lr"] = self.lr  # backbone lr of this iteration (head: x10)
            row["samples_seen"] = dict(self.origins)  # since this process started
            row["elapsed_s"] = round(time.perf_counter() - self.start_time, 3)
            with naming(log_path), open(log_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")

    return RunHook()


def _hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def train_segmentation(
    source: Path,
    generated: list[Path],
    out: Path,
    work_dir: Path,
    *,
    model: str = DEFAULTS["model"],
    iterations: int = DEFAULTS["iterations"],
    batch_size: int = DEFAULTS["batch_size"],
    crop_size: tuple[int, int] | int = DEFAULTS["crop_size"],
    learning_rate: float = DEFAULTS["learning_rate"],
    head_lr_mult: float = DEFAULTS["head_lr_mult"],
    mixed_precision: str = "no",
    weight_decay: float = DEFAULTS["weight_decay"],
    warmup_iterations: int = DEFAULTS["warmup_iterations"],
    poly_power: float = DEFAULTS["poly_power"],
    seed: int = DEFAULTS["seed"],
    threads: int | None = None,
    pretrained: Path | None = None,
    source_resize: tuple[int, int] | None = None,
    generated_resize: tuple[int, int] | None = None,
    generated_repeat: int = 1,
    checkpoint_interval: int = 1000,
    log_interval: int = 50,
    loader_workers: int | None = None,
    feature_distance: bool = False,
    fd_lambda: float = 0.005,
    fd_classes: tuple[int, ...] | list[int] | None = None,
    fd_min_ratio: float = 0.75,
    rare_class_sampling: bool = False,
    rcs_temperature: float = 0.01,
    rcs_min_pixels: int | None = None,
    rcs_min_crop_ratio: float = 0.5,
    source_subset: Path | None = None,
    tagged_recrop: bool = False,
    recrop_min_pixels: int = 1500,
    recrop_tries: int = 10,
    shade: bool = False,
    shade_basis_styles: int = shade_defaults.BASIS_STYLES,
    shade_concentration: float = shade_defaults.CONCENTRATION,
    shade_basis_interval: int = shade_defaults.BASIS_INTERVAL,
    shade_basis_samples: int | None = None,
    shade_sc_weight: float = shade_defaults.SC_WEIGHT,
    shade_rc_weight: float = shade_defaults.RC_WEIGHT,
) -> dict:
    """Train; write `out` (see module docstring) and return its metadata.

    crop_size is (h, w) (an int for a square); source_resize / generated_resize are (w, h).
    generated_repeat: each generated pair appears that many times per epoch (1: once, the paper's).
    feature_distance: DAFormer's ImageNet feature distance (lambda `fd_lambda` on the train IDs
    `fd_classes`, default the thing classes; needs `pretrained`). rare_class_sampling: RCS of
    the source images (temperature, min pixels: default the prepared dataset's threshold; min
    crop ratio, above 1 for HRDA's 1024 setting). source_subset: a presampled subset
    (`dginstyle presample-source`) the source part is restricted to; tagged_recrop: each of its
    samples re-cut, at most `recrop_tries` times, until its crop holds more than
    `recrop_min_pixels` of the class the image was drawn for (the release's DAFormer 512 row).
    shade: SHADE style hallucination (shade.py: K basis styles, Dirichlet concentration, basis
    refresh interval and images per refresh, style / retrospection consistency weights; the
    retrospection term needs `pretrained`).
    """
    import torch

    from dginstyle.compat import allow_mmengine_checkpoint_types, import_mmseg, load_trusted_checkpoint, save_weights
    from dginstyle.segmentation import register_modules
    from dginstyle.segmentation.configs import training_config
    from dginstyle.segmentation.datasets import generated_samples, prepared_samples
    from dginstyle.segmentation.pretrained import backbone_mismatch, read_backbone_weights
    from dginstyle.segmentation.shard_check import verify_shard

    import_mmseg()
    register_modules()
    from mmengine.config import Config
    from mmengine.runner import Runner

    source, out, work_dir = Path(source), Path(out), Path(work_dir)
    generated = [Path(g) for g in generated or []]
    crop = _hw(crop_size)
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    if batch_size < 1 or checkpoint_interval < 1 or log_interval < 1:
        raise DataError("batch size, checkpoint interval and log interval must be >= 1")
    if mixed_precision != "no" and not torch.cuda.is_available():
        raise DataError(f"--mixed-precision {mixed_precision} needs a CUDA GPU; on a CPU train with 'no' (float32, as the release)")
    loader_workers = default_loader_workers(threads) if loader_workers is None else loader_workers
    if loader_workers < 0:
        raise DataError(f"--loader-workers must be >= 0, got {loader_workers}")
    if not head_lr_mult > 0:
        raise DataError(f"--head-lr-mult must be positive, got {head_lr_mult}")
    source_stems = [stem for stem, _, _ in prepared_samples(source, "train")]
    n_source = n_prepared = len(source_stems)
    subset = None
    if tagged_recrop and source_subset is None:
        raise DataError("--tagged-recrop re-cuts the images of a presampled subset by the class each was drawn for: give --source-subset")
    if source_subset is not None:
        from dginstyle.segmentation.presample import read_subset

        if rare_class_sampling:
            raise DataError(
                "--source-subset and --rare-class-sampling both draw the source images by class: the release's 512 rows train on the "
                "presampled subset without online RCS (give one of them)"
            )
        source_subset = Path(source_subset)
        subset = read_subset(source_subset, source)  # one line on a problem, before anything is built
        missing = sorted({stem for stem, _ in subset["pairs"]} - set(source_stems))
        if missing:
            raise DataError(f"{source_subset}: subset image {missing[0]!r} is not in the train split of {source}")
        n_source = len(subset["pairs"])
        if tagged_recrop and (recrop_min_pixels < 0 or recrop_tries < 0):
            raise DataError(f"--recrop-min-pixels and --recrop-tries must be >= 0, got {recrop_min_pixels} and {recrop_tries}")
    recrop_settings = dict(min_pixels=int(recrop_min_pixels), tries=int(recrop_tries)) if tagged_recrop else None
    sampling_mode = "full" if subset is None else ("presampled_recrop" if tagged_recrop else "presampled")
    generated_pairs = [generated_samples(g) for g in generated]
    n_generated = sum(len(pairs) for pairs in generated_pairs)
    fd_settings = rcs_settings = None
    if feature_distance:
        from dginstyle.segmentation.feature_distance import THING_CLASSES, check_settings

        if pretrained is None:
            raise DataError(
                "--feature-distance needs --pretrained: the feature distance pulls the features towards a frozen copy of the "
                "ImageNet-pretrained backbone, which a model trained from scratch does not have"
            )
        weight, classes, ratio = check_settings(fd_lambda, THING_CLASSES if fd_classes is None else fd_classes, fd_min_ratio)
        fd_settings = dict(weight=weight, classes=classes, min_ratio=ratio)
    if rare_class_sampling:
        from dginstyle.labels import CLASSES
        from dginstyle.segmentation.rcs import read_class_draws

        if not rcs_min_crop_ratio >= 0.0:
            raise DataError(f"RCS min crop ratio must be >= 0, got {rcs_min_crop_ratio}")
        draws, _ = read_class_draws(source, "train", rcs_temperature, rcs_min_pixels)  # one line on a problem, before anything is built
        rcs_settings = dict(temperature=float(rcs_temperature), min_pixels=draws.min_pixels, min_crop_ratio=float(rcs_min_crop_ratio))
        rcs_probabilities = {CLASSES[c]: round(float(p), 6) for c, p in enumerate(draws.probabilities) if round(float(p), 6) > 0}

    shade_settings = None
    if shade:
        from dginstyle.segmentation.shade import check_settings as check_shade

        shade_settings = check_shade(shade_basis_styles, shade_concentration, shade_basis_interval, shade_basis_samples, shade_sc_weight, shade_rc_weight)
        if shade_settings["rc_weight"] > 0 and pretrained is None:
            raise DataError(
                "--shade with --shade-rc-weight > 0 needs --pretrained: SHADE's retrospection consistency pulls the features towards "
                "a frozen copy of the ImageNet-pretrained backbone; pass --shade-rc-weight 0 to train without it"
            )

    # Every generated file decodes and matches its shard's manifest before anything is built:
    # mmcv would meet a damaged one only when the sampler draws it, hours in (shard_check.py).
    for shard, pairs in zip(generated, generated_pairs):
        verify_shard(shard, pairs, threads)
    # Read (and convert) the pretrained backbone before anything is built, so a refused or
    # unreadable file stops the run at once; it is copied in when training starts.
    pretrained_state = read_backbone_weights(Path(pretrained)) if pretrained is not None else None
    work_dir.mkdir(parents=True, exist_ok=True)
    # What the run is trained with, but its length: recorded with the checkpoints and in metadata.json.
    run_settings = {
        "model": model, "batch_size": batch_size, "crop_size_hw": list(crop), "learning_rate": learning_rate,
        "head_lr_mult": head_lr_mult, "weight_decay": weight_decay, "warmup_iterations": warmup_iterations, "poly_power": poly_power, "seed": seed,
        "pretrained": str(pretrained) if pretrained else None, "source": str(source), "generated": [str(g) for g in generated],
        "generated_repeat": generated_repeat, "source_resize_wh": list(source_resize) if source_resize else None,
        "generated_resize_wh": list(generated_resize) if generated_resize else None,
    }  # fmt: skip
    if mixed_precision != "no":  # only then: float32 runs keep the settings (and checkpoints) they had
        run_settings["mixed_precision"] = mixed_precision
    if subset is not None:  # only then: the settings of runs on the whole source stay as they were
        run_settings.update(source_subset=str(source_subset), tagged_recrop=recrop_settings)
    set_aside_stale_checkpoints(work_dir, {
        **run_settings, "data": data_fingerprint(source, generated, source_subset),
        "feature_distance": None if fd_settings is None else {**fd_settings, "classes": list(fd_settings["classes"])},
        "rare_class_sampling": rcs_settings, "shade": shade_settings,
    })  # fmt: skip
    resume_from = latest_checkpoint(work_dir)  # DataError when it points outside work_dir
    cfg = training_config(
        source=source, generated=generated, work_dir=work_dir, model=model, iterations=iterations,
        batch_size=batch_size, crop_size=crop, learning_rate=learning_rate, head_lr_mult=head_lr_mult,
        weight_decay=weight_decay, warmup_iterations=warmup_iterations, poly_power=poly_power, seed=seed, source_resize=source_resize,
        generated_resize=generated_resize, generated_repeat=generated_repeat, checkpoint_interval=checkpoint_interval,
        log_interval=log_interval, num_workers=loader_workers, source_subset=source_subset, mixed_precision=mixed_precision,
    )  # fmt: skip
    # SHADE collects its basis styles from the training data without rare class sampling (as the
    # release does): the plain dataset config, taken before RCS wraps it.
    style_dataset = copy.deepcopy(cfg["train_dataloader"]["dataset"])
    if rcs_settings is not None:
        from dginstyle.segmentation.rcs import with_rare_class_sampling

        cfg["train_dataloader"] = with_rare_class_sampling(cfg["train_dataloader"], **rcs_settings)
        cfg["custom_imports"]["imports"].append("dginstyle.segmentation.rcs")
    if recrop_settings is not None:
        from dginstyle.segmentation.rcs import with_tagged_recrop

        cfg["train_dataloader"] = with_tagged_recrop(cfg["train_dataloader"], **recrop_settings)
        cfg["custom_imports"]["imports"].append("dginstyle.segmentation.rcs")
    # Recorded in the saved config for its readers (the model config itself is the plain model:
    # the feature distance's frozen copy exists only while training).
    cfg["dginstyle"]["feature_distance"] = None if fd_settings is None else {**fd_settings, "classes": list(fd_settings["classes"]), "pretrained": str(pretrained)}
    cfg["dginstyle"]["rare_class_sampling"] = rcs_settings
    cfg["dginstyle"]["tagged_recrop"] = recrop_settings
    cfg["dginstyle"]["shade"] = shade_settings
    if resume_from is not None:
        allow_mmengine_checkpoint_types()
        # Read it once through our refusing loader before mmengine does: mmengine loads it
        # weights-only too, but a foreign or tampered file would end in a traceback from deep
        # inside runner.train(); this stops first with one line naming the file.
        load_trusted_checkpoint(resume_from, work_dir)
        cfg.update(resume=True, load_from=str(resume_from))
    config = Config(cfg)
    runner = Runner.from_cfg(config)
    if pretrained_state is not None:
        problem = backbone_mismatch(runner.model.backbone, pretrained_state)
        if problem:
            raise DataError(f"{pretrained}: {problem}")
    fd = sh = teacher = None
    if fd_settings is not None or (shade_settings is not None and shade_settings["rc_weight"] > 0):
        from dginstyle.segmentation.feature_distance import frozen_backbone

        # Built again on every start (resume included) from the same pretrained file: the copy
        # is never in a checkpoint or in weights.safetensors. One copy serves the feature
        # distance and SHADE's retrospection term; it is made before SHADE hooks the backbone.
        teacher = frozen_backbone(runner.model.backbone, pretrained_state, Path(pretrained))
    if fd_settings is not None:
        from dginstyle.segmentation.feature_distance import FeatureDistance

        fd = FeatureDistance(teacher, **fd_settings).attach(runner.model)
    if shade_settings is not None:
        from dginstyle.segmentation.shade import StyleHallucination, make_hook

        # Attached after the feature distance: SHADE's loss wraps it, so the feature distance
        # sees the doubled labels of [original; hallucinated] (feature_distance.py).
        sh = StyleHallucination(
            teacher, basis_styles=shade_settings["basis_styles"], concentration=shade_settings["concentration"],
            sc_weight=shade_settings["sc_weight"], rc_weight=shade_settings["rc_weight"],
        ).attach(runner.model)  # fmt: skip
        style_loader = dict(batch_size=batch_size, num_workers=loader_workers, persistent_workers=False, sampler=dict(type="DefaultSampler", shuffle=True), dataset=style_dataset)
        shade_hook = make_hook(sh, style_loader, shade_settings["interval"], shade_settings["basis_samples"], seed)
        runner.register_hook(shade_hook)
    log_path = work_dir / TRAIN_LOG
    generated_roots = [str(g.resolve()) + os.sep for g in generated]
    schedule = dict(iterations=iterations, warmup=warmup_iterations, power=poly_power)
    pretrained_arg = (Path(pretrained), pretrained_state) if pretrained_state is not None else None
    runner.register_hook(_make_hooks(log_path, log_interval, generated_roots, pretrained_arg, schedule))

    start = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - start
    start_iter = 0
    if resume_from is not None:
        start_iter = int(Path(resume_from).stem.rsplit("_", 1)[-1]) if Path(resume_from).stem.startswith("iter_") else None

    import mmengine
    import mmseg

    # The mix of one epoch as the loader really builds it (after the subset and the repeats).
    mix = epoch_mix(runner.train_dataloader.dataset)
    metadata = {
        "stage": "train-segmentation",
        **run_settings,
        "iterations": iterations,
        "threads": threads,
        "source_samples": n_source,
        "source_images_prepared": n_prepared,
        "generated_samples": n_generated,
        "samples_per_epoch": mix,
        # The realised share of an epoch's samples that are generated pairs (0 for source-only):
        # generated samples per epoch / all samples per epoch, after the subset and the repeats.
        "generated_share": round(mix["generated"] / max(mix["source"] + mix["generated"], 1), 4),
        "source_sampling": {
            "mode": sampling_mode,
            "subset": None if subset is None else str(source_subset),
            "subset_settings": None if subset is None else subset.get("settings"),
            "subset_class_histogram": None if subset is None else subset.get("class_histogram"),
            "tagged_recrop": recrop_settings,
        },
        "mix": "ConcatDataset of source train"
        + ("" if subset is None else f" (the presampled subset of {n_source} of its {n_prepared} images)")
        + " + generated pairs ("
        + ("mix follows their sizes" if generated_repeat == 1 else f"each generated pair listed {generated_repeat} times")
        + ")" + ("; source positions drawn by rare class sampling" if rcs_settings else "")
        + ("; each source sample re-cut until it shows its drawn class" if recrop_settings else ""),
        "feature_distance": None if fd is None else {**fd.describe(), "pretrained": str(pretrained), "extra_backbone_forwards": fd.extra_forwards},
        "rare_class_sampling": None if rcs_settings is None else {**rcs_settings, "class_probabilities": rcs_probabilities},
        "shade": None if sh is None else {
            **sh.describe(), "basis_interval": shade_settings["interval"], "basis_samples": shade_settings["basis_samples"],
            "basis_refreshes": sh.refreshes, "styles_collected_this_process": shade_hook.collected,
            "basis_size": int(sh.basis_mean.shape[0]) if sh.basis_mean is not None else None,
        },  # fmt: skip
        "resumed_from": str(resume_from) if resume_from else None,
        "resumed_at_iteration": start_iter,
        "seconds_this_process": round(seconds, 3),
        "iterations_per_second": round((iterations - (start_iter or 0)) / seconds, 4) if seconds > 0 else None,
        "versions": {"torch": torch.__version__, "mmseg": mmseg.__version__, "mmengine": mmengine.__version__},
    }
    staging = fresh_staging_dir(out, "train-segmentation")
    save_weights(runner.model.state_dict(), staging / WEIGHTS, metadata={"model": model, "iterations": iterations})
    infer_cfg = Config(cfg)
    infer_cfg.pop("resume", None)
    infer_cfg.pop("load_from", None)
    infer_cfg.dump(str(staging / CONFIG))
    if log_path.is_file():
        shutil.copyfile(log_path, staging / TRAIN_LOG)
    else:
        (staging / TRAIN_LOG).write_text("")
    atomic_write_json(staging / METADATA, metadata)
    replace_dir(staging, out)
    return metadata


def _size_wh(text: str) -> tuple[int, int]:
    try:
        if "x" in text:
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT or one integer") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return (w, h)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def add_cli(sub: argparse._SubParsersAction) -> None:
    from dginstyle.segmentation.configs import MIXED_PRECISION

    p = sub.add_parser(
        "train-segmentation",
        help="train a segmenter (DAFormer, DeepLabV2, SegFormer) on source + generated data (mmseg 1.x, mmengine Runner)",
        description="Train a segmentation model on a prepared source train split concatenated with generated shards.",
    )
    p.add_argument("--source", required=True, type=Path, help="prepared source dataset (its train split is used)")
    p.add_argument("--generated", nargs="*", type=Path, default=[], help="zero or more generated shard folders")
    p.add_argument("--out", required=True, type=Path, help="output run folder (weights, config, log, metadata)")
    p.add_argument("--work-dir", required=True, type=Path, help="checkpoints; a rerun with the same folder resumes")
    p.add_argument("--model", default=DEFAULTS["model"], choices=MODEL_NAMES, help="model (dginstyle/segmentation/catalog.py)")
    p.add_argument("--iterations", type=int, default=DEFAULTS["iterations"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--crop-size", type=_size_wh, default=(512, 512), help="training crop WIDTHxHEIGHT or N (square)")
    p.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"], help="backbone lr (the head's: x --head-lr-mult)")
    p.add_argument("--head-lr-mult", type=float, default=DEFAULTS["head_lr_mult"], help="the decode head's learning rate over the backbone's")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no", help="automatic mixed precision on CUDA (the release: no, float32)")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--warmup-iterations", type=int, default=DEFAULTS["warmup_iterations"])
    p.add_argument("--poly-power", type=float, default=DEFAULTS["poly_power"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default $OMP_NUM_THREADS)")
    p.add_argument(
        "--pretrained", type=Path, default=None,
        help="ImageNet backbone weights: .safetensors from `dginstyle convert-pretrained`, or the public MiT/ResNet .pth (read weights-only, converted)",
    )  # fmt: skip
    p.add_argument("--source-resize", type=_size_wh, default=None, help="resize source images (keep ratio) to fit WIDTHxHEIGHT")
    p.add_argument("--generated-resize", type=_size_wh, default=None, help="resize generated images to WIDTHxHEIGHT")
    p.add_argument(
        "--generated-repeat", type=int, default=1,
        help="list each generated pair this many times per epoch (1: once, the mix follows the sizes, as the paper)",
    )  # fmt: skip
    p.add_argument("--checkpoint-interval", type=int, default=1000)
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument(
        "--loader-workers", type=int, default=None,
        help="data-loader worker processes (SHADE's style pass too); default: none on a CPU, the job's threads (up to 8) with CUDA",
    )  # fmt: skip
    fd = p.add_argument_group("ImageNet feature distance (DAFormer; needs --pretrained)")
    fd.add_argument("--feature-distance", action="store_true", help="add lambda x the L2 distance of the bottleneck features to a frozen ImageNet copy, on thing-class pixels")
    fd.add_argument("--fd-lambda", type=float, default=0.005)
    fd.add_argument("--fd-classes", type=_int_list, default=None, help="train IDs, comma-separated (default: 6,7,11,...,18, the thing classes)")
    fd.add_argument("--fd-min-ratio", type=float, default=0.75, help="a feature pixel counts as its label's majority class when it holds this share")
    rcs = p.add_argument_group("rare class sampling of the source images (DAFormer)")
    rcs.add_argument("--rare-class-sampling", action="store_true", help="draw source images by class (p(c) = softmax((1 - f_c) / T)), then an image holding it")
    rcs.add_argument("--rcs-temperature", type=float, default=0.01)
    rcs.add_argument("--rcs-min-pixels", type=int, default=None, help="pixels of the class an image must hold (default: the prepared dataset's threshold)")
    rcs.add_argument(
        "--rcs-min-crop-ratio", type=float, default=0.5,
        help="reload a crop holding no more than this x min pixels of the class (up to 10 times); above 1 (HRDA's 2.0) the crop must hold more than the image had to",
    )  # fmt: skip
    sub = p.add_argument_group("presampled source subset (the release's 512 setting; instead of --rare-class-sampling)")
    sub.add_argument("--source-subset", type=Path, default=None, help="a folder written by `dginstyle presample-source` from --source: train on its images only")
    sub.add_argument("--tagged-recrop", action="store_true", help="re-cut each subset sample until its crop shows the class the image was drawn for")
    sub.add_argument("--recrop-min-pixels", type=int, default=1500, help="the crop must hold more pixels of the drawn class than this (the release: 1500)")
    sub.add_argument("--recrop-tries", type=int, default=10, help="at most this many re-cuts (the release: 10)")
    sh = p.add_argument_group("SHADE style hallucination (Zhao et al., ECCV 2022; the paper's HRDA row)")
    sh.add_argument("--shade", action="store_true", help="restyle the features after the first backbone stage by Dirichlet mixes of basis styles, double the batch, add the style consistency loss")
    sh.add_argument("--shade-basis-styles", type=int, default=shade_defaults.BASIS_STYLES, help="K basis styles, picked by farthest point sampling")
    sh.add_argument("--shade-concentration", type=float, default=shade_defaults.CONCENTRATION, help="Dirichlet concentration of the basis weights")
    sh.add_argument("--shade-basis-interval", type=int, default=shade_defaults.BASIS_INTERVAL, help="iterations between basis refreshes (and one at the start)")
    sh.add_argument("--shade-basis-samples", type=int, default=None, help="training images a refresh collects styles from (default: all)")
    sh.add_argument("--shade-sc-weight", type=float, default=shade_defaults.SC_WEIGHT, help="style consistency (JS divergence) weight")
    sh.add_argument("--shade-rc-weight", type=float, default=shade_defaults.RC_WEIGHT, help="retrospection consistency weight (> 0 needs --pretrained; 0: off)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    w, h = args.crop_size
    train_segmentation(
        args.source, args.generated, args.out, args.work_dir, model=args.model, iterations=args.iterations,
        batch_size=args.batch_size, crop_size=(h, w), learning_rate=args.learning_rate, head_lr_mult=args.head_lr_mult,
        mixed_precision=args.mixed_precision,
        weight_decay=args.weight_decay, warmup_iterations=args.warmup_iterations, poly_power=args.poly_power,
        seed=args.seed, threads=args.threads, pretrained=args.pretrained, source_resize=args.source_resize,
        generated_resize=args.generated_resize, generated_repeat=args.generated_repeat, checkpoint_interval=args.checkpoint_interval,
        log_interval=args.log_interval, loader_workers=args.loader_workers, feature_distance=args.feature_distance, fd_lambda=args.fd_lambda,
        fd_classes=args.fd_classes, fd_min_ratio=args.fd_min_ratio, rare_class_sampling=args.rare_class_sampling,
        rcs_temperature=args.rcs_temperature, rcs_min_pixels=args.rcs_min_pixels, rcs_min_crop_ratio=args.rcs_min_crop_ratio,
        source_subset=args.source_subset, tagged_recrop=args.tagged_recrop, recrop_min_pixels=args.recrop_min_pixels,
        recrop_tries=args.recrop_tries,
        shade=args.shade, shade_basis_styles=args.shade_basis_styles, shade_concentration=args.shade_concentration,
        shade_basis_interval=args.shade_basis_interval, shade_basis_samples=args.shade_basis_samples,
        shade_sc_weight=args.shade_sc_weight, shade_rc_weight=args.shade_rc_weight,
    )  # fmt: skip
