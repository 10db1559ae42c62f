"""Style Swap step 2: train a ControlNet against the source-styled UNet U^S (docs/method.md 1.2).

The ControlNet starts as a copy of U^S's encoder (conv_in, time embedding, down blocks, mid
block; zero-initialised output convolutions) with a 20-channel one-hot conditioning embedding,
and is trained while U^S, the VAE and the text encoder stay frozen: epsilon MSE, t uniform in
[0, 1000), DDPM add_noise, ControlNet residuals added to U^S's skip and mid features.

Samples: crop_size windows at the source's native resolution, centred on a pixel of a class
chosen by rare class sampling (RCS, docs/method.md 2) in an image holding more than
`rcs_min_pixels` of it, clamped to the image; prompt = the names of the classes in the crop.
The per-class pixel counts of all training crops (and the crops per RCS class) are kept with
every checkpoint and written as class_stats.json with the result.

Validation images are made WITH the Style Swap: the ControlNet plugged into the prior's UNet
U^P (not U^S), plain DDIM + CFG (the MRLF module's plain mode), on fixed layouts.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np

from dginstyle.data import contract
from dginstyle.io import DataError, atomic_write_bytes, atomic_write_json, read_rgb

log = logging.getLogger(__name__)

KIND = "controlnet"
CLASS_STATS = "class_stats.json"
VALIDATION_DIR = "validation"
STREAM_SAMPLES, STREAM_NOISE, STREAM_VALIDATION = 11, 12, 13


# ============================================================================= loading


def load_unet_folder(path: Path, what: str = "UNet"):
    """A diffusers UNet2DConditionModel folder (e.g. U^S from finetune-unet), float32."""
    from diffusers import UNet2DConditionModel

    return _load_folder(UNet2DConditionModel, Path(path), what)


def load_controlnet_folder(path: Path):
    """A diffusers ControlNetModel folder, float32 (check it with models.check_controlnet)."""
    from diffusers import ControlNetModel

    return _load_folder(ControlNetModel, Path(path), "ControlNet")


def _load_folder(cls, path: Path, what: str):
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    if not (path / "config.json").is_file():
        raise DataError(f"{path}: not a diffusers {what} folder (no config.json)")
    try:
        model = cls.from_pretrained(path)
    except (OSError, ValueError, EnvironmentError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: cannot load {what} ({exc.__class__.__name__}: {first})") from None
    return model


def check_compatible(model, unet, model_path: Path, unet_path: Path, what: str = "ControlNet") -> None:
    """`model` (a ControlNet, or another UNet) must fit `unet`: same block widths, levels, attention width."""
    problems = []
    for key in ("block_out_channels", "cross_attention_dim", "in_channels", "layers_per_block", "down_block_types"):
        a, b = model.config.get(key), unet.config.get(key)
        if a is not None and b is not None and list(np.atleast_1d(a)) != list(np.atleast_1d(b)):
            problems.append(f"{key} {a} vs {b}")
    if problems:
        raise DataError(f"{model_path}: {what} does not fit the UNet {unet_path} ({'; '.join(problems)})")


# ============================================================================= the stage


def train_controlnet(
    prior: Path,
    unet: Path,
    source: Path,
    out: Path,
    checkpoints: Path,
    *,
    steps: int,
    learning_rate: float = 1e-5,
    batch_size: int = 2,
    gradient_accumulation: int = 4,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    weight_decay: float = 1e-2,
    adam_epsilon: float = 1e-8,
    max_grad_norm: float = 1.0,
    crop_size: int = 512,
    rcs_temperature: float = 0.01,
    rcs_min_pixels: int = 3000,
    validation_every: int = 0,
    validation_prompts: list[str] | None = None,
    validation_count: int = 4,
    validation_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    mixed_precision: str = "fp16",
    gradient_checkpointing: bool = False,
    seed: int = 0,
    device: str = "auto",
    checkpoint_every: int = 500,
    log_every: int = 10,
    split: str = "train",
    prior_config: str | None = None,
) -> dict:
    """Train a 20-channel ControlNet from U^S's encoder against frozen U^S; returns the metadata."""
    import torch
    import torch.nn.functional as F

    from dginstyle.diffusion import crops, models
    from dginstyle.diffusion.finetune import (
        Checkpoints,
        Prefetcher,
        Runtime,
        _check_positive,
        _mean,
        check_crop_size,
        encode_prompts,
        freeze,
        loss_log,
        model_fingerprint,
        model_source,
        prior_config_record,
        recent_mean,
        run_steps,
        step_keys,
        torch_generator,
        write_output,
    )

    prior, unet_path, source, out, checkpoints = Path(prior), Path(unet), Path(source), Path(out), Path(checkpoints)
    _check_positive(steps=steps, batch_size=batch_size, gradient_accumulation=gradient_accumulation, crop_size=crop_size)
    crops.source_stems(source, split)  # manifest + split exist
    sampler = crops.source_rare_class_sampler(source, split, rcs_temperature, rcs_min_pixels)
    config = dict(
        prior=model_source(prior),
        prior_fingerprint=model_fingerprint(prior),
        **prior_config_record(prior_config),
        unet=str(unet_path.resolve()),
        unet_fingerprint=model_fingerprint(unet_path),
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
        crop_size=crop_size,
        rcs_temperature=rcs_temperature,
        rcs_min_pixels=rcs_min_pixels,
        seed=seed,
    )

    rt = Runtime.create(device, mixed_precision, seed)
    components = models.load_components(prior, config=prior_config)
    vae, text_encoder, tokenizer, unet_p = components["vae"], components["text_encoder"], components["tokenizer"], components["unet"]
    unet_s = load_unet_folder(unet_path, "U^S (source UNet)")
    check_compatible(unet_s, unet_p, unet_path, prior / "unet", "U^S")
    check_crop_size(crop_size, vae, unet_s, "--crop-size")
    torch.manual_seed(seed)  # the conditioning embedding's random init
    controlnet = models.controlnet_from_unet(unet_s, vae)
    models.check_controlnet(controlnet, out, vae)
    scheduler = models.training_scheduler(components["scheduler"], f"{prior}/scheduler")  # the prior's schedule and prediction type
    for module in (vae, text_encoder, unet_s, unet_p):
        freeze(module, rt)
    controlnet.to(rt.device).train()
    if gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        unet_s.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        controlnet.parameters(), lr=learning_rate, betas=(adam_beta1, adam_beta2), weight_decay=weight_decay, eps=adam_epsilon
    )
    store = Checkpoints(checkpoints, "train-controlnet")
    state = store.resume(controlnet, optimizer, rt, config, steps)
    crop_stats = state["extra"].setdefault("crop_stats", empty_crop_stats())
    scaling = vae.config.scaling_factor
    num_train_timesteps = scheduler.config.num_train_timesteps

    def load_batch(key: tuple[int, int]) -> list[dict]:
        """CPU side of a micro-batch (RCS draws, decode, crop); runs ahead on the prefetch thread."""
        rng = crops.seeded_rng(seed, STREAM_SAMPLES, *key)
        return [rcs_sample(source, split, sampler, crop_size, rng) for _ in range(batch_size)]

    prefetch = Prefetcher(load_batch, step_keys(state["step"], steps, gradient_accumulation))

    def compute_loss(step: int, micro: int):
        samples = prefetch.get((step, micro))
        for sample in samples:
            record_crop(crop_stats, sample)  # in step order, on this thread
        pixels = [crops.to_unit_range(s["image"]) for s in samples]
        conditions = [crops.one_hot(s["label"]) for s in samples]
        prompts = [s["prompt"] for s in samples]
        pixels_t = torch.from_numpy(np.stack(pixels)).to(rt.device, rt.frozen_dtype)
        cond = torch.from_numpy(np.stack(conditions)).to(rt.device)
        text = encode_prompts(tokenizer, text_encoder, prompts, rt)
        gen = torch_generator(seed, STREAM_NOISE, step, micro)
        with torch.no_grad():
            latents = vae.encode(pixels_t).latent_dist.sample(generator=gen).float() * scaling
        noise = torch.randn(latents.shape, generator=gen).to(rt.device)
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=gen).to(rt.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with rt.autocast():
            down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            pred = unet_s(
                noisy,
                timesteps,
                encoder_hidden_states=text,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            ).sample
        return F.mse_loss(pred.float(), models.prediction_target(scheduler, latents, noise, timesteps), reduction="mean")

    layouts = validation_layouts(source, split, sampler, crop_size, validation_count, validation_prompts, seed) if validation_every > 0 else []
    validation_dir = checkpoints / VALIDATION_DIR
    validation_components = dict(components, unet=unet_p, controlnet=controlnet)  # the Style Swap: U^P, not U^S

    def on_step(done: int) -> None:
        if validation_every > 0 and (done % validation_every == 0 or done == steps):
            controlnet.eval()
            images = validate(validation_components, layouts, rt, seed, validation_inference_steps, guidance_scale)
            gain = control_gain(dict(components, unet=unet_s, controlnet=controlnet), layouts, rt, seed)
            state["extra"].setdefault("control_gain", []).append([done, gain["without_control"], gain["with_control"]])
            log.info("train-controlnet: step %d validation loss without control %.4f, with control %.4f", done, gain["without_control"], gain["with_control"])
            controlnet.train()
            atomic_write_bytes(validation_dir / f"step_{done:08d}.png", validation_grid(images, [l["label"] for l in layouts]))

    def save(step: int) -> None:
        path = store.save(step, controlnet, optimizer, rt, config, state)
        atomic_write_json(path / CLASS_STATS, crop_stats_report(crop_stats, sampler, crop_size))

    with prefetch:
        run_steps(
            controlnet, optimizer, compute_loss, rt, state, steps, gradient_accumulation, max_grad_norm, checkpoint_every, log_every, save, on_step, tag="train-controlnet"
        )

    validation_files = sorted(p for p in validation_dir.glob("step_*.png") if int(p.stem.split("_")[1]) <= state["step"]) if validation_every > 0 else []
    metadata = dict(
        kind=KIND,
        prior=model_source(prior),
        prior_metadata=models.read_metadata(prior),
        prediction_type=scheduler.config.prediction_type,
        unet=str(unet_path.resolve()),
        unet_metadata=models.read_metadata(unet_path),
        source=str(source.resolve()),
        steps=state["step"],
        hyperparameters=config,
        conditioning_channels=controlnet.config.conditioning_channels,
        gradient_checkpointing=gradient_checkpointing,
        mixed_precision=mixed_precision,
        device=str(rt.device),
        compute_dtype=str(rt.autocast_dtype or torch.float32),
        rcs_probabilities=crop_stats_report(crop_stats, sampler, crop_size)["rcs_probabilities"],
        training_log=loss_log(state["losses"], log_every),
        seconds_per_step=_mean(state["step_seconds"]),
        resumed_from=state["resumed_from"],
        validation=dict(
            every=validation_every,
            unet="prior",  # Style Swap: validation images use U^P
            unet_path=str((prior / "unet").resolve()) if prior.is_dir() else str(prior),
            sampler="mrlf plain mode (DDIM, CFG)",
            inference_steps=validation_inference_steps,
            guidance_scale=guidance_scale,
            prompts=[l["prompt"] for l in layouts],
            layouts=[{k: l[k] for k in ("stem", "rcs_class", "box")} for l in layouts],
            images=[f"{VALIDATION_DIR}/{p.name}" for p in validation_files],
            # [step, loss without control, loss with control] on the validation layouts:
            # how much the layout helps U^S denoise (see `control_gain`)
            control_gain=[row for row in state["extra"].get("control_gain", []) if row[0] <= state["step"]],
        ),
    )

    def write(folder: Path) -> None:
        controlnet.save_pretrained(folder, safe_serialization=True)
        atomic_write_json(folder / CLASS_STATS, crop_stats_report(crop_stats, sampler, crop_size))
        for path in validation_files:
            atomic_write_bytes(folder / VALIDATION_DIR / path.name, path.read_bytes())

    write_output(out, write, metadata, state, "train-controlnet")
    log.info("train-controlnet: wrote %s (%d steps, loss %.5f over the last %d)", out, state["step"], recent_mean(state["losses"], log_every), log_every)
    return metadata


# ============================================================================= samples


def rcs_sample(source: Path, split: str, sampler, crop: int, rng: np.random.Generator) -> dict:
    """One training sample: RCS class and image, a crop centred on a pixel of it, its prompt."""
    from dginstyle.diffusion import crops

    cls, stem = sampler.sample(rng)
    label = crops.load_label(source, split, stem)
    top, left, y, x = crops.centred_window(label, cls, crop, rng, where=f"{source}/labels/{split}/{stem}.png")
    image = np.asarray(read_rgb(contract.find_image(source, split, stem)))
    if image.shape[:2] != label.shape:
        raise DataError(f"{source}: image and label of {stem!r} differ in size ({image.shape[:2]} vs {label.shape})")
    label_crop = label[top : top + crop, left : left + crop]
    return {
        "stem": stem,
        "rcs_class": cls,
        "box": [top, left, crop, crop],
        "pixel": [y, x],
        "image": np.ascontiguousarray(image[top : top + crop, left : left + crop]),
        "label": np.ascontiguousarray(label_crop),
        "prompt": crops.class_prompt(label_crop),
    }


def empty_crop_stats() -> dict:
    from dginstyle.labels import NUM_CLASSES

    return {"crops": 0, "class_pixels": [0] * (NUM_CLASSES + 1), "rcs_class_crops": [0] * NUM_CLASSES, "crops_holding_rcs_class": 0}


def record_crop(stats: dict, sample: dict) -> None:
    from dginstyle.data.contract import class_pixel_counts

    counts = class_pixel_counts(sample["label"])
    stats["crops"] += 1
    stats["class_pixels"] = [a + b for a, b in zip(stats["class_pixels"], counts)]
    stats["rcs_class_crops"][sample["rcs_class"]] += 1
    stats["crops_holding_rcs_class"] += int(counts[sample["rcs_class"]] > 0)


def crop_stats_report(stats: dict, sampler, crop: int) -> dict:
    """class_stats.json: pixels per class over all training crops, crops per RCS class, p(c)."""
    from dginstyle.labels import CLASSES

    names = list(CLASSES) + ["ignore"]
    return {
        "classes": names,
        "crop_size": crop,
        "crops": stats["crops"],
        "class_pixels": stats["class_pixels"],
        "class_pixel_share": [c / max(1, sum(stats["class_pixels"])) for c in stats["class_pixels"]],
        "rcs_class_crops": dict(zip(CLASSES, stats["rcs_class_crops"])),
        "crops_holding_rcs_class": stats["crops_holding_rcs_class"],
        "rcs_probabilities": dict(zip(CLASSES, [float(p) for p in sampler.probabilities])),
        "rcs_temperature": sampler.temperature,
        "rcs_min_pixels": sampler.min_pixels,
    }


# ============================================================================= validation


def validation_layouts(source: Path, split: str, sampler, crop: int, count: int, prompts: list[str] | None, seed: int) -> list[dict]:
    """Fixed validation layouts (RCS crops from a seeded stream); prompts cycle over `prompts`."""
    from dginstyle.diffusion import crops

    rng = crops.seeded_rng(seed, STREAM_VALIDATION)
    count = max(count, len(prompts or []))
    layouts = []
    for i in range(count):
        sample = rcs_sample(source, split, sampler, crop, rng)
        if prompts:
            sample["prompt"] = prompts[i % len(prompts)]
        layouts.append(sample)
    return layouts


def validate(components: dict, layouts: list[dict], rt, seed: int, inference_steps: int, guidance_scale: float) -> list[np.ndarray]:
    """One image per layout from `components` (unet = U^P) with the MRLF sampler's plain mode."""
    import torch

    from dginstyle.diffusion import models, mrlf

    settings = mrlf.MRLFSettings(mode="plain", steps=inference_steps, guidance_scale=guidance_scale)
    images = []
    for i, layout in enumerate(layouts):
        parts = dict(components, scheduler=models.noise_scheduler("ddim", components["scheduler"].config))
        with torch.no_grad(), rt.autocast():
            images.append(mrlf.generate_image(parts, layout["label"], layout["prompt"], seed * 1000 + i, settings))
    return images


CONTROL_GAIN_TIMESTEPS = (100, 300, 500, 700, 900)


def control_gain(components: dict, layouts: list[dict], rt, seed: int) -> dict:
    """Denoising loss of U^S on the validation layouts' own images, with the ControlNet's
    residuals at scale 0 and at scale 1 (same noise, same timesteps, class-list prompts).

    A number that shows whether the ControlNet has learnt to use the layout long before the
    pictures do: the lower "with control" is than "without", the more of the image the layout
    explains.
    """
    import torch
    import torch.nn.functional as F

    from dginstyle.diffusion import crops, models
    from dginstyle.diffusion.finetune import encode_prompts, torch_generator

    vae, unet, controlnet = components["vae"], components["unet"], components["controlnet"]
    scheduler = models.training_scheduler(components["scheduler"], "the generator's scheduler")
    pixels = torch.from_numpy(np.stack([crops.to_unit_range(l["image"]) for l in layouts])).to(rt.device, rt.frozen_dtype)
    cond = torch.from_numpy(np.stack([crops.one_hot(l["label"]) for l in layouts])).to(rt.device)
    losses = {"without_control": 0.0, "with_control": 0.0}
    with torch.no_grad(), rt.autocast():
        text = encode_prompts(components["tokenizer"], components["text_encoder"], [l["prompt"] for l in layouts], rt)
        latents = vae.encode(pixels).latent_dist.mean.float() * vae.config.scaling_factor
        gen = torch_generator(seed, STREAM_VALIDATION, 1)
        for t in CONTROL_GAIN_TIMESTEPS:
            noise = torch.randn(latents.shape, generator=gen).to(rt.device)
            timesteps = torch.full((len(layouts),), t, device=rt.device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            for key, scale in (("without_control", 0.0), ("with_control", 1.0)):
                down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=cond, conditioning_scale=scale, return_dict=False)
                pred = unet(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
                target = models.prediction_target(scheduler, latents, noise, timesteps)
                losses[key] += float(F.mse_loss(pred.float(), target)) / len(CONTROL_GAIN_TIMESTEPS)
    return {k: round(v, 5) for k, v in losses.items()}


def validation_grid(images: list[np.ndarray], labels: list[np.ndarray], gap: int = 2) -> bytes:
    """PNG bytes: one row per layout, generated image | colour-coded label."""
    from PIL import Image

    from dginstyle.labels import colorize

    if not images:
        return b""
    h, w = images[0].shape[:2]
    grid = np.full((len(images) * (h + gap) - gap, 2 * w + gap, 3), 24, dtype=np.uint8)
    for i, (image, label) in enumerate(zip(images, labels)):
        y = i * (h + gap)
        grid[y : y + h, :w] = image
        grid[y : y + h, w + gap :] = colorize(label)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


# ============================================================================= CLI


def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from dginstyle.diffusion.finetune import add_common_training_args

    p = sub.add_parser(
        "train-controlnet",
        help="Style Swap step 2: train a 20-channel ControlNet against the source UNet U^S",
        description=(
            "Train a ControlNet initialised from U^S's encoder on RCS-centred source crops (condition: 20-channel "
            "one-hot label; prompt: the crop's class names) while U^S, VAE and text encoder stay frozen. "
            "Validation images use the prior's UNet (the Style Swap). Writes a diffusers ControlNet folder with "
            "dginstyle.json, loss_curve.json, class_stats.json and validation/; resumable from --checkpoints."
        ),
    )
    add_common_training_args(p, lr=1e-5, batch=2, accumulation=4)
    p.add_argument("--unet", required=True, type=Path, help="U^S: the UNet folder written by finetune-unet")
    p.add_argument("--crop-size", type=int, default=512, help="square crop at native source resolution (pixels)")
    p.add_argument("--rcs-temperature", type=float, default=0.01, help="RCS softmax temperature T")
    p.add_argument("--rcs-min-pixels", type=int, default=3000, help="an image is drawn for class c only if it holds more pixels of c")
    p.add_argument("--validation-every", type=int, default=0, help="steps between validation grids (0 = none; the last step always gets one)")
    p.add_argument("--validation-prompts", nargs="*", default=None, help="prompts for the validation layouts (default: their class names)")
    p.add_argument("--validation-count", type=int, default=4, help="number of fixed validation layouts")
    p.add_argument("--validation-inference-steps", type=int, default=20, help="DDIM steps of a validation image")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance of validation images")
    p.set_defaults(handler=_run_cli)
    return p


def _run_cli(args: argparse.Namespace) -> None:
    from dginstyle.diffusion.finetune import common_kwargs

    train_controlnet(
        args.prior,
        args.unet,
        args.source,
        args.out,
        args.checkpoints,
        crop_size=args.crop_size,
        rcs_temperature=args.rcs_temperature,
        rcs_min_pixels=args.rcs_min_pixels,
        validation_every=args.validation_every,
        validation_prompts=args.validation_prompts,
        validation_count=args.validation_count,
        validation_inference_steps=args.validation_inference_steps,
        guidance_scale=args.guidance_scale,
        **common_kwargs(args),
    )
