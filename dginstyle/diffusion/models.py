"""Model factory: the latent diffusion components at two scales from one code path.

Paper scale: a pretrained Stable Diffusion 1.5: a diffusers folder, a model id through the
Hugging Face cache (downloaded when online, the cache only with HF_HUB_OFFLINE=1), or one
checkpoint in the original SD layout with the configs of a diffusers folder or id (see
"loading a prior" below, docs/weights.md). Miniature world: the same
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


# ----------------------------------------------------------------------------- loading a prior
#
# Three ways a user has Stable Diffusion 1.5 (docs/weights.md):
# - a model id (owner/name), resolved through the standard Hugging Face cache (HF_HOME /
#   HF_HUB_CACHE): what is missing is downloaded when the machine is online; with
#   HF_HUB_OFFLINE=1 nothing touches the network and a model not in the cache is one DataError
#   saying how to get it;
# - a local diffusers folder;
# - one checkpoint in the original Stable Diffusion (LDM) layout, `.safetensors` or `.ckpt`
#   (v1-5-pruned-emaonly.*): the file holds the weights only, so the configs, tokenizer and
#   scheduler come from a diffusers folder or model id (`config`, default SD 1.5's id). A `.ckpt`
#   is a pickle: it is read with torch.load(weights_only=True) here, never by a full unpickler.

#: The maintained copy of Stable Diffusion 1.5 on the hub (runwayml/stable-diffusion-v1-5 is gone).
SD15_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
#: What a pipeline needs of a model repo: its configs, tokenizer and safetensors weights. Nothing
#: else is fetched (SD 1.5's repo also holds 4-8 GB root checkpoints, .bin, fp16 and non-EMA copies).
PIPELINE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
#: What a single-file checkpoint needs besides its weights.
CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/*", "*/config.json")


def is_single_file(source: str | Path) -> bool:
    """Whether `source` names one checkpoint file in the original SD layout (by its suffix)."""
    return Path(str(source)).suffix in SINGLE_FILE_SUFFIXES


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it, also when it was set
    after huggingface_hub was imported."""
    import os

    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _download_hint(repo_id: str, patterns: tuple[str, ...], offline: bool) -> str:
    include = " ".join(f"--include '{p}'" for p in patterns)
    return (
        f"on a machine with network access run `hf download {repo_id} {include}` with the same HF_HOME "
        f"(or copy its hub cache here){', or unset HF_HUB_OFFLINE to let this job download it' if offline else ''}, "
        f"or give a local diffusers folder or single checkpoint file instead (docs/weights.md)"
    )


def hub_snapshot(repo_id: str, patterns: tuple[str, ...] = PIPELINE_FILES) -> Path:
    """The local folder of model `repo_id` in the Hugging Face cache, holding at least the files
    matching `patterns`: downloaded where missing when online, the cache only when HF_HUB_OFFLINE
    is set (no network access at all). DataError in one line when it cannot be had."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline()
    try:
        folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=list(patterns), local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached ({_first_line(exc)})"
        raise DataError(
            f"{repo_id}: model not in the Hugging Face cache {constants.HF_HUB_CACHE} (nor a local folder) and {why}; "
            f"{_download_hint(repo_id, patterns, offline)}"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise DataError(f"{repo_id}: cannot download it from the Hugging Face hub ({exc.__class__.__name__}: {_first_line(exc)})") from None
    folder = Path(folder)
    missing = [p for p in patterns if "*" not in p and not (folder / p).is_file()]
    if not (folder / "tokenizer").is_dir():
        missing.append("tokenizer/")
    if missing:
        raise DataError(
            f"{repo_id}: the cached copy {folder} lacks {', '.join(missing)}"
            + (f"; {_download_hint(repo_id, patterns, offline)}" if offline else " (is this a Stable Diffusion diffusers repo?)")
        )
    return folder


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else exc.__class__.__name__


def resolve_model_folder(source: str | Path, patterns: tuple[str, ...] = PIPELINE_FILES) -> Path:
    """A local diffusers folder as given; a model id (owner/name) through the HF cache."""
    text = str(source)
    if Path(text).is_dir():
        return Path(text)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise DataError(f"{text}: not a diffusers folder, a single checkpoint file ({', '.join(SINGLE_FILE_SUFFIXES)}) or a model id (owner/name)")
    return hub_snapshot(text, patterns)


def _from(cls, source: str, subfolder: str, dtype: torch.dtype | None = None, name: str | None = None):
    """Component `subfolder` of a diffusers folder (a model id is resolved through the HF cache)."""
    folder = resolve_model_folder(source) if not Path(str(source)).is_dir() else Path(str(source))
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    try:
        return cls.from_pretrained(folder / subfolder, **kwargs)
    except (OSError, ValueError) as exc:
        raise DataError(f"{name or source}: cannot load {subfolder} ({exc.__class__.__name__}: {_first_line(exc)})") from None


def read_original_checkpoint(path: Path) -> dict:
    """The tensors of a single-file checkpoint in the original SD layout. `.safetensors` holds
    tensors only; a `.ckpt` is a pickle, read with torch.load(weights_only=True) (a file holding
    any other object is refused before anything in it runs), its `state_dict` unwrapped."""
    import zipfile

    from dginstyle.compat import load_error_line

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable safetensors file ({exc.__class__.__name__}: {_first_line(exc)})") from None
    else:
        try:  # memory-mapped where the file is in torch's zip format: a 4 GB file is not read twice
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as exc:  # noqa: BLE001 - UnpicklingError for a refused object; RuntimeError, EOFError, ... for a broken file
            raise DataError(
                f"{path}: refused by the weights-only loader or unreadable ({load_error_line(exc)}); "
                f"the .safetensors version of the same checkpoint holds tensors only"
            ) from None
        while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise DataError(f"{path}: not a state dict of tensors (found {type(state).__name__})")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise DataError(f"{path}: not a state dict of tensors ({bad!r} is a {type(state[bad]).__name__})")
    return state


def _check_loaded(model, path: Path, part: str, config: str) -> None:
    """A component built on the meta device keeps meta tensors where the checkpoint had none."""
    empty = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if empty:
        raise DataError(
            f"{path}: holds no weights for {len(empty)} tensors of the {part} of {config} (e.g. {empty[0]}); "
            f"is it a Stable Diffusion checkpoint of that family (prior.config / --prior-config names the configs)?"
        )


def load_single_file(path: str | Path, config: str | Path | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Components of a single checkpoint in the original Stable Diffusion layout: weights from
    `path` (read here, weights-only), configs, tokenizer and scheduler from `config` (a diffusers
    folder or model id; default SD 1.5's id), converted by diffusers' single-file converters with
    local files only."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    config_name = str(config) if config is not None else SD15_MODEL_ID
    state = read_original_checkpoint(path)
    folder = resolve_model_folder(config_name, CONFIG_FILES)
    common = {"config": str(folder), "local_files_only": True, "torch_dtype": dtype}
    components = {}
    try:
        components["unet"] = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
        components["vae"] = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
        components["text_encoder"] = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder", **common)
    except Exception as exc:  # noqa: BLE001 - diffusers raises ValueError, KeyError, RuntimeError (shapes), SingleFileComponentError, ...
        part = next(n for n in ("unet", "vae", "text_encoder") if n not in components)
        raise DataError(
            f"{path}: cannot build the {part} from it with the configs of {config_name} ({exc.__class__.__name__}: {_first_line(exc)})"
        ) from None
    for part, model in components.items():
        _check_loaded(model, path, part, config_name)
        model.eval()
    components["tokenizer"] = _from(CLIPTokenizer, str(folder), "tokenizer", name=config_name)
    try:
        components["scheduler"] = DDIMScheduler.from_pretrained(folder / "scheduler")
    except (OSError, ValueError) as exc:
        raise DataError(f"{config_name}: cannot load scheduler ({exc.__class__.__name__}: {_first_line(exc)})") from None
    return components


def load_components(
    source: str | Path, device: torch.device | None = None, dtype: torch.dtype = torch.float32, config: str | Path | None = None
) -> dict:
    """The components (vae, text_encoder, tokenizer, unet, scheduler) of a prior: a diffusers
    folder, a model id (through the HF cache, see hub_snapshot) or one checkpoint file in the
    original SD layout whose configs come from `config` (see load_single_file)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = str(source)
    if is_single_file(source):
        components = load_single_file(source, config, dtype)
    else:
        if config is not None:
            raise DataError(f"{source}: a configs source ({config}) is for a single checkpoint file ({', '.join(SINGLE_FILE_SUFFIXES)}) only")
        folder = resolve_model_folder(source)
        components = {
            "vae": _from(AutoencoderKL, str(folder), "vae", dtype, name=source),
            "text_encoder": _from(CLIPTextModel, str(folder), "text_encoder", dtype, name=source),
            "tokenizer": _from(CLIPTokenizer, str(folder), "tokenizer", name=source),
            "unet": _from(UNet2DConditionModel, str(folder), "unet", dtype, name=source),
        }
        try:
            components["scheduler"] = DDIMScheduler.from_pretrained(folder / "scheduler")
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
