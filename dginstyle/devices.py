"""Which device a stage runs on, and one GPU per job on a multi-GPU workstation.

Every stage that runs a network takes `--device` (`auto`, `cpu`, `cuda`, `cuda:N`); `auto` is
CUDA when torch sees a GPU, else the CPU (`resolve_device`).


Snakemake counts GPUs (`--resources gpu=N` lets at most N jobs declaring `gpu=1` run at once)
but never says which device a job gets: without help every job lands on device 0. So a GPU
stage claims a device itself before torch starts: the first device whose lock file it can lock
exclusively (`flock`), which it then makes the only visible one (`CUDA_VISIBLE_DEVICES`). The
kernel releases the lock when the process ends, however it ends (exit, crash, SIGKILL), so a
killed job never leaves a device marked busy.

It is switched on by the workflow only for local runs that cap `gpu` (the local-gpu profile),
by exporting $DGINSTYLE_GPU_LOCKS (the lock folder); under SLURM the scheduler assigns devices
and nothing here runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, MutableMapping

LOCKS_VARIABLE = "DGINSTYLE_GPU_LOCKS"
DEVICE_CHOICES_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"

log = logging.getLogger(__name__)


def device_pool(environ: Mapping[str, str] = os.environ, dev: Path = Path("/dev")) -> list[str]:
    """The devices a job may take: $CUDA_VISIBLE_DEVICES when set (a restriction the user chose;
    empty means none), else one per /dev/nvidia<N> character device (0..count-1)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    count = sum(1 for path in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", path.name))
    return [str(index) for index in range(count)]


@dataclass
class DeviceClaim:
    """A device held by this process for as long as `fd` stays open."""

    device: str
    lock_file: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _lock_path(lock_dir: Path, device: str) -> Path:
    # Device ids may be indices or UUIDs (GPU-…, MIG-…): keep the name a plain file name.
    return lock_dir / ("gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock")


def try_claim(devices: list[str], lock_dir: Path) -> DeviceClaim | None:
    """Lock the first free device of `devices` (in order), or None when all are held."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        path = _lock_path(lock_dir, device)
        # Read-only is enough for flock, so a lock file made by another user still works.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return DeviceClaim(device, path, fd)
    return None


def claim(
    devices: list[str],
    lock_dir: Path,
    *,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DeviceClaim:
    """Wait until one of `devices` is free and hold it. With Snakemake's `gpu` cap equal to the
    device count one is always free at once; waiting only happens when the cap is too high
    (or another run shares the machine). Raises TimeoutError after `timeout` seconds."""
    if not devices:
        raise ValueError("no GPU to claim")
    waited = 0.0
    while True:
        held = try_claim(devices, lock_dir)
        if held is not None:
            return held
        if timeout is not None and waited >= timeout:
            raise TimeoutError(f"all {len(devices)} GPUs ({', '.join(devices)}) stayed busy for {waited:.0f} s")
        if waited == 0:
            log.warning("all %d GPUs are busy (locks in %s); waiting for one", len(devices), lock_dir)
        sleep(poll_seconds)
        waited += poll_seconds


def claim_for_job(environ: MutableMapping[str, str] = os.environ, dev: Path = Path("/dev")) -> DeviceClaim | None:
    """What a GPU stage calls first: when the workflow asked for device locks and SLURM is not
    the one assigning devices, hold a free GPU and make it the only visible one (before torch
    initialises CUDA). Returns None, changing nothing, otherwise or when there is no GPU."""
    lock_dir = environ.get(LOCKS_VARIABLE)
    if not lock_dir or environ.get("SLURM_JOB_ID"):
        return None
    devices = device_pool(environ, dev)
    if not devices:
        log.warning("%s is set but no GPU is visible: running on the CPU", LOCKS_VARIABLE)
        return None
    held = claim(devices, Path(lock_dir))
    environ["CUDA_VISIBLE_DEVICES"] = held.device
    log.info("using GPU %s (lock %s)", held.device, held.lock_file)
    return held


def resolve_device(requested: str = "auto") -> str:
    """The torch device name a stage runs on: `auto` is "cuda" when torch sees a GPU, else "cpu".

    A request for a GPU that is not there fails here, in one line, instead of deep inside torch.
    """
    import torch

    from dginstyle.io import DataError  # a bad --device is bad input: one line, exit 1

    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if match is None:
        raise DataError(f"--device {requested!r}: expected {DEVICE_CHOICES_HELP}")
    if not torch.cuda.is_available():
        raise DataError(f"--device {requested}: torch sees no CUDA GPU here (use auto or cpu)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DataError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return requested
