"""Model factory: the latent diffusion components at two scales from one code path.

Paper scale: a pretrained Stable Diffusion 1.5 diffusers folder (local path or model id in the
local Hugging Face cache; nothing is downloaded at run time). Miniature world: the same
component classes (AutoencoderKL, CLIPTextModel + CLIPTokenizer, UNet2DConditionModel,
ControlNetModel) with tiny widths, built from configs, with a tokenizer whose vocabulary is
built offline from the corpus captions.

A "pipeline folder" is the standard diffusers layout (model_index.json, vae/, text_encoder/,
tokenizer/, unet/, scheduler/), weights as safetensors only, plus `dginstyle.json` with our
metadata (what it is, how it was made).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dginstyle.io import DataError, atomic_write_json

log = logging.getLogger(__name__)

METADATA = "dginstyle.json"
NUM_CONDITION_CHANNELS = 20  # 19 train classes + channel 19 for ignore (docs/method.md 1.2)
SD_SCHEDULER = dict(  # Stable Diffusion 1.5's noise schedule (docs/method.md 1.4: DDIM "leading", offset 1)
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` = CUDA when present, else CPU (dginstyle.devices.resolve_device); chosen once per process."""
    from dginstyle.devices import resolve_device

    return torch.device(resolve_device(requested))


def pick_dtype(device: torch.device, mixed_precision: str = "fp16") -> torch.dtype:
    """fp16/bf16 on CUDA as configured; always float32 on the CPU."""
    if device.type != "cuda" or mixed_precision == "no":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


@dataclass
class TinySpec:
    """Widths of the miniature-world models (all diffusers/transformers config values)."""

    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 levels: latent = image / 4
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention_head_dim: int = 8
    layers_per_block: int = 1
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 32
    norm_groups: int = 16
    controlnet_embedding_channels: tuple[int, ...] = field(default=())  # default: one per VAE level

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


# ----------------------------------------------------------------------------- tokenizer


def caption_words(captions: list[str]) -> list[str]:
    """The lower-case words and punctuation marks of a list of captions, in first-seen order."""
    words: dict[str, None] = {}
    for text in captions:
        for word in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower()):
            words[word] = None
    return list(words)


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word's symbols: repeatedly merge the best-ranked adjacent pair."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_tokenizer(words: list[str], folder: Path, max_tokens: int):
    """A CLIPTokenizer built offline whose BPE merges spell every given word as one token.

    Every single character (plus its end-of-word form) is in the vocabulary, so unknown words
    still tokenize, character by character. Saved to `folder` and returned.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    alphabet = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,;:'!?-()") | set("".join(words)))
    for char in alphabet:
        add(char)
        add(char + "</w>")
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = list(word)
        symbols[-1] += "</w>"
        # Merges added for earlier words apply first (BPE goes by rank), so a new word may
        # already be partly merged, e.g. "street" into s|tr|e|e|t after "traffic": chain
        # whatever pieces remain, left to right, into the whole word.
        pieces = _apply_merges(symbols, ranks)
        current = pieces[0]
        for piece in pieces[1:]:
            ranks.setdefault((current, piece), len(ranks))
            current += piece
            add(current)
    for token in SPECIAL_TOKENS:
        add(token)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranks))
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_tokens, pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


# ----------------------------------------------------------------------------- tiny components


def tiny_vae(spec: TinySpec):
    from diffusers import AutoencoderKL

    levels = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=spec.vae_channels,
        latent_channels=spec.latent_channels,
        layers_per_block=spec.layers_per_block,
        norm_num_groups=spec.norm_groups,
    )


def tiny_text_encoder(spec: TinySpec, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 4,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.max_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def tiny_unet(spec: TinySpec, sample_size: int):
    from diffusers import UNet2DConditionModel

    levels = len(spec.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.layers_per_block,
        cross_attention_dim=spec.text_hidden,
        attention_head_dim=spec.unet_attention_head_dim,
        norm_num_groups=spec.norm_groups,
    )


def noise_scheduler(kind: str = "ddpm", config: dict | None = None):
    """The training (DDPM) or sampling (DDIM) scheduler on Stable Diffusion's schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind]
    # from_config keeps the keys the class knows (DDIM-only ones such as set_alpha_to_one are
    # dropped for DDPM), so one SD schedule serves both.
    return cls.from_config(config if config is not None else SD_SCHEDULER)


#: What a UNet predicts, in diffusers' names (the scheduler config's `prediction_type`): SD 1.5
#: predicts the noise (epsilon), SD 2.x the velocity v = sqrt(a) eps - sqrt(1 - a) x0.
PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(scheduler, where: str) -> str:
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise DataError(f"{where}: prediction_type {kind!r} is not supported (use one of {list(PREDICTION_TYPES)})")
    return kind


def training_scheduler(scheduler, where: str):
    """A DDPM scheduler with `scheduler`'s noise schedule and prediction type (checked; `where`
    names it in the error): what the stages after the prior noise their latents with."""
    ddpm = noise_scheduler("ddpm", scheduler.config)
    check_prediction_type(ddpm, where)
    return ddpm


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict for `latents` noised with `noise` at `timesteps`:
    the noise, or the velocity, as the scheduler's `prediction_type` says."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def epsilon_from_prediction(output: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise estimate behind a UNet output at x_t (alpha_bar a_t): eps = sqrt(a) v + sqrt(1 - a) x_t
    for a velocity. Affine in the output, so guidance and view averaging commute with it."""
    if prediction_type == "v_prediction":
        return a_t.sqrt() * output + (1 - a_t).sqrt() * x_t
    return output


def tiny_components(spec: TinySpec, captions: list[str], resolution: int, tokenizer_dir: Path, seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """Freshly initialised tiny VAE, tokenizer, text encoder, UNet and scheduler (SD's schedule,
    the UNet predicting `prediction_type`)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(caption_words(captions), tokenizer_dir, spec.max_tokens)
    return {
        "vae": tiny_vae(spec),
        "tokenizer": tokenizer,
        "text_encoder": tiny_text_encoder(spec, tokenizer),
        "unet": tiny_unet(spec, resolution // spec.downsample),
        "scheduler": noise_scheduler("ddim", {**SD_SCHEDULER, "prediction_type": prediction_type}),
    }


# ----------------------------------------------------------------------------- ControlNet


def controlnet_from_unet(unet, vae, conditioning_channels: int = NUM_CONDITION_CHANNELS):
    """A ControlNet whose encoder copies `unet` (docs/method.md 1.2) and whose conditioning embedding
    downsamples an image-resolution one-hot map to the latent grid (one stage per VAE level)."""
    from diffusers import ControlNetModel

    levels = len(vae.config.block_out_channels)
    widths = (16, 32, 96, 256)[:levels] if levels <= 4 else tuple(16 * 2**i for i in range(levels))
    return ControlNetModel.from_unet(
        unet, conditioning_channels=conditioning_channels, conditioning_embedding_out_channels=widths
    )


def check_controlnet(controlnet, path: Path, vae=None) -> None:
    """Refuse a ControlNet that cannot take our 20-channel condition at the latent grid."""
    channels = controlnet.config.conditioning_channels
    if channels != NUM_CONDITION_CHANNELS:
        raise DataError(f"{path}: ControlNet has conditioning_channels={channels}, expected {NUM_CONDITION_CHANNELS} (19 classes + ignore one-hot)")
    if vae is not None:
        want = len(vae.config.block_out_channels)
        have = len(controlnet.config.conditioning_embedding_out_channels)
        if want != have:
            raise DataError(f"{path}: ControlNet's conditioning embedding has {have} stages but the VAE has {want} levels; the condition would not match the latent size")


# ----------------------------------------------------------------------------- folders


def save_pipeline(folder: Path, components: dict, metadata: dict) -> None:
    """Write a standard diffusers pipeline folder (safetensors) plus our metadata file.

    No safety checker: generation for a training set must not silently black out images.
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    pipe = StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    atomic_write_json(folder / METADATA, metadata)


def _from(cls, source: str, subfolder: str, dtype: torch.dtype | None = None):
    local = Path(source).is_dir()
    where = Path(source) / subfolder if local else source
    kwargs = {} if local else {"subfolder": subfolder, "local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        return cls.from_pretrained(where, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise DataError(f"{source}: cannot load {subfolder} ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None


def load_components(source: str | Path, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Load a pipeline folder (or a model id already in the local HF cache) into components."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = str(source)
    if not Path(source).is_dir() and Path(source).suffix == "" and "/" not in source:
        raise DataError(f"{source}: not a pipeline folder and not a model id (owner/name)")
    components = {
        "vae": _from(AutoencoderKL, source, "vae", dtype),
        "text_encoder": _from(CLIPTextModel, source, "text_encoder", dtype),
        "tokenizer": _from(CLIPTokenizer, source, "tokenizer"),
        "unet": _from(UNet2DConditionModel, source, "unet", dtype),
    }
    from diffusers import DDIMScheduler

    try:
        if Path(source).is_dir():
            components["scheduler"] = DDIMScheduler.from_pretrained(Path(source) / "scheduler")
        else:
            components["scheduler"] = DDIMScheduler.from_pretrained(source, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot load scheduler ({exc})") from None
    if device is not None:
        for name in ("vae", "text_encoder", "unet"):
            components[name].to(device)
    return components


def read_metadata(folder: Path) -> dict:
    path = Path(folder) / METADATA
    return json.loads(path.read_text()) if path.is_file() else {}


def spec_as_dict(spec: TinySpec) -> dict:
    return asdict(spec)
