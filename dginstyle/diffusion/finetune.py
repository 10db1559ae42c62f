"""Style Swap step 1: fine-tune the prior's UNet U^P on the source images -> U^S (docs/method.md 1.1).

The whole UNet is trained with the EMPTY prompt (encoded once; text encoder and VAE frozen) on
random resized crops of every source train image: epsilon-prediction MSE, t uniform, DDPM
add_noise, AdamW, grad-norm clipping, gradient accumulation. The result is a diffusers UNet
folder plus `dginstyle.json` and `loss_curve.json`.

The second half of this module holds the training machinery that the ControlNet stage shares:
device/precision choice, per-step seeding, resumable checkpoints and atomic output folders.

Randomness is drawn from generators seeded by (seed, stream, step, micro-batch), never from a
running global state, so a run resumed from a checkpoint sees exactly the samples, crops,
noise and timesteps that an uninterrupted run would have seen (checkpoints hold weights,
optimizer and loss history only).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dginstyle.data import contract
from dginstyle.io import DataError, atomic_write_json, fresh_staging_dir, read_rgb, replace_dir, set_aside

log = logging.getLogger(__name__)

KIND = "unet_source"
DEFAULT_RESIZE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
LOSS_CURVE = "loss_curve.json"

# Streams of per-step randomness (the second key of every seeded generator).
STREAM_ORDER, STREAM_AUGMENT, STREAM_NOISE = 1, 2, 3


# ============================================================================= the stage


def finetune_unet(
    prior: Path,
    source: Path,
    out: Path,
    checkpoints: Path,
    *,
    steps: int,
    learning_rate: float = 2e-6,
    batch_size: int = 1,
    gradient_accumulation: int = 2,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    weight_decay: float = 1e-2,
    adam_epsilon: float = 1e-8,
    max_grad_norm: float = 1.0,
    resize_ratios: tuple[float, ...] = DEFAULT_RESIZE_RATIOS,
    crop_size: int = 512,
    mixed_precision: str = "fp16",
    gradient_checkpointing: bool = False,
    seed: int = 0,
    device: str = "auto",
    checkpoint_every: int = 500,
    log_every: int = 10,
    split: str = "train",
    prior_config: str | None = None,
) -> dict:
    """Fine-tune U^P -> U^S on all source images with the empty prompt; returns the metadata."""
    import torch
    import torch.nn.functional as F

    from dginstyle.diffusion import crops, models

    prior, source, out, checkpoints = Path(prior), Path(source), Path(out), Path(checkpoints)
    _check_positive(steps=steps, batch_size=batch_size, gradient_accumulation=gradient_accumulation, crop_size=crop_size)
    if not resize_ratios or min(resize_ratios) <= 0:
        raise DataError(f"--resize-ratios must be positive numbers, got {list(resize_ratios)}")
    stems = crops.source_stems(source, split)
    images = [contract.find_image(source, split, stem) for stem in stems]
    config = dict(
        prior=model_source(prior),
        prior_fingerprint=model_fingerprint(prior),
        **prior_config_record(prior_config),
        source=str(source.resolve()),
        split=split,
        learning_rate=learning_rate,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        weight_decay=weight_decay,
        adam_epsilon=adam_epsilon,
        max_grad_norm=max_grad_norm,
        resize_ratios=[float(r) for r in resize_ratios],
        crop_size=crop_size,
        seed=seed,
        prompt="",
    )

    rt = Runtime.create(device, mixed_precision, seed)
    components = models.load_components(prior, config=prior_config)
    vae, text_encoder, tokenizer = components["vae"], components["text_encoder"], components["tokenizer"]
    unet = components["unet"]
    check_crop_size(crop_size, vae, unet, "--crop-size")
    scheduler = models.training_scheduler(components["scheduler"], f"{prior}/scheduler")  # the prior's schedule and prediction type
    freeze(vae, rt)
    freeze(text_encoder, rt)
    unet.to(rt.device).train()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=learning_rate, betas=(adam_beta1, adam_beta2), weight_decay=weight_decay, eps=adam_epsilon
    )
    store = Checkpoints(checkpoints, "finetune-unet")
    state = store.resume(unet, optimizer, rt, config, steps)

    with torch.no_grad():
        empty = encode_prompts(tokenizer, text_encoder, [""], rt)  # the empty prompt, encoded once
    scaling = vae.config.scaling_factor
    num_train_timesteps = scheduler.config.num_train_timesteps

    def load_batch(key: tuple[int, int]) -> np.ndarray:
        """CPU side of a micro-batch (decode, resize, crop); runs ahead on the prefetch thread."""
        step, micro = key
        rng = crops.seeded_rng(seed, STREAM_AUGMENT, step, micro)
        batch = []
        for b in range(batch_size):
            k = (step * gradient_accumulation + micro) * batch_size + b
            path = images[_epoch_order(seed, k, len(images))]
            crop, _ = crops.random_resized_crop(read_rgb(path), list(resize_ratios), crop_size, rng)
            batch.append(crops.to_unit_range(crop))
        return np.stack(batch)

    prefetch = Prefetcher(load_batch, step_keys(state["step"], steps, gradient_accumulation))

    def compute_loss(step: int, micro: int):
        batch = prefetch.get((step, micro))
        pixels = torch.from_numpy(batch).to(rt.device, rt.frozen_dtype)
        gen = torch_generator(seed, STREAM_NOISE, step, micro)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator=gen).float() * scaling
        noise = torch.randn(latents.shape, generator=gen).to(rt.device)
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=gen).to(rt.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with rt.autocast():
            pred = unet(noisy, timesteps, encoder_hidden_states=empty.expand(batch_size, -1, -1)).sample
        return F.mse_loss(pred.float(), models.prediction_target(scheduler, latents, noise, timesteps), reduction="mean")

    def save(step: int) -> None:
        store.save(step, unet, optimizer, rt, config, state)

    with prefetch:
        run_steps(unet, optimizer, compute_loss, rt, state, steps, gradient_accumulation, max_grad_norm, checkpoint_every, log_every, save, tag="finetune-unet")

    metadata = dict(
        kind=KIND,
        prior=model_source(prior),
        prior_metadata=models.read_metadata(prior),
        prediction_type=scheduler.config.prediction_type,
        source=str(source.resolve()),
        steps=state["step"],
        hyperparameters=config,
        gradient_checkpointing=gradient_checkpointing,
        mixed_precision=mixed_precision,
        device=str(rt.device),
        compute_dtype=str(rt.autocast_dtype or torch.float32),
        images=len(images),
        training_log=loss_log(state["losses"], log_every),
        seconds_per_step=_mean(state["step_seconds"]),
        resumed_from=state["resumed_from"],
    )

    def write(folder: Path) -> None:
        unet.save_pretrained(folder, safe_serialization=True)  # trained in float32

    write_output(out, write, metadata, state, "finetune-unet")
    log.info("finetune-unet: wrote %s (%d steps, loss %.5f over the last %d)", out, state["step"], recent_mean(state["losses"], log_every), log_every)
    return metadata


def _epoch_order(seed: int, k: int, n: int) -> int:
    """Index of the k-th training sample: every image once per epoch, in a seeded order."""
    from dginstyle.diffusion.crops import seeded_rng

    return int(seeded_rng(seed, STREAM_ORDER, k // n).permutation(n)[k % n])


# ============================================================================= shared machinery


def model_source(path: Path) -> str:
    """A local folder as its absolute path; a model id (HF cache) as given."""
    path = Path(path)
    return str(path.resolve()) if path.exists() else str(path)


def prior_config_record(prior_config: str | None) -> dict:
    """What a single-file prior's configs source adds to a stage's recorded settings (nothing
    without one, so that the settings of runs made before the option stay as they were)."""
    return {} if prior_config is None else {"prior_config": model_source(Path(prior_config))}


def model_fingerprint(path: Path) -> str:
    """What identifies a model input in a checkpoint's settings: the sha256 of its
    dginstyle.json (a folder this workflow made: its training record changes when it is
    retrained), else its source string (a model id or foreign folder)."""
    from dginstyle.io import sha256_file

    record = Path(path) / "dginstyle.json"
    if record.is_file():
        return sha256_file(record)[:16]
    return model_source(path)


def torch_threads() -> None:
    """Follow $OMP_NUM_THREADS (Snakemake sets it to the rule's threads)."""
    import torch

    value = os.environ.get("OMP_NUM_THREADS")
    if value and value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))


def step_keys(start: int, steps: int, accumulation: int):
    """(step, micro) of every micro-batch still to run, in order."""
    return ((step, micro) for step in range(start, steps) for micro in range(accumulation))


class Prefetcher:
    """Runs `load(key)` for the next keys on one background thread while the model computes.

    Every key's randomness is seeded by the key itself, so running ahead changes nothing;
    `get` must be called with the keys in order. Errors surface at the matching `get`.
    """

    def __init__(self, load: Callable[[Any], Any], keys, depth: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.load, self.keys, self.depth = load, iter(keys), max(1, depth)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.queue: list = []
        self._fill()

    def _fill(self) -> None:
        while len(self.queue) < self.depth:
            key = next(self.keys, None)
            if key is None:
                return
            self.queue.append((key, self.pool.submit(self.load, key)))

    def get(self, key):
        if not self.queue or self.queue[0][0] != key:
            raise RuntimeError(f"prefetch: asked for {key}, next is {self.queue[0][0] if self.queue else None}")
        _, future = self.queue.pop(0)
        self._fill()
        return future.result()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        for _, future in self.queue:
            future.cancel()
        self.pool.shutdown(wait=True)


@dataclass
class Runtime:
    """Where and in what precision a stage runs: fp32 trainable weights, frozen ones in `frozen_dtype`."""

    device: Any
    frozen_dtype: Any
    autocast_dtype: Any  # None = no autocast (CPU, or mixed precision "no")
    scaler: Any  # torch.amp.GradScaler for fp16 on CUDA, else None

    @classmethod
    def create(cls, device: str, mixed_precision: str, seed: int) -> "Runtime":
        import torch

        from dginstyle.diffusion import models

        if mixed_precision not in ("no", "fp16", "bf16"):
            raise DataError(f"--mixed-precision must be no, fp16 or bf16, got {mixed_precision!r}")
        torch_threads()
        torch.manual_seed(seed)
        dev = models.pick_device(device)
        dtype = models.pick_dtype(dev, mixed_precision)
        half = dtype if dtype != torch.float32 else None
        scaler = torch.amp.GradScaler("cuda") if half == torch.float16 else None
        return cls(dev, dtype, half, scaler)

    def autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def freeze(module, rt: Runtime):
    import torch

    module.requires_grad_(False)
    module.to(rt.device)
    if rt.frozen_dtype != torch.float32:
        module.to(dtype=rt.frozen_dtype)
    module.eval()
    return module


def torch_generator(*keys: int):
    """A CPU torch.Generator seeded from (seed, stream, step, ...): draws are device-independent."""
    import torch

    from dginstyle.diffusion.crops import seeded_rng

    return torch.Generator(device="cpu").manual_seed(int(seeded_rng(*keys).integers(2**62)))


def encode_prompts(tokenizer, text_encoder, prompts: list[str], rt: Runtime):
    """CLIP hidden states of the prompts, padded to the tokenizer's max length (SD convention)."""
    import torch

    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids.to(rt.device))[0]
    return hidden.float()


def check_crop_size(crop: int, vae, unet, option: str) -> None:
    """The crop must map to a latent grid the UNet can halve at each of its levels."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(unet.config.block_out_channels) - 1)
    if crop % factor:
        raise DataError(f"{option} {crop}: must be a multiple of {factor} (VAE downsampling x UNet levels)")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def recent_mean(values: list[float], every: int) -> float:
    """The mean of the last `every` values (losses, step times): what each progress line and the
    closing line report."""
    return float(np.mean(values[-max(1, every) :])) if values else float("nan")


def duration(seconds: float) -> str:
    """A time left a person reads at a glance: 45 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def loss_log(losses: list[float], every: int) -> list[dict]:
    """Mean loss per block of `every` optimizer steps (the last block may be shorter)."""
    every = max(1, every)
    return [
        {"step": min(i + every, len(losses)), "loss": float(np.mean(losses[i : i + every]))}
        for i in range(0, len(losses), every)
    ]


class Checkpoints:
    """Resumable training state on top of dginstyle.diffusion.training's checkpoint folders.

    Each checkpoint holds the trained module ("model", safetensors), the optimizer (torch.save,
    read back weights_only=True) and, in state.json's extra, the settings fingerprint, the loss
    history, step times and stage-specific statistics. Written atomically, last 2 kept. No RNG
    state is needed: every random draw is seeded by (seed, stream, step, micro-batch).
    """

    def __init__(self, root: Path, stage: str, keep: int = 2):
        self.root = Path(root)
        self.stage = stage  # the marker a set-aside folder carries (dginstyle.io.set_aside)
        self.keep = keep

    def latest(self) -> Path | None:
        from dginstyle.diffusion import training

        steps = training.checkpoint_steps(self.root)
        return self.root / f"step_{steps[-1]:08d}" if steps else None

    def resume(self, model, optimizer, rt: Runtime, config: dict, steps: int) -> dict:
        """Load the newest checkpoint into model/optimizer; return the training state (fresh if none)."""
        from dginstyle.diffusion import training

        fresh = {"step": 0, "losses": [], "step_seconds": [], "resumed_from": [], "extra": {}}
        ckpt = training.load_latest_checkpoint(self.root)
        if ckpt is None:
            return fresh
        path, saved = ckpt["path"], ckpt["extra"]
        if "config" not in saved or "model" not in ckpt["modules"] or "optimizer" not in ckpt["optimizers"]:
            raise DataError(f"{path}: not a checkpoint of this stage (no model/optimizer/config); use a fresh --checkpoints folder")
        differ = {k: (saved["config"].get(k), v) for k, v in config.items() if saved["config"].get(k) != v}
        if differ or ckpt["step"] > steps:
            # A rerun with other settings or inputs (Snakemake reruns a job whose params or
            # inputs changed): these checkpoints can never be resumed, so they are set aside
            # (not deleted) and training starts afresh.
            detail = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differ.items()) or f"step {ckpt['step']} > {steps}"
            stale = set_aside(self.root, self.stage)
            log.warning("%s: checkpoints from other settings (%s); moved to %s, starting afresh", path, detail, stale)
            return fresh
        model.load_state_dict(ckpt["modules"]["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizers"]["optimizer"])
        if rt.scaler is not None and saved.get("scaler"):
            rt.scaler.load_state_dict(saved["scaler"])
        log.info("resuming from %s (step %d)", path, ckpt["step"])
        return {
            "step": ckpt["step"],
            "losses": saved["losses"],
            "step_seconds": saved["step_seconds"],
            "resumed_from": saved["resumed_from"] + [ckpt["step"]],
            "extra": saved.get("stage", {}),
        }

    def save(self, step: int, model, optimizer, rt: Runtime, config: dict, state: dict) -> Path:
        from dginstyle.diffusion import training

        extra = {
            "config": config,
            "losses": state["losses"],
            "step_seconds": state["step_seconds"],
            "resumed_from": state["resumed_from"],
            "stage": state.get("extra", {}),
            "scaler": rt.scaler.state_dict() if rt.scaler is not None else None,
        }
        return training.save_checkpoint(self.root, step, {"model": model}, {"optimizer": optimizer}, rng_state={}, extra=extra, keep=self.keep)


def run_steps(
    model,
    optimizer,
    compute_loss: Callable[[int, int], Any],
    rt: Runtime,
    state: dict,
    steps: int,
    accumulation: int,
    max_grad_norm: float,
    checkpoint_every: int,
    log_every: int,
    save: Callable[[int], None],
    on_step: Callable[[int], None] | None = None,
    tag: str = "train",
) -> None:
    """Optimizer steps state["step"]..steps: accumulate, clip, step; log, call hooks, checkpoint.

    `compute_loss(step, micro)` returns the mean loss of one micro-batch (step is 0-based).
    A checkpoint is written every `checkpoint_every` steps and always at the last step.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    start = state["step"]
    for step in range(start, steps):
        began = time.perf_counter()
        total = 0.0
        for micro in range(accumulation):
            loss = compute_loss(step, micro)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{tag}: loss is {loss.item()} at step {step + 1}")
            scaled = loss / accumulation
            (rt.scaler.scale(scaled) if rt.scaler is not None else scaled).backward()
            total += float(loss.detach())
        if rt.scaler is not None:
            rt.scaler.unscale_(optimizer)
        if max_grad_norm and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if rt.scaler is not None:
            rt.scaler.step(optimizer)
            rt.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        state["step"] = done
        state["losses"].append(total / accumulation)
        state["step_seconds"].append(time.perf_counter() - began)
        if done % max(1, log_every) == 0 or done == steps:
            seconds = recent_mean(state["step_seconds"], log_every)
            log.info(
                "%s: step %d/%d loss %.5f (%.2f s/step, %s left)",
                tag, done, steps, recent_mean(state["losses"], log_every), seconds, duration(seconds * (steps - done)),
            )
        if on_step is not None:
            on_step(done)
        if done == steps or (checkpoint_every > 0 and done % checkpoint_every == 0):
            save(done)


def write_output(out: Path, write: Callable[[Path], None], metadata: dict, state: dict, stage: str) -> None:
    """Build `stage`'s output folder as a hidden sibling (weights, metadata, loss curve), then rename it."""
    staging = fresh_staging_dir(Path(out), stage)
    write(staging)
    # `target`: what the loss compares the UNet's output with (the noise or the velocity), for the plot's title
    curve = {"step": list(range(1, len(state["losses"]) + 1)), "loss": state["losses"], "target": metadata["prediction_type"]}
    atomic_write_json(staging / LOSS_CURVE, curve)
    from dginstyle.diffusion.models import METADATA

    atomic_write_json(staging / METADATA, metadata)
    replace_dir(staging, Path(out))


# ============================================================================= CLI


def ratio_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


PRIOR_HELP = (
    "the prior U^P: a diffusers folder, a model id (owner/name) through the Hugging Face cache (downloaded when "
    "online; HF_HUB_OFFLINE=1: the cache only), or one checkpoint in the original Stable Diffusion layout "
    "(.safetensors, or .ckpt read weights-only)"
)
PRIOR_CONFIG_HELP = (
    "for a single-file --prior only: the diffusers folder or model id whose configs, tokenizer and scheduler "
    "it is loaded with (default: stable-diffusion-v1-5/stable-diffusion-v1-5)"
)


def add_common_training_args(p: argparse.ArgumentParser, *, lr: float, batch: int, accumulation: int) -> None:
    """Options shared by the two training stages (optimizer, precision, device, checkpoints)."""
    p.add_argument("--prior", required=True, type=Path, help=PRIOR_HELP)
    p.add_argument("--prior-config", default=None, help=PRIOR_CONFIG_HELP)
    p.add_argument("--source", required=True, type=Path, help="prepared source dataset")
    p.add_argument("--out", required=True, type=Path, help="output folder (written atomically)")
    p.add_argument("--checkpoints", required=True, type=Path, help="checkpoint folder (resumes from its newest checkpoint)")
    p.add_argument("--steps", required=True, type=int, help="optimizer steps in total (a resumed run continues to this)")
    p.add_argument("--learning-rate", type=float, default=lr, help=f"constant learning rate (default {lr})")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--gradient-accumulation", type=int, default=accumulation)
    p.add_argument("--adam-beta1", type=float, default=0.9)
    p.add_argument("--adam-beta2", type=float, default=0.999)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--adam-epsilon", type=float, default=1e-8)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="fp16", help="autocast on CUDA (the CPU always runs float32)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory (useful on CUDA at 512 px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (the last step is always saved)")
    p.add_argument("--log-every", type=int, default=10, help="steps per entry of the training log")
    p.add_argument("--split", default="train", help="source split to train on")


def common_kwargs(args: argparse.Namespace) -> dict:
    names = (
        "steps learning_rate batch_size gradient_accumulation adam_beta1 adam_beta2 weight_decay adam_epsilon "
        "max_grad_norm mixed_precision gradient_checkpointing seed device checkpoint_every log_every split prior_config"
    ).split()
    return {name: getattr(args, name) for name in names}


def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "finetune-unet",
        help="Style Swap step 1: fine-tune the prior's UNet on the source images with the empty prompt",
        description=(
            "Fine-tune the whole UNet of a prior pipeline folder on the source train images with the empty "
            "prompt (VAE and text encoder frozen), random resized crops, epsilon MSE. Writes a diffusers UNet "
            "folder with dginstyle.json and loss_curve.json; resumable from --checkpoints."
        ),
    )
    add_common_training_args(p, lr=2e-6, batch=1, accumulation=2)
    p.add_argument("--resize-ratios", type=ratio_list, default=DEFAULT_RESIZE_RATIOS, help="comma-separated resize ratios")
    p.add_argument("--crop-size", type=int, default=512, help="square crop after the resize (pixels)")
    p.set_defaults(handler=_run_cli)
    return p


def _run_cli(args: argparse.Namespace) -> None:
    finetune_unet(
        args.prior, args.source, args.out, args.checkpoints, resize_ratios=args.resize_ratios, crop_size=args.crop_size, **common_kwargs(args)
    )
