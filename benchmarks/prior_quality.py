"""How well a tiny prior models its corpus: held-out x0 error per timestep.

    python benchmarks/prior_quality.py --prior NAME=FOLDER [--prior NAME=FOLDER ...] [--images 64]

Renders held-out images of the prior corpus's domain (world seed 7; the shipped prior was
trained on seed 0), encodes each with the prior's own VAE (the middle 64 px crop), noises it at fixed timesteps
with the same noise for every prior, and measures the MSE of the UNet's estimate of the clean
latent (x0, from its noise or velocity output, with the image's caption) against the true one:
comparable across prediction types. `mean_predictor` is the MSE of predicting the latents' mean
everywhere: a model above it at a timestep knows less about the scene there than that constant.
The high-noise timesteps are where a sample's layout and colours are decided.
Writes results/benchmarks/prior_quality.json (in the repository).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "results" / "benchmarks" / "prior_quality.json"
TIMESTEPS = (50, 200, 400, 600, 800, 950)


def held_out_corpus(count: int, folder: Path, thin_objects_px: float = 0.0) -> tuple:
    """uint8 images [N,3,64,128] and captions of `count` prior-domain renders of world seed 7."""
    from dginstyle.data.prepare import prepare
    from dginstyle.diffusion.prior import load_corpus

    prepare(fmt="minicity", out=folder, splits=f"train={count}", domain="prior", seed=7, size="128x64", workers=1, thin_objects_px=thin_objects_px)
    images, captions, _ = load_corpus(folder)
    return images, captions


def denoising_loss(prior: Path, images, captions) -> dict:
    import torch

    from dginstyle.diffusion import models
    from dginstyle.diffusion.mrlf import x0_from_epsilon
    from dginstyle.diffusion.prior import encode_prompts

    comps = models.load_components(prior)
    vae, unet = comps["vae"], comps["unet"]
    ddpm = models.training_scheduler(comps["scheduler"], str(prior))
    kind = ddpm.config.prediction_type
    with torch.no_grad():
        crops = images[:, :, :, 32:96].float() / 127.5 - 1  # the middle 64x64 of each 128x64 image
        latents = vae.encode(crops).latent_dist.mean * vae.config.scaling_factor
        context = encode_prompts(comps["tokenizer"], comps["text_encoder"], captions)
        per_t = {}
        for t in TIMESTEPS:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(t))
            timesteps = torch.full((len(latents),), t, dtype=torch.long)
            noisy = ddpm.add_noise(latents, noise, timesteps)
            a = ddpm.alphas_cumprod[t]
            eps = models.epsilon_from_prediction(unet(noisy, timesteps, encoder_hidden_states=context).sample, noisy, a, kind)
            x0 = x0_from_epsilon(noisy, eps, a)
            per_t[t] = round(float((x0 - latents).pow(2).mean()), 5)
        mean_predictor = round(float((latents - latents.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()), 5)
    return {"x0_mse_per_timestep": per_t, "mean": round(sum(per_t.values()) / len(per_t), 5), "mean_predictor": mean_predictor,
            "prediction_type": kind, "unet_steps": models.read_metadata(prior).get("steps", {}).get("unet")}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", action="append", required=True, help="NAME=FOLDER of a prior pipeline folder (repeatable)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--thin-objects-px", type=float, default=0.0, help="draw the held-out images with this thin-object minimum (as the corpus)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        images, captions = held_out_corpus(args.images, Path(tmp) / "held_out", args.thin_objects_px)
    results = {}
    for item in args.prior:
        name, _, folder = item.partition("=")
        results[name] = {"folder": folder, **denoising_loss(Path(folder), images, captions)}
        r = results[name]
        print(f"{name} ({r['prediction_type']}): x0 MSE mean {r['mean']:.4f} (mean predictor {r['mean_predictor']:.4f})  "
              + "  ".join(f"t={t}: {v:.4f}" for t, v in r["x0_mse_per_timestep"].items()))
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({"held_out": {"domain": "prior", "world_seed": 7, "images": args.images, "thin_objects_px": args.thin_objects_px}, "priors": results}, indent=2))
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
