"""Generic training utilities shared by the diffusion stages (prior, UNet fine-tune, ControlNet).

Checkpoints
    <dir>/step_00001200/            one folder per saved step, written as <dir>/.step_*.partial
        <module>.safetensors        and renamed into place only when complete (atomic; every
                                    file and the rename fsynced: durable)
        <optimizer>.optim.pt        optimizer state (torch.save; read back weights_only=True)
        rng.pt                      RNG states (tensors only; weights_only=True)
        state.json                  {"step", "modules", "optimizers", "extra"}
    The last `keep` (default 2) complete step folders are kept; leftovers of a killed write
    (`.step_*.partial`) are ignored and removed on the next save.

Nothing here ever calls `torch.load` without `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from dginstyle import durable
from dginstyle.compat import load_error_line, load_weights, save_weights
from dginstyle.io import DataError

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")


# ----------------------------------------------------------------------------- seeding / RNG


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch; return a fresh CPU generator seeded with `seed`.

    With `deterministic`, torch is asked for deterministic algorithms (warn-only, so that an op
    without a deterministic variant on some device does not stop a run).
    """
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """torch's global CPU (and CUDA) RNG state plus the given generators', as uint8 tensors."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{index}"] = cuda_state
    for name, generator in (generators or {}).items():
        state[f"gen_{name}"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng_state` (missing entries are left as they are)."""
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            key = f"torch_cuda_{index}"
            if key in state:
                torch.cuda.set_rng_state(state[key].to(torch.uint8), index)
    for name, generator in (generators or {}).items():
        key = f"gen_{name}"
        if key in state:
            generator.set_state(state[key].to(torch.uint8))


# ----------------------------------------------------------------------------- schedules / EMA


def warmup_cosine(step: int, total: int, warmup: int = 0, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay from 1 to `floor` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers.

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates made so far, so a
    short run is not dominated by the random initialisation.
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for key, value in state.items():
            self.shadow[key].copy_(value)
        self.updates = updates

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.shadow)


# ----------------------------------------------------------------------------- checkpoints


def _state_dict(module: Any) -> dict[str, torch.Tensor]:
    if isinstance(module, torch.nn.Module) or hasattr(module, "state_dict"):
        return module.state_dict()
    if isinstance(module, dict):
        return module
    raise TypeError(f"cannot checkpoint a {type(module).__name__}: pass a module, an object with state_dict() or a dict of tensors")


def checkpoint_steps(directory: Path) -> list[int]:
    """The steps of the complete checkpoints in `directory`, ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for child in directory.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def save_checkpoint(
    directory: Path,
    step: int,
    modules: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    rng_state: dict[str, torch.Tensor] | None = None,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically (temp folder + rename) and keep only the last `keep`.

    `modules`: name -> nn.Module (or anything with state_dict(), or a dict of tensors), saved
    as safetensors; `optimizers`: name -> optimizer, saved with torch.save; `extra`: small
    JSON-serialisable facts (losses, fingerprints, EMA update counts ...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    staging = directory / f".step_{step:08d}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        # Every file is fsynced before the folder is renamed: after a crash of the machine a
        # step folder under its final name is complete, never a name over missing data.
        for name, module in modules.items():
            save_weights(_state_dict(module), staging / f"{name}.safetensors")
            durable.fsync_file(staging / f"{name}.safetensors")
        for name, optimizer in (optimizers or {}).items():
            durable.torch_save(optimizer.state_dict(), staging / f"{name}.optim.pt")
        durable.torch_save(dict(rng_state or {}), staging / "rng.pt")
        durable.write_json(
            staging / "state.json",
            {"step": step, "modules": sorted(modules), "optimizers": sorted(optimizers or {}), "extra": extra or {}},
        )
        if final.exists():
            shutil.rmtree(final)
        durable.replace(staging, final)
    except BaseException:
        # A full disk: give the space of the half-written step back, so that the space
        # freed by the user is not eaten by it (the newest complete step stays).
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in checkpoint_steps(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(directory / f"step_{old:08d}", ignore_errors=True)
    for child in directory.iterdir():  # leftovers of a killed save
        if child.name.startswith(".step_") and child.name.endswith(".partial"):
            shutil.rmtree(child, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, map_location: str | torch.device = "cpu") -> dict:
    """One checkpoint folder as {"step", "modules", "optimizers", "rng_state", "extra", "path"}."""
    folder = Path(folder)
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: unreadable checkpoint state.json ({exc})") from None
    modules = {name: load_weights(folder / f"{name}.safetensors", device=str(map_location))[0] for name in state["modules"]}
    optimizers = {}
    for name in state["optimizers"]:
        path = folder / f"{name}.optim.pt"
        try:
            optimizers[name] = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
            raise DataError(f"{path}: cannot read optimizer state ({load_error_line(exc)})") from None
    try:
        rng_state = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{folder / 'rng.pt'}: cannot read RNG state ({load_error_line(exc)})") from None
    return {
        "step": int(state["step"]),
        "modules": modules,
        "optimizers": optimizers,
        "rng_state": rng_state,
        "extra": state.get("extra", {}),
        "path": folder,
    }


def load_latest_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> dict | None:
    """The newest complete checkpoint in `directory` (see `load_checkpoint`), or None."""
    steps = checkpoint_steps(directory)
    if not steps:
        return None
    return load_checkpoint(Path(directory) / f"step_{steps[-1]:08d}", map_location)
