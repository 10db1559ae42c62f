"""`pretrain_prior`: a tiny latent diffusion model trained from scratch on the prior corpus.

The miniature world's stand-in for Stable Diffusion 1.5: an AutoencoderKL, a CLIP text
encoder (with the offline caption tokenizer) and a UNet2DConditionModel, trained on random
square crops of the unlabelled multi-style street corpus and its captions.

Stage 1 (VAE): a deterministic autoencoder in AutoencoderKL's clothes, trained on small random
crops (it is fully convolutional) with MSE plus extra weight on colour (below) and a small KL
term that only bounds the latent scale. Its posterior is a point mass: the log-variance head is
pinned at diffusers' floor (-30), so `latent_dist.sample()` everywhere (fine-tune, ControlNet,
MRLF) equals the mean. Why: trained briefly, a sampled posterior kept std 0.5 in the channels the
decoder did not use; that noise cannot be predicted and set the diffusion loss floor (0.23), and
the colour information drowned in it. Afterwards the latent scaling factor is measured on the
corpus (1 / std of the latents, SD's 0.18215) and stored in `vae.config.scaling_factor`.
The VAE may also learn from an extra image set (`vae_extra_corpus`, the source's look in the
default config) that the UNet never sees: it is a codec, and must represent the source.
Stage 2 (text encoder + UNet, jointly, from random init): epsilon or velocity prediction on SD 1.5's DDPM
schedule, caption dropout to the empty prompt (so classifier-free guidance works), random
horizontal flips and random crops (done in latent space on latents pre-encoded once from the
full images and their mirror images), AdamW with warm-up + cosine decay, an EMA of both
trained models which is what gets saved.

Both stages checkpoint every `checkpoint_every` steps under `checkpoints/{vae,unet}` and
resume from there after a kill; the pipeline folder is built in a hidden sibling and renamed
into place when complete. Heavy imports live inside the functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from dginstyle.diffusion.layouts import prompt_vocabulary
from dginstyle.io import DataError, atomic_write_bytes, atomic_write_json, fresh_staging_dir, read_rgb, replace_dir, sha256_file

log = logging.getLogger(__name__)

#: The prior's miniature widths (a smaller UNet than TinySpec's default: more steps per CPU minute).
PRIOR_SPEC = dict(
    vae_channels=(32, 64, 64),
    latent_channels=4,
    unet_channels=(32, 64, 128),
    unet_attention_head_dim=8,
    layers_per_block=1,
    text_hidden=64,
    text_layers=2,
    text_heads=4,
    max_tokens=77,  # CLIP's context: the longest generation prompt (all 19 classes + weather) fits
    norm_groups=16,
)

DEFAULTS = dict(
    resolution=64,
    vae_steps=300,
    unet_steps=700,
    batch_size=32,
    vae_batch_size=16,
    vae_crop=32,
    vae_learning_rate=2e-3,
    learning_rate=5e-4,
    seed=0,
    checkpoint_every=100,
    prediction_type="v_prediction",
)
KL_WEIGHT = 1e-6  # on the per-sample summed KL, against the per-pixel mean reconstruction loss
# Colour (each pixel's deviation from its grey value) is a small part of the corpus' signal: with
# a plain L1 or MSE the tiny VAE reconstructed grey images for its first thousand steps. Extra
# weight on the colour error makes it learn colour as early as brightness.
CHROMA_WEIGHT = 4.0
LOGVAR_FLOOR = -30.0  # diffusers clamps the log-variance here: std 3e-7, a point mass
CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999
WARMUP_STEPS = 50
LATENT_SCALE_IMAGES = 500  # images used to measure the latent scaling factor

WEATHERS = ("sunny", "foggy", "rainy", "snowy", "night")
SAMPLE_STYLES = ("painting", "sketch", "cartoon", "vintage photo", "black and white photo")
SAMPLE_SEEDS = (0, 1, 2, 3)

SHIPPED_WEIGHT_FILES = (
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
)


def sample_prompts() -> list[str]:
    """The rows of the sample grid: every weather as a photo, then the other styles."""
    article = lambda style: "an" if style[0] in "aeiou" else "a"  # noqa: E731
    rows = [f"a photo of a city street with car, in {weather} weather" for weather in WEATHERS]
    rows += [f"{article(style)} {style} of a city street with car, in sunny weather" for style in SAMPLE_STYLES]
    return rows


# ----------------------------------------------------------------------------- corpus


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_corpus(corpus: Path, split: str = "train"):
    """(images uint8 [N,3,H,W], captions, manifest) of a prepared prior corpus."""
    corpus = Path(corpus)
    captions_file = corpus / "captions.jsonl"
    if not captions_file.is_file():
        raise DataError(f"{corpus}: no captions.jsonl (not a prepared prior corpus; run `dginstyle prepare minicity --domain prior`)")
    manifest_file = corpus / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    rows = []
    for number, line in enumerate(captions_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{captions_file}:{number}: not a JSON line") from None
        if row.get("split", split) == split:
            rows.append(row)
    if not rows:
        raise DataError(f"{captions_file}: no rows for split {split!r}")
    rows.sort(key=lambda r: r["stem"])
    paths, captions = [], []
    folder = corpus / "images" / split
    for row in rows:
        candidates = sorted(folder.glob(f"{row['stem']}.*"))
        if not candidates:
            raise DataError(f"{folder}: image for {row['stem']!r} not found")
        paths.append(candidates[0])
        captions.append(str(row.get("caption", "")))
    return _stack_images(paths, folder, "the prior corpus"), captions, manifest


def _stack_images(paths: list[Path], folder: Path, what: str):
    """The images at `paths` as one uint8 [N,3,H,W] tensor; DataError naming a damaged file, or
    `folder` when the sizes differ (`what` must be one size)."""
    import numpy as np
    import torch

    arrays = [np.asarray(read_rgb(path)) for path in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{folder}: images have different sizes {sorted(shapes)}; {what} must be one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _fit_images(images, resolution: int, multiple: int):
    """Resize so the short side is >= resolution, then crop H and W to multiples of `multiple`."""
    import torch.nn.functional as F

    _, _, h, w = images.shape
    if min(h, w) < resolution:
        scale = resolution / min(h, w)
        h, w = max(resolution, round(h * scale)), max(resolution, round(w * scale))
        images = F.interpolate(images.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        images = images.round().clamp(0, 255).byte()
    h2, w2 = h - h % multiple, w - w % multiple
    return images[:, :, :h2, :w2].contiguous()


def _to_unit(batch):
    return batch.float().div(127.5).sub(1.0)


def _random_crops(sets, count: int, size: int, generator, flip: bool = True):
    """`count` random square crops from a list of uint8 [N,3,H,W] tensors (sets of different
    image sizes allowed); every image of every set is equally likely."""
    import torch

    starts = torch.tensor([0] + [len(s) for s in sets]).cumsum(0)
    index = torch.randint(0, int(starts[-1]), (count,), generator=generator)
    ys = torch.rand(count, generator=generator)
    xs = torch.rand(count, generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    crops = []
    for i in range(count):
        which = int(torch.searchsorted(starts, index[i], right=True)) - 1
        image = sets[which][int(index[i] - starts[which])]
        _, h, w = image.shape
        y, x = int(ys[i] * (h - size + 1)), int(xs[i] * (w - size + 1))
        crop = image[:, y : y + size, x : x + size]
        if flip and flips[i]:
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops)


def load_extra_images(dataset: Path, split: str = "train"):
    """uint8 [N,3,H,W] images of a prepared dataset's split (labels unused): what the VAE
    learns to reconstruct besides the prior corpus (`--vae-extra-corpus`)."""
    folder = Path(dataset) / "images" / split
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise DataError(f"{folder}: no images (the VAE's extra corpus must be a prepared dataset with a {split!r} split)")
    return _stack_images(paths, folder, "the VAE's extra corpus")


# ----------------------------------------------------------------------------- sampling


def encode_prompts(tokenizer, text_encoder, prompts: list[str]):
    """CLIP hidden states of `prompts` (padded to the tokenizer's max length)."""
    import torch

    ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0]


def generate(components: dict, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 7.5, height: int = 64, width: int = 64, batch: int = 32):
    """A plain DDIM loop with classifier-free guidance: float images in [0, 1], [N,3,H,W].

    Image i uses prompts[i] and latents drawn from a CPU generator seeded with seeds[i].
    """
    import torch

    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    vae, unet = components["vae"], components["unet"]
    scheduler = components["scheduler"]
    device = unet.device
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    channels = unet.config.in_channels
    scale = vae.config.scaling_factor
    uncond = encode_prompts(components["tokenizer"], components["text_encoder"], [""])
    outputs = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start : start + batch])
        cond = encode_prompts(components["tokenizer"], components["text_encoder"], chunk)
        context = torch.cat([uncond.expand(len(chunk), -1, -1), cond])
        latents = torch.stack(
            [torch.randn((channels, height // factor, width // factor), generator=torch.Generator().manual_seed(int(s))) for s in seeds[start : start + batch]]
        ).to(device, unet.dtype)
        scheduler.set_timesteps(steps)
        latents = latents * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                # the UNet's output is the noise or the velocity (the scheduler's prediction_type,
                # which its step follows); guidance is linear in either
                pred_u, pred_c = unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
                pred = pred_u + guidance * (pred_c - pred_u)
                latents = scheduler.step(pred, t, latents).prev_sample
            images = vae.decode(latents / scale).sample
        outputs.append(images.float().add(1).div(2).clamp(0, 1).cpu())
    return torch.cat(outputs)


def save_sample_grid(components: dict, path: Path, prompts: list[str] | None = None, seeds: tuple[int, ...] = SAMPLE_SEEDS, resolution: int = 64, steps: int = 20, guidance: float = 7.5) -> None:
    """PNG grid: one row per prompt (labelled on the left), one column per seed."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    prompts = list(prompts or sample_prompts())
    flat_prompts = [p for p in prompts for _ in seeds]
    flat_seeds = [s for _ in prompts for s in seeds]
    images = generate(components, flat_prompts, flat_seeds, steps=steps, guidance=guidance, height=resolution, width=resolution)
    label_w, pad = 150, 2
    cell = resolution
    grid = Image.new("RGB", (label_w + len(seeds) * (cell + pad), len(prompts) * (cell + pad)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for r, prompt in enumerate(prompts):
        short = prompt.replace("a city street with car, ", "").replace(" of", "").replace(" weather", "")
        draw.text((3, r * (cell + pad) + cell // 2 - 6), short[:28], fill="black", font=font)
        for c in range(len(seeds)):
            array = (images[r * len(seeds) + c].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            grid.paste(Image.fromarray(array), (label_w + c * (cell + pad), r * (cell + pad)))
    import io

    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- training


def _resume(directory: Path, fingerprint: str, total: int, stage: str):
    """The latest checkpoint of this stage if it belongs to these settings, else None (stale removed)."""
    from dginstyle.diffusion.training import load_latest_checkpoint

    ckpt = load_latest_checkpoint(directory)
    if ckpt is None:
        return None
    if ckpt["extra"].get("fingerprint") != fingerprint or ckpt["step"] > total:
        log.warning("%s: checkpoints from other settings (or beyond %d steps); starting the %s stage afresh", directory, total, stage)
        shutil.rmtree(directory)  # a sub-folder (vae/, unet/) of the checkpoint workspace this stage marked
        return None
    log.info("%s stage: resuming from step %d (%s)", stage, ckpt["step"], ckpt["path"])
    return ckpt


def pin_posterior(vae) -> None:
    """Make the VAE's posterior a point mass: the log-variance half of `quant_conv` outputs
    LOGVAR_FLOOR whatever the input, and gradients never move it (see the module docstring)."""
    import torch

    conv = vae.quant_conv
    half = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[half:].zero_()
        conv.bias[half:].fill_(LOGVAR_FLOOR)

    def keep_mean_half(grad):
        grad = grad.clone()
        grad[half:] = 0
        return grad

    conv.weight.register_hook(keep_mean_half)
    conv.bias.register_hook(keep_mean_half)


def reconstruction_loss(recon, target):
    """MSE plus CHROMA_WEIGHT x the MSE of colour (each pixel minus its mean over RGB)."""
    chroma = lambda x: x - x.mean(1, keepdim=True)  # noqa: E731
    return (recon - target).pow(2).mean() + CHROMA_WEIGHT * (chroma(recon) - chroma(target)).pow(2).mean()


def _train_vae(vae, image_sets, *, steps, batch_size, crop, lr, seed, directory, fingerprint, checkpoint_every, device):
    import torch

    from dginstyle.diffusion.training import capture_rng_state, restore_rng_state, save_checkpoint, set_lr, warmup_cosine

    generator = torch.Generator().manual_seed(seed + 1)
    pin_posterior(vae)
    # weight decay 0: the pinned log-variance weights must stay exactly where they are
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    step, history, wall = 0, [], 0.0
    ckpt = _resume(directory, fingerprint, steps, "vae")
    resumed_from = None
    if ckpt is not None:
        vae.load_state_dict(ckpt["modules"]["vae"])
        optimizer.load_state_dict(ckpt["optimizers"]["vae"])
        restore_rng_state(ckpt["rng_state"], {"data": generator})
        step, history, wall = ckpt["step"], ckpt["extra"].get("history", []), ckpt["extra"].get("wall_s", 0.0)
        resumed_from = step
    vae.train()
    window: list[float] = []
    started = time.perf_counter()
    while step < steps:
        set_lr(optimizer, lr * warmup_cosine(step, steps, WARMUP_STEPS))
        batch = _to_unit(_random_crops(image_sets, batch_size, crop, generator)).to(device)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.mean).sample
        loss = reconstruction_loss(recon, batch) + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        window.append((recon.detach() - batch).abs().mean().item())  # L1 is what the record reports
        if step % 10 == 0 or step == steps:
            history.append([step, sum(window) / len(window)])
            window = []
            if step % 50 == 0 or step == steps:
                log.info("vae step %d/%d  L1 %.4f", step, steps, history[-1][1])
        if step % checkpoint_every == 0 or step == steps:
            elapsed = wall + time.perf_counter() - started
            save_checkpoint(directory, step, {"vae": vae}, {"vae": optimizer}, capture_rng_state({"data": generator}),
                            {"fingerprint": fingerprint, "history": history, "wall_s": elapsed})
    vae.eval()
    wall_total = wall + time.perf_counter() - started
    return {"steps": step, "history": history, "final_l1": history[-1][1] if history else None, "wall_s": round(wall_total, 1), "resumed_from": resumed_from}


def _encode_corpus(vae, images, device, chunk: int = 64):
    """Latents (the point-mass posterior's mean) of every image and its mirror image: [2N,C,h,w]."""
    import torch

    means = []
    with torch.no_grad():
        for flipped in (False, True):
            for start in range(0, len(images), chunk):
                batch = _to_unit(images[start : start + chunk]).to(device)
                if flipped:
                    batch = batch.flip(-1)
                means.append(vae.encode(batch).latent_dist.mean.cpu())
    return torch.cat(means)


def _train_unet(components, latents, token_ids, empty_ids, *, scale, steps, batch_size, latent_size, lr, seed, directory, fingerprint, checkpoint_every, device):
    import torch
    import torch.nn.functional as F

    from dginstyle.diffusion.models import noise_scheduler, prediction_target
    from dginstyle.diffusion.training import EMA, capture_rng_state, restore_rng_state, save_checkpoint, set_lr, warmup_cosine

    unet, text_encoder = components["unet"], components["text_encoder"]
    ddpm = noise_scheduler("ddpm", components["scheduler"].config)  # the schedule and prediction type the pipeline saves
    generator = torch.Generator().manual_seed(seed + 2)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema_unet, ema_text = EMA(unet, EMA_DECAY), EMA(text_encoder, EMA_DECAY)
    step, history, wall, resumed_from = 0, [], 0.0, None
    ckpt = _resume(directory, fingerprint, steps, "unet")
    if ckpt is not None:
        unet.load_state_dict(ckpt["modules"]["unet"])
        text_encoder.load_state_dict(ckpt["modules"]["text_encoder"])
        ema_unet.load_state_dict(ckpt["modules"]["ema_unet"], ckpt["extra"]["ema_updates"])
        ema_text.load_state_dict(ckpt["modules"]["ema_text_encoder"], ckpt["extra"]["ema_updates"])
        optimizer.load_state_dict(ckpt["optimizers"]["unet_text"])
        restore_rng_state(ckpt["rng_state"], {"data": generator})
        step, history, wall = ckpt["step"], ckpt["extra"].get("history", []), ckpt["extra"].get("wall_s", 0.0)
        resumed_from = step
    n2, channels, hl, wl = latents.shape
    n = n2 // 2
    unet.train()
    text_encoder.train()
    window: list[float] = []
    started = time.perf_counter()
    while step < steps:
        set_lr(optimizer, lr * warmup_cosine(step, steps, WARMUP_STEPS))
        index = torch.randint(0, n2, (batch_size,), generator=generator)
        ys = torch.randint(0, hl - latent_size + 1, (batch_size,), generator=generator)
        xs = torch.randint(0, wl - latent_size + 1, (batch_size,), generator=generator)
        drop = torch.rand(batch_size, generator=generator) < CAPTION_DROPOUT
        noise = torch.randn((batch_size, channels, latent_size, latent_size), generator=generator)
        timesteps = torch.randint(0, ddpm.config.num_train_timesteps, (batch_size,), generator=generator)
        crops = torch.stack([latents[index[i], :, ys[i] : ys[i] + latent_size, xs[i] : xs[i] + latent_size] for i in range(batch_size)])
        clean = (crops * scale).to(device)
        ids = token_ids[index % n].clone()
        ids[drop] = empty_ids
        noise = noise.to(device)
        timesteps = timesteps.to(device)
        noisy = ddpm.add_noise(clean, noise, timesteps)
        context = text_encoder(ids.to(device))[0]
        pred = unet(noisy, timesteps, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred.float(), prediction_target(ddpm, clean, noise, timesteps).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        step += 1
        window.append(loss.item())
        if step % 10 == 0 or step == steps:
            history.append([step, sum(window) / len(window)])
            window = []
            if step % 50 == 0 or step == steps:
                log.info("unet step %d/%d  loss %.4f", step, steps, history[-1][1])
        if step % checkpoint_every == 0 or step == steps:
            elapsed = wall + time.perf_counter() - started
            save_checkpoint(
                directory, step,
                {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text_encoder": ema_text},
                {"unet_text": optimizer}, capture_rng_state({"data": generator}),
                {"fingerprint": fingerprint, "history": history, "wall_s": elapsed, "ema_updates": ema_unet.updates},
            )
    ema_unet.copy_to(unet)
    ema_text.copy_to(text_encoder)
    unet.eval()
    text_encoder.eval()
    wall_total = wall + time.perf_counter() - started
    tail = [loss for _, loss in history[-5:]]
    return {"steps": step, "history": history, "final_loss": sum(tail) / len(tail) if tail else None, "wall_s": round(wall_total, 1), "resumed_from": resumed_from}


def _take_vae(components: dict, source: Path, spec, hyper: dict, device):
    """Put the VAE of the prior pipeline folder `source` into `components` (see `vae_from`).

    Updates `hyper` with the source's VAE settings; returns (the VAE's training record as
    `_train_vae` gives it, the VAE's fingerprint for the UNet stage, its extra corpus identity).
    """
    from diffusers import AutoencoderKL

    from dginstyle.diffusion import models

    meta = models.read_metadata(source)
    if meta.get("kind") != "prior":
        raise DataError(f"{source}: --vae-from needs a prior pipeline folder (dginstyle.json kind={meta.get('kind')!r})")
    weights = source / "vae" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise DataError(f"{weights}: missing (--vae-from takes the VAE's safetensors weights)")
    loaded = AutoencoderKL.from_pretrained(source / "vae", torch_dtype=components["vae"].dtype)
    # Rebuilt from its config without `_name_or_path`, which would save this machine's path into
    # the new prior (and the shipped copy); the weights are the source's, unchanged.
    vae = AutoencoderKL.from_config({k: v for k, v in loaded.config.items() if k != "_name_or_path"}).to(loaded.dtype)
    vae.load_state_dict(loaded.state_dict())
    wanted = {"block_out_channels": list(spec.vae_channels), "latent_channels": spec.latent_channels}
    found = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in ((k, vae.config[k]) for k in wanted)}
    if found != wanted:
        raise DataError(f"{source / 'vae'}: VAE {found} does not fit the prior's spec {wanted}")
    components["vae"] = vae.to(device).eval()
    source_hyper, steps = meta.get("hyperparameters", {}), meta.get("steps", {})
    for key in ("vae_steps", "vae_batch_size", "vae_crop", "vae_learning_rate", "vae_loss"):
        hyper[key] = source_hyper.get(key)
    digest = sha256_file(weights)
    info = {"steps": steps.get("vae"), "history": meta.get("loss_curves", {}).get("vae_l1", []),
            "final_l1": meta.get("final_losses", {}).get("vae_l1"), "wall_s": meta.get("wall_time_s", {}).get("vae"),
            "resumed_from": (meta.get("resumed_from") or {}).get("vae"),
            "vae_from": {"path": str(source.resolve()), "sha256": digest}}
    log.info("VAE taken from %s (sha256 %s, trained %s steps)", source, digest[:12], info["steps"])
    return info, _fingerprint({"vae_from": digest}), meta.get("vae_extra_corpus")


def pretrain_prior(
    corpus: Path,
    out: Path,
    checkpoints: Path,
    resolution: int = DEFAULTS["resolution"],
    vae_steps: int = DEFAULTS["vae_steps"],
    unet_steps: int = DEFAULTS["unet_steps"],
    batch_size: int = DEFAULTS["batch_size"],
    learning_rate: float = DEFAULTS["learning_rate"],
    seed: int = DEFAULTS["seed"],
    threads: int = 2,
    spec=None,
    samples: Path | None = None,
    vae_batch_size: int | None = DEFAULTS["vae_batch_size"],
    vae_crop: int = DEFAULTS["vae_crop"],
    vae_learning_rate: float = DEFAULTS["vae_learning_rate"],
    checkpoint_every: int = DEFAULTS["checkpoint_every"],
    device: str = "auto",
    vae_extra_corpus: Path | None = None,
    prediction_type: str = DEFAULTS["prediction_type"],
    vae_from: Path | None = None,
) -> dict:
    """Train the tiny prior on `corpus` and write a diffusers pipeline folder to `out`.

    `vae_extra_corpus`: a prepared dataset whose train images (labels unused) the VAE also
    learns to reconstruct; the text encoder and UNet never see them. The VAE is a codec, not a
    style prior: SD's VAE, trained on a broad photo corpus, reconstructs GTA5 frames nearly
    losslessly, and U^S can only take on the source look if the VAE can represent it. Trained
    on the prior corpus alone, the tiny VAE reconstructed the saturated game look with L1 0.13
    (targets 0.02-0.03): every source image came back grey and blurred.

    `prediction_type`: what the UNet learns to predict, `epsilon` (SD 1.5's) or `v_prediction`
    (SD 2.x's velocity; recorded in the saved scheduler, which every later stage follows). Why v
    for the tiny prior: with epsilon, a nearly pure-noise step is almost solved by copying the
    input, so its loss is tiny and the steps that decide a scene's layout get no gradient; their
    x0 estimates (the noise error amplified 11x at t = 950) came out worse than predicting the
    mean, as colour blotches. The velocity target is about x0 at high noise.
    `vae_from`: a prior pipeline folder whose trained VAE is taken as it is (its training record
    with it) instead of training one; the `vae_*` settings and `vae_extra_corpus` are then the
    source's. For retraining the UNet prior over a codec that is already good.

    Returns the metadata written to `out/dginstyle.json`. Resumes from `checkpoints` (both
    stages); `out` appears only when complete. `samples`: optional PNG grid (weather x style
    prompts by seeds), 20 DDIM steps with guidance 7.5.
    """
    import torch

    from dginstyle.diffusion import models
    from dginstyle.diffusion.training import seed_everything

    t0 = time.perf_counter()
    corpus, out, checkpoints = Path(corpus), Path(out), Path(checkpoints)
    for name, value in (("vae_steps", vae_steps), ("unet_steps", unet_steps), ("batch_size", batch_size), ("resolution", resolution), ("vae_crop", vae_crop), ("checkpoint_every", checkpoint_every)):
        if value < 1:
            raise DataError(f"pretrain-prior: {name} must be >= 1 (got {value})")
    if prediction_type not in models.PREDICTION_TYPES:
        raise DataError(f"pretrain-prior: prediction_type must be one of {list(models.PREDICTION_TYPES)} (got {prediction_type!r})")
    spec = spec or models.TinySpec(**PRIOR_SPEC)
    if resolution % spec.downsample:
        raise DataError(f"pretrain-prior: resolution {resolution} is not a multiple of the VAE downsampling {spec.downsample}")
    if vae_crop % spec.downsample or vae_crop > resolution:
        raise DataError(f"pretrain-prior: vae_crop {vae_crop} must be a multiple of {spec.downsample} and at most the resolution {resolution}")
    vae_batch_size = vae_batch_size or batch_size
    torch.set_num_threads(max(1, threads))
    dev = models.pick_device(device)
    images, captions, manifest = load_corpus(corpus)
    images = _fit_images(images, resolution, spec.downsample)
    log.info("corpus %s: %d images %dx%d; device %s, %d threads", corpus, len(images), images.shape[3], images.shape[2], dev, threads)
    vae_sets, extra_id = [images], None
    if vae_extra_corpus is not None and vae_from is None:
        extra = _fit_images(load_extra_images(vae_extra_corpus), vae_crop, spec.downsample)
        vae_sets.append(extra)
        extra_manifest_file = Path(vae_extra_corpus) / "manifest.json"
        extra_manifest = json.loads(extra_manifest_file.read_text()) if extra_manifest_file.is_file() else {}
        extra_id = {"path": str(Path(vae_extra_corpus).resolve()), "dataset": extra_manifest.get("dataset"), "domain": extra_manifest.get("domain"),
                    "seed": extra_manifest.get("seed"), "size": extra_manifest.get("size"), "images": len(extra),
                    "world_version": extra_manifest.get("world_version"), **_thin_objects(extra_manifest)}
        log.info("VAE extra corpus %s: %d images %dx%d", vae_extra_corpus, len(extra), extra.shape[3], extra.shape[2])

    seed_everything(seed)
    tokenizer_dir = checkpoints / "tokenizer"
    # The vocabulary covers the corpus captions and every word of the generation prompts.
    components = models.tiny_components(spec, captions + prompt_vocabulary(), resolution, tokenizer_dir, seed=seed, prediction_type=prediction_type)
    for name in ("vae", "text_encoder", "unet"):
        components[name].to(dev)

    hyper = dict(resolution=resolution, vae_steps=vae_steps, unet_steps=unet_steps, batch_size=batch_size, vae_batch_size=vae_batch_size,
                 vae_crop=vae_crop, vae_learning_rate=vae_learning_rate, vae_loss=f"MSE + {CHROMA_WEIGHT} x colour MSE, point-mass posterior",
                 learning_rate=learning_rate, seed=seed, kl_weight=KL_WEIGHT, caption_dropout=CAPTION_DROPOUT, ema_decay=EMA_DECAY,
                 warmup_steps=WARMUP_STEPS, lr_schedule="linear warm-up then cosine to 10%", optimizer="AdamW",
                 checkpoint_every=checkpoint_every, prediction_type=prediction_type, noise_schedule="SD 1.5 scaled_linear DDPM")
    corpus_id = {"path": str(corpus.resolve()), "dataset": manifest.get("dataset"), "seed": manifest.get("seed"), "size": manifest.get("size"),
                 "images": len(images), "world_version": manifest.get("world_version"), **_thin_objects(manifest)}
    if vae_from is not None:
        vae_info, vae_fp, extra_id = _take_vae(components, Path(vae_from), spec, hyper, dev)
    else:
        vae_fp = _fingerprint({"corpus": corpus_id, "vae_extra_corpus": extra_id, "spec": asdict(spec), "crop": vae_crop, "batch": vae_batch_size,
                               "lr": vae_learning_rate, "seed": seed, "stage": "vae-pinned"})
        vae_info = _train_vae(components["vae"], vae_sets, steps=vae_steps, batch_size=vae_batch_size, crop=vae_crop, lr=vae_learning_rate,
                              seed=seed, directory=checkpoints / "vae", fingerprint=vae_fp, checkpoint_every=checkpoint_every, device=dev)

    # latent scaling factor: 1 / std of latent samples over (a subset of) the corpus
    t_enc = time.perf_counter()
    latents = _encode_corpus(components["vae"], images, dev)
    subset = torch.Generator().manual_seed(seed + 3)
    pick = torch.randperm(len(latents), generator=subset)[:LATENT_SCALE_IMAGES]
    scale = float(1.0 / latents[pick].std())
    components["vae"].register_to_config(scaling_factor=scale)
    log.info("latent scaling factor %.5f (latents %s, encoded in %.1fs)", scale, tuple(latents.shape[1:]), time.perf_counter() - t_enc)

    tokenizer = components["tokenizer"]
    tok = lambda texts: tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt").input_ids  # noqa: E731
    unique = sorted(set(captions))  # the slow (pure-Python BPE) tokenizer: each distinct caption once
    unique_ids = tok(unique)
    row = {caption: i for i, caption in enumerate(unique)}
    token_ids, empty_ids = unique_ids[[row[c] for c in captions]], tok([""])[0]
    unet_fp = _fingerprint({"vae": vae_fp, "vae_steps": hyper["vae_steps"], "batch": batch_size, "lr": learning_rate, "seed": seed, "stage": "unet",
                            "prediction_type": prediction_type})
    unet_info = _train_unet(components, latents, token_ids, empty_ids, scale=scale, steps=unet_steps, batch_size=batch_size,
                            latent_size=resolution // spec.downsample, lr=learning_rate, seed=seed, directory=checkpoints / "unet",
                            fingerprint=unet_fp, checkpoint_every=checkpoint_every, device=dev)

    metadata = {
        "kind": "prior",
        "corpus": corpus_id,
        "vae_extra_corpus": extra_id,
        "vae_from": vae_info.get("vae_from"),
        "hyperparameters": hyper,
        "spec": models.spec_as_dict(spec),
        "steps": {"vae": vae_info["steps"], "unet": unet_info["steps"]},
        "resumed_from": {"vae": vae_info["resumed_from"], "unet": unet_info["resumed_from"]},
        "final_losses": {"vae_l1": vae_info["final_l1"], "unet_mse": unet_info["final_loss"]},
        "loss_curves": {"vae_l1": vae_info["history"], "unet_mse": unet_info["history"]},
        "scaling_factor": scale,
        "wall_time_s": {"vae": vae_info["wall_s"], "unet": unet_info["wall_s"], "this_run_total": round(time.perf_counter() - t0, 1)},
        "threads": threads,
        "device": str(dev),
        "torch": torch.__version__,
    }
    for name in ("vae", "text_encoder", "unet"):
        components[name].to("cpu")
    staging = fresh_staging_dir(out, "pretrain-prior")
    models.save_pipeline(staging, components, metadata)
    # The sample grid lives in the folder (like the shipped prior's samples.png); `samples`
    # additionally copies it elsewhere.
    save_sample_grid(components, staging / "samples.png", resolution=resolution)
    if samples is not None:
        Path(samples).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staging / "samples.png", samples)
    replace_dir(staging, out)
    log.info("prior written to %s (%.1fs this run)", out, time.perf_counter() - t0)
    return metadata


# ----------------------------------------------------------------------------- shipped prior


def shipped_prior_path() -> Path:
    """The trained prior shipped with the package (a diffusers pipeline folder, fp16 weights)."""
    return Path(__file__).resolve().parent.parent / "assets" / "prior"


def verify_shipped_prior(folder: Path | None = None) -> None:
    """Check every weight file of the shipped prior against SHA256SUMS; DataError naming the file."""
    folder = Path(folder) if folder is not None else shipped_prior_path()
    sums_file = folder / "SHA256SUMS"
    if not sums_file.is_file():
        raise DataError(f"{sums_file}: missing (the shipped prior has no checksum list)")
    expected = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.strip().lstrip("*")] = digest
    for name in SHIPPED_WEIGHT_FILES:
        if name not in expected:
            raise DataError(f"{folder / name}: not listed in {sums_file}")
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing from the shipped prior")
        actual = sha256_file(path)
        if actual != digest:
            raise DataError(f"{path}: sha256 {actual} does not match the recorded {digest} (corrupt or modified weights)")


def _thin_objects(spec: dict) -> dict:
    """The corpus's thin-object minimum as recorded (nothing when 0: world version 1's drawing,
    so priors trained before the setting existed still match)."""
    value = float(spec.get("thin_objects_px") or 0)
    return {"thin_objects_px": value} if value else {}


def training_request(corpus: dict, resolution: int, training: dict, vae_extra: dict | None = None) -> dict:
    """What a prior is trained from, in the terms of the workflow config (for comparisons).

    `corpus` = {domain, splits, seed, size: [w, h], world_version} of the minicity corpus;
    `training` = the config's prior.training (checkpoint_every left out: it does not change
    the result); `vae_extra` = the same facts of the VAE's extra corpus, or None.
    """
    hyper = {k: v for k, v in training.items() if k != "checkpoint_every"}
    extra = None
    if vae_extra is not None:
        extra = {"domain": vae_extra["domain"], "seed": vae_extra["seed"], "size": list(vae_extra["size"]),
                 "images": sum(vae_extra["splits"].values()), "world_version": vae_extra["world_version"], **_thin_objects(vae_extra)}
    return {
        "corpus": {"seed": corpus["seed"], "size": list(corpus["size"]), "images": sum(corpus["splits"].values()), "world_version": corpus["world_version"],
                   **_thin_objects(corpus)},
        "vae_extra_corpus": extra,
        "resolution": resolution,
        "training": hyper,
    }


def recorded_request(metadata: dict) -> dict:
    """The training request a prior's dginstyle.json records (see `training_request`)."""
    corpus, hyper = metadata.get("corpus", {}), metadata.get("hyperparameters", {})
    size = corpus.get("size") or {}
    keys = ("vae_steps", "unet_steps", "batch_size", "vae_batch_size", "vae_crop", "vae_learning_rate", "learning_rate", "seed", "prediction_type")
    extra = metadata.get("vae_extra_corpus")
    if extra is not None:
        extra_size = extra.get("size") or {}
        extra = {"domain": extra.get("domain"), "seed": extra.get("seed"), "size": [extra_size.get("width"), extra_size.get("height")],
                 "images": extra.get("images"), "world_version": extra.get("world_version"), **_thin_objects(extra)}
    return {
        "corpus": {"seed": corpus.get("seed"), "size": [size.get("width"), size.get("height")], "images": corpus.get("images"), "world_version": corpus.get("world_version"),
                   **_thin_objects(corpus)},
        "vae_extra_corpus": extra,
        "resolution": hyper.get("resolution"),
        "training": {k: hyper.get(k) for k in keys},
    }


def shipped_prior_matches(request: dict) -> bool:
    """True when the shipped prior was trained on exactly `request` (see `training_request`).

    Read-only and torch-free: the workflow asks this while it plans, to choose between the
    install_prior and pretrain_prior rules.
    """
    source = shipped_prior_path()
    metadata_file = source / "dginstyle.json"
    if not metadata_file.is_file():
        return False
    trained_on = recorded_request(json.loads(metadata_file.read_text()))
    wanted = {**request, "training": {k: request["training"].get(k) for k in trained_on["training"]}}
    return trained_on == wanted


def shipped_prior_sums() -> str:
    """The shipped prior's SHA256SUMS text (recorded with an installed copy)."""
    sums_file = shipped_prior_path() / "SHA256SUMS"
    return sums_file.read_text() if sums_file.is_file() else ""


def shipped_prior_id() -> str:
    """A short hash of the shipped prior's checksums: part of install_prior's params, so that a
    package shipping another prior installs it again."""
    return hashlib.sha256(shipped_prior_sums().encode()).hexdigest()[:16]


def install_shipped_prior(dest: Path, request: dict) -> Path:
    """Copy the shipped prior to `dest`, checked against its checksums, when it was trained on
    exactly `request`; the shipped prior plays the part SD 1.5 plays at paper scale."""
    dest = Path(dest)
    if not shipped_prior_matches(request):
        raise DataError(f"{shipped_prior_path()}: the shipped prior was not trained on this request (corpus or training settings differ); train one with `dginstyle pretrain-prior`")
    source = shipped_prior_path()
    verify_shipped_prior(source)
    metadata = json.loads((source / "dginstyle.json").read_text())
    staging = fresh_staging_dir(dest, "install-prior")
    shutil.copytree(source, staging, dirs_exist_ok=True)
    atomic_write_json(staging / "dginstyle.json", {**metadata, "installed_from_shipped": True, "request": request, "shipped_sums": shipped_prior_sums()})
    replace_dir(staging, dest)
    return dest


def export_shipped(pipeline: Path, dest: Path, half: bool = True) -> dict[str, str]:
    """Copy a pipeline folder to `dest` (weights stored fp16 when `half`), write SHA256SUMS.

    Only configs, tokenizer files, safetensors weights and dginstyle.json are copied. Returns
    {relative weight path: sha256}.
    """
    from safetensors.torch import load_file, save_file

    pipeline, dest = Path(pipeline), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sums = {}
    for path in sorted(pipeline.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(pipeline).as_posix()
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            tensors = load_file(path)
            if half:
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            save_file(tensors, target, metadata={"format": "pt"})
            sums[rel] = sha256_file(target)
        elif path.suffix in (".json", ".txt"):
            shutil.copyfile(path, target)
    (dest / "SHA256SUMS").write_text("".join(f"{digest}  {rel}\n" for rel, digest in sorted(sums.items())))
    return sums


def corpus_prepare_command(record: dict, domain: str) -> str:
    """The `prepare` command that redraws a corpus from its training record (thin-object minimum included)."""
    size = record.get("size") or {}
    thin = _thin_objects(record).get("thin_objects_px")
    return (f"python -m dginstyle prepare minicity --domain {domain} --splits train={record.get('images')} --seed {record.get('seed')} "
            f"--size {size.get('width')}x{size.get('height')} --out results/datasets/{record.get('dataset')} --workers 2"
            + (f" --thin-objects-px {thin:g}" if thin else ""))


def ship_prior(pipeline: Path, command: str | list[str], samples: Path | None = None, dest: Path | None = None) -> Path:
    """Export a trained prior into the package assets: fp16 weights, SHA256SUMS, README.md, samples.png.

    `command` is the exact command line that produced `pipeline`, or the command lines in the
    order they ran (a prior whose VAE was taken `--vae-from` another: that one's command first);
    recorded in the README with the training time and the per-file hashes. The folder is
    replaced only when complete.
    """
    commands = [command] if isinstance(command, str) else list(command)
    from dginstyle.diffusion import models

    pipeline = Path(pipeline)
    dest = Path(dest) if dest is not None else shipped_prior_path()
    meta = models.read_metadata(pipeline)
    if meta.get("kind") != "prior":
        raise DataError(f"{pipeline}: not a prior pipeline folder (dginstyle.json kind={meta.get('kind')!r})")
    staging = fresh_staging_dir(dest, "ship-prior")
    sums = export_shipped(pipeline, staging)
    if samples is not None:
        shutil.copyfile(samples, staging / "samples.png")
    wall = meta.get("wall_time_s", {})
    hyper = meta.get("hyperparameters", {})
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    extra = meta.get("vae_extra_corpus")
    extra_prepare, extra_record = [], []
    if extra:
        extra_prepare = [corpus_prepare_command(extra, extra.get("domain"))]
        extra_record = [f"- the VAE also reconstructs {extra.get('dataset')} ({extra.get('images')} {extra.get('domain')} images, labels unused); "
                        "the text encoder and UNet never see them"]
    lines = [
        "# The shipped miniature-world prior",
        "",
        "A tiny latent diffusion model (AutoencoderKL + CLIP text encoder + UNet2DConditionModel, diffusers",
        "layout) trained from scratch by `dginstyle pretrain-prior` on the captioned multi-style prior corpus;",
        "the miniature world's stand-in for Stable Diffusion 1.5. Weights are stored as fp16 safetensors",
        "(`models.load_components` loads them as float32). `dginstyle.json` holds the full training record",
        "(hyperparameters, spec, loss curves, scaling factor).",
        "",
        "## Reproduce",
        "",
        "```",
        corpus_prepare_command(meta.get("corpus") or {}, "prior"),
        *extra_prepare,
        *commands,
        "```",
        "",
        "then `python -m dginstyle.diffusion.prior ship-prior --pipeline <out> --samples <png> --command '<the command>'`.",
        "",
        "## Training record",
        "",
        *([f"- VAE: taken unchanged (`--vae-from`) from the prior whose VAE weights have sha256 `{meta['vae_from']['sha256']}` "
           "(the first training command above); its own training:"] if meta.get("vae_from") else []),
        f"- VAE: {meta['steps']['vae']} steps, batch {hyper.get('vae_batch_size')} of {hyper.get('vae_crop')} px crops, learning rate {hyper.get('vae_learning_rate')}, "
        f"loss {hyper.get('vae_loss')}",
        *extra_record,
        f"- UNet + text encoder: {meta['steps']['unet']} steps, batch {hyper.get('batch_size')} at resolution {hyper.get('resolution')}, "
        f"learning rate {hyper.get('learning_rate')}, predicting {hyper.get('prediction_type')}; "
        f"seed {hyper.get('seed')}; resumed from (vae, unet) steps {meta.get('resumed_from')}",
        f"- training time on this machine (2 CPU cores shared with other jobs, {meta.get('threads')} threads): "
        f"VAE {wall.get('vae')} s, UNet {wall.get('unet')} s (plus corpus encoding and saving)",
        f"- final losses: VAE L1 {meta['final_losses']['vae_l1']:.4f}, UNet {hyper.get('prediction_type', 'epsilon')} MSE {meta['final_losses']['unet_mse']:.4f}; "
        f"latent scaling factor {meta['scaling_factor']:.5f}",
        f"- shipped size: {size / 1e6:.2f} MB",
        "",
        "## sha256 of the weight files (also in SHA256SUMS; `verify_shipped_prior()` checks them)",
        "",
        *[f"- `{rel}`: `{digest}`" for rel, digest in sorted(sums.items())],
        "",
        "`samples.png`: rows = prompts (five weathers as a photo, then painting / sketch / cartoon / vintage photo /",
        "black and white photo), columns = seeds 0-3; 20 DDIM steps, guidance 7.5, 64x64.",
        "",
    ]
    (staging / "README.md").write_text("\n".join(lines))
    replace_dir(staging, dest)
    verify_shipped_prior(dest)
    return dest


# ----------------------------------------------------------------------------- CLI


def add_cli(sub) -> None:
    """Register `pretrain-prior` on an argparse subparsers object."""
    p = sub.add_parser(
        "pretrain-prior",
        help="train the miniature world's tiny latent diffusion prior on the captioned prior corpus",
        description="Train a tiny AutoencoderKL, CLIP text encoder and UNet from scratch on a prepared prior corpus "
        "(stand-in for Stable Diffusion 1.5); resumable from --checkpoints; writes a diffusers pipeline folder.",
    )
    p.add_argument("--corpus", required=True, type=Path, help="prepared prior corpus (captions.jsonl + images/train)")
    p.add_argument("--out", required=True, type=Path, help="pipeline folder to write (replaced only when complete)")
    p.add_argument("--checkpoints", required=True, type=Path, help="checkpoint folder (resumed from when present)")
    p.add_argument("--resolution", type=int, default=DEFAULTS["resolution"], help="square training crop size in pixels")
    p.add_argument("--vae-steps", type=int, default=DEFAULTS["vae_steps"])
    p.add_argument("--unet-steps", type=int, default=DEFAULTS["unet_steps"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="UNet/text-encoder batch size")
    p.add_argument("--vae-batch-size", type=int, default=DEFAULTS["vae_batch_size"])
    p.add_argument("--vae-crop", type=int, default=DEFAULTS["vae_crop"], help="square VAE training crop in pixels (the VAE is convolutional)")
    p.add_argument("--vae-learning-rate", type=float, default=DEFAULTS["vae_learning_rate"])
    p.add_argument("--vae-extra-corpus", type=Path, help="prepared dataset whose train images (not labels) the VAE also learns to reconstruct")
    p.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=DEFAULTS["prediction_type"],
                   help="what the UNet predicts: epsilon (SD 1.5) or v_prediction (SD 2.x's velocity)")
    p.add_argument("--vae-from", type=Path, help="take the trained VAE of this prior pipeline folder instead of training one (the --vae-* settings are then its own)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--checkpoint-every", type=int, default=DEFAULTS["checkpoint_every"])
    p.add_argument("--samples", type=Path, help="optional PNG sample grid (weather/style prompts x seeds)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.set_defaults(handler=_run_cli)


def add_install_cli(sub) -> None:
    """Register `install-prior` on an argparse subparsers object."""
    p = sub.add_parser(
        "install-prior",
        help="install the prior shipped in the package when it was trained on exactly the given request",
        description="Copy dginstyle/assets/prior to --out (checksums verified) when its recorded training request "
        "equals --request (the workflow's corpus and training settings, as JSON); otherwise fail.",
    )
    p.add_argument("--request", required=True, type=_request, help="the training request as a JSON object (see training_request)")
    p.add_argument("--out", required=True, type=Path, help="pipeline folder to write (replaced only when complete)")
    p.set_defaults(handler=lambda args: install_shipped_prior(args.out, args.request))


def _request(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _run_cli(args: argparse.Namespace) -> None:
    from dginstyle.parallel import default_threads

    threads = default_threads()
    pretrain_prior(
        corpus=args.corpus, out=args.out, checkpoints=args.checkpoints, resolution=args.resolution,
        vae_steps=args.vae_steps, unet_steps=args.unet_steps, batch_size=args.batch_size,
        vae_batch_size=args.vae_batch_size, vae_crop=args.vae_crop, vae_learning_rate=args.vae_learning_rate,
        learning_rate=args.learning_rate, seed=args.seed,
        threads=threads, samples=args.samples, checkpoint_every=args.checkpoint_every, device=args.device,
        vae_extra_corpus=args.vae_extra_corpus, prediction_type=args.prediction_type, vae_from=args.vae_from,
    )


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m dginstyle.diffusion.prior pretrain-prior ...`)."""
    import sys

    parser = argparse.ArgumentParser(prog="dginstyle")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    ship = sub.add_parser("ship-prior", help="export a trained prior into dginstyle/assets/prior (fp16, hashes, README)")
    ship.add_argument("--pipeline", required=True, type=Path)
    ship.add_argument("--command", required=True, action="append", dest="train_command",
                      help="the exact training command line, for the README (repeat for several, in the order they ran)")
    ship.add_argument("--samples", type=Path)
    ship.add_argument("--dest", type=Path)
    ship.set_defaults(handler=lambda a: ship_prior(a.pipeline, a.train_command, a.samples, a.dest))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args.handler(args)
    except DataError as exc:
        print(f"dginstyle {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
