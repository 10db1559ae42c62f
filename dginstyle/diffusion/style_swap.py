"""Style Swap step 3: assemble the generator folder (docs/method.md 1.3).

    plain    unet/ = U^P (the prior's UNet), controlnet/ = the ControlNet trained against U^S:
             the paper's swap, no weight arithmetic.
    rebase   unet/ = U^P, controlnet/ = the ControlNet with every encoder parameter shared by
             name with the UNet (conv_in, time embedding, down blocks, mid block) shifted by
             U^P - U^S ("transfer control" of the original ControlNet authors).
    no_swap  unet/ = U^S (the ablation: the source-styled UNet stays in the generator).

The folder is a standard diffusers StableDiffusionControlNetPipeline folder (vae, text_encoder,
tokenizer, scheduler from the prior; safetensors only, no safety checker) plus dginstyle.json
naming the variant, the inputs with their metadata and steps, and a sha256 of every weight file.
`load_generator` reads it back for the samplers.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dginstyle.io import DataError, sha256_file

log = logging.getLogger(__name__)

KIND = "generator"
VARIANTS = ("plain", "rebase", "no_swap")


def assemble_generator(prior: Path, unet: Path, controlnet: Path, out: Path, variant: str = "plain", prior_config: str | None = None) -> dict:
    """Write the generator folder `out` for `variant`; returns its metadata. `prior_config`: the
    configs source of a single-file prior (models.load_single_file)."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    from dginstyle.diffusion import models
    from dginstyle.diffusion.controlnet import check_compatible, load_controlnet_folder, load_unet_folder
    from dginstyle.io import atomic_write_json, fresh_staging_dir, replace_dir

    if variant not in VARIANTS:
        raise DataError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    prior, unet_path, controlnet_path, out = Path(prior), Path(unet), Path(controlnet), Path(out)
    if not prior.exists() and "/" not in str(prior):
        raise DataError(f"{prior}: prior pipeline folder not found")
    unet_s = load_unet_folder(unet_path, "U^S (source UNet)")
    cn = load_controlnet_folder(controlnet_path)
    components = models.load_components(prior, config=prior_config)
    unet_p = components["unet"]
    models.check_controlnet(cn, controlnet_path / "config.json", components["vae"])
    check_compatible(unet_s, unet_p, unet_path, _where(prior, "unet"), "U^S")
    check_compatible(cn, unet_p, controlnet_path, _where(prior, "unet"))
    check_compatible(cn, unet_s, controlnet_path, unet_path)

    rebased: list[str] = []
    if variant == "rebase":
        with torch.no_grad():
            rebased = rebase_controlnet(cn, unet_p, unet_s, controlnet_path)
    unet_used = unet_s if variant == "no_swap" else unet_p

    staging = fresh_staging_dir(out, "style-swap")
    pipe = StableDiffusionControlNetPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=unet_used,
        controlnet=cn,
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(staging, safe_serialization=True)
    unet_meta, cn_meta, prior_meta = models.read_metadata(unet_path), models.read_metadata(controlnet_path), models.read_metadata(prior)
    metadata = dict(
        kind=KIND,
        variant=variant,
        unet_in_generator="U^S" if variant == "no_swap" else "U^P",
        prior=_resolved(prior),
        **({"prior_config": _resolved(Path(prior_config))} if prior_config is not None else {}),
        prior_metadata=prior_meta,
        prior_steps=prior_meta.get("steps"),
        unet_source=str(unet_path.resolve()),
        unet_source_steps=unet_meta.get("steps"),
        unet_source_metadata=_trimmed(unet_meta),
        controlnet=str(controlnet_path.resolve()),
        controlnet_steps=cn_meta.get("steps"),
        controlnet_metadata=_trimmed(cn_meta),
        conditioning_channels=cn.config.conditioning_channels,
        rebased_parameters=len(rebased),
        rebased_modules=sorted({name.split(".")[0] for name in rebased}),
        weights_sha256=weight_hashes(staging),
    )
    atomic_write_json(staging / models.METADATA, metadata)
    replace_dir(staging, out)
    log.info("style-swap: wrote %s (variant %s)", out, variant)
    return metadata


def rebase_controlnet(controlnet, unet_p, unet_s, where: Path | str = "ControlNet") -> list[str]:
    """In place: cn[k] += U^P[k] - U^S[k] for every ControlNet parameter whose name the UNet has.

    Those are the encoder copies: conv_in, time_embedding, down_blocks, mid_block (the
    conditioning embedding and the zero convolutions exist only in the ControlNet). Returns the
    names re-based.
    """
    p_state, s_state = unet_p.state_dict(), unet_s.state_dict()
    names = []
    for name, param in controlnet.state_dict().items():
        if name not in p_state or name not in s_state:
            continue
        if p_state[name].shape != param.shape or s_state[name].shape != param.shape:
            raise DataError(f"{where}: parameter {name} has shape {tuple(param.shape)}, U^P {tuple(p_state[name].shape)}, U^S {tuple(s_state[name].shape)}; cannot re-base")
        if not param.dtype.is_floating_point:
            continue
        param.add_(p_state[name].to(param) - s_state[name].to(param))
        names.append(name)
    if not names:
        raise DataError(f"{where}: no ControlNet parameter shares a name with the UNet; cannot re-base")
    return names


def weight_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every *.safetensors file under `folder`, by relative path."""
    return {str(path.relative_to(folder)): sha256_file(path) for path in sorted(Path(folder).rglob("*.safetensors"))}


def load_generator(folder: Path | str, device=None, dtype=None) -> dict:
    """A generator folder as {vae, text_encoder, tokenizer, unet, scheduler, controlnet, metadata}.

    device: torch.device or None (CPU); dtype: None = float32 (pass models.pick_dtype(...) for
    fp16/bf16 on CUDA). The ControlNet is checked (20 condition channels, embedding stages = VAE
    levels) and against the UNet (block widths, cross-attention width).
    """
    import torch

    from dginstyle.diffusion import models
    from dginstyle.diffusion.controlnet import check_compatible, load_controlnet_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: generator folder not found (run `dginstyle style-swap` first)")
    metadata = models.read_metadata(folder)
    if metadata.get("kind") != KIND:
        raise DataError(f"{folder}: not a generator folder ({models.METADATA} kind is {metadata.get('kind')!r}, expected {KIND!r})")
    dtype = dtype or torch.float32
    components = models.load_components(folder, dtype=dtype)
    controlnet = load_controlnet_folder(folder / "controlnet")
    models.check_controlnet(controlnet, folder / "controlnet" / "config.json", components["vae"])
    check_compatible(controlnet, components["unet"], folder / "controlnet", folder / "unet")
    if dtype != torch.float32:
        controlnet.to(dtype=dtype)
    for name in ("vae", "text_encoder", "unet"):
        components[name].requires_grad_(False).eval()
    controlnet.requires_grad_(False).eval()
    if device is not None:
        for name in ("vae", "text_encoder", "unet"):
            components[name].to(device)
        controlnet.to(device)
    return dict(components, controlnet=controlnet, metadata=metadata)


def _where(prior: Path, sub: str) -> str:
    return str(prior / sub) if prior.is_dir() else f"{prior} ({sub})"


def _resolved(path: Path) -> str:
    return str(path.resolve()) if path.exists() else str(path)


def _trimmed(meta: dict) -> dict:
    """Input metadata without the bulky parts (full training logs stay in the input folders)."""
    return {k: v for k, v in meta.items() if k not in ("training_log", "prior_metadata", "unet_metadata")}


def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "style-swap",
        help="Style Swap step 3: assemble the generator (prior components + UNet + ControlNet)",
        description=(
            "Assemble a diffusers ControlNet pipeline folder from the prior (VAE, text encoder, tokenizer, "
            "scheduler), a UNet chosen by --variant (plain/rebase: the prior's U^P; no_swap: U^S) and the "
            "ControlNet (re-based by U^P - U^S for --variant rebase), with dginstyle.json."
        ),
    )
    from dginstyle.diffusion.finetune import PRIOR_CONFIG_HELP, PRIOR_HELP

    p.add_argument("--prior", required=True, type=Path, help=PRIOR_HELP)
    p.add_argument("--prior-config", default=None, help=PRIOR_CONFIG_HELP)
    p.add_argument("--unet", required=True, type=Path, help="U^S: the UNet folder written by finetune-unet")
    p.add_argument("--controlnet", required=True, type=Path, help="ControlNet folder written by train-controlnet")
    p.add_argument("--variant", choices=VARIANTS, default="plain", help="plain (paper), rebase, or no_swap (ablation)")
    p.add_argument("--out", required=True, type=Path, help="generator folder (written atomically)")
    p.set_defaults(handler=_run_cli)
    return p


def _run_cli(args: argparse.Namespace) -> None:
    assemble_generator(args.prior, args.unet, args.controlnet, args.out, args.variant, prior_config=args.prior_config)
