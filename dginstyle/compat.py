"""Two environment traps of the segmentation stack, each handled once, here.

1. mmcv-lite has no compiled ops (`mmcv._ext`), yet mmsegmentation 1.2.2 imports `mmcv.ops`
   unguarded (mmseg.utils, mmseg.models.losses, ...), so `import mmseg.models` fails with
   "No module named 'mmcv._ext'". `ensure_mmcv_ops_importable()` registers a stand-in module
   whose every op is a function that raises a clear RuntimeError when *called*: imports work,
   pure-PyTorch models (MiT/SegFormer, DAFormer heads) run, and only a model that really
   needs a compiled op fails, loudly, naming the op. A real, installed `mmcv._ext` is always
   used as is (and a broken one is not masked: its import error propagates).

2. torch >= 2.6 loads with `weights_only=True` by default, and mmengine's resume checkpoints
   hold a few non-tensor Python objects (the message hub's HistoryBuffer with numpy arrays,
   numpy scalars, possibly ConfigDict). Rather than ever falling back to `weights_only=False`,
   `allow_mmengine_checkpoint_types()` allowlists exactly those types for torch's restricted
   unpickler. Final weights are safetensors (`save_weights` / `load_weights`), which cannot
   execute code at all. `load_trusted_checkpoint` additionally refuses files outside the run
   folder that produced them.

This module never calls `torch.load` without `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

from dginstyle.io import DataError, atomic_write_bytes

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# 1. mmcv compiled ops
# --------------------------------------------------------------------------------------------

_STUB_NAME = "mmcv._ext"
_SEGMENTATION_ENV = "envs/segmentation.yaml"


def _missing_op(name: str):
    def op(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"mmcv compiled op '{name}' is not available: mmcv-lite has no compiled ops; install full "
            f"mmcv 2.1.0 built for your CUDA ({_SEGMENTATION_ENV}) to use models that need it"
        )

    op.__name__ = op.__qualname__ = name
    op.__module__ = _STUB_NAME
    return op


class _MissingOpsModule(types.ModuleType):
    """Stand-in for `mmcv._ext`: any public attribute is an op that raises when called.

    mmcv's `ext_loader.load_ext` only asserts `hasattr(ext, op)` at import time, so every op
    name "exists". Private and dunder names raise AttributeError as for a normal module, so
    that introspection (pickle, inspect, `__path__` lookups) behaves.
    """

    dginstyle_stand_in = True

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        op = _missing_op(name)
        setattr(self, name, op)  # the same function object on every lookup
        return op


def mmcv_ops_available() -> bool:
    """True when a real compiled `mmcv._ext` is importable (not our stand-in)."""
    module = sys.modules.get(_STUB_NAME)
    if module is not None:
        return not getattr(module, "dginstyle_stand_in", False)
    try:
        return importlib.util.find_spec(_STUB_NAME) is not None
    except ModuleNotFoundError:  # mmcv itself is not installed
        return False


def ensure_mmcv_ops_importable() -> bool:
    """Make `import mmcv.ops` work under mmcv-lite; return True when the stand-in is in use.

    Idempotent. Does nothing when the real `mmcv._ext` exists (an ImportError while loading a
    real but broken extension, e.g. a CUDA mismatch, propagates instead of being hidden).
    """
    existing = sys.modules.get(_STUB_NAME)
    if existing is not None:
        return bool(getattr(existing, "dginstyle_stand_in", False))
    import mmcv  # noqa: F401  -- ModuleNotFoundError here means mmcv is not installed at all

    if importlib.util.find_spec(_STUB_NAME) is not None:
        importlib.import_module(_STUB_NAME)
        return False
    stub = _MissingOpsModule(_STUB_NAME, "dginstyle stand-in for mmcv's compiled ops (mmcv-lite has none)")
    # A spec without a loader: `pkgutil.find_loader('mmcv._ext')` (mmcv's check_ops_exist,
    # mmengine's collect_env) then correctly reports that no compiled ops exist.
    stub.__spec__ = importlib.machinery.ModuleSpec(_STUB_NAME, None)
    stub.__file__ = None
    sys.modules[_STUB_NAME] = stub
    mmcv._ext = stub  # type: ignore[attr-defined]
    log.debug("mmcv._ext not found (mmcv-lite): registered a stand-in whose ops raise when called")
    return True


def import_mmseg(init_default_scope: bool = True) -> types.ModuleType:
    """Import mmsegmentation with every registry populated (models, datasets, metrics...).

    Call this instead of importing mmseg directly anywhere in the project.
    """
    ensure_mmcv_ops_importable()
    import mmseg
    import mmseg.evaluation  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=init_default_scope)
    return mmseg


# --------------------------------------------------------------------------------------------
# 2. checkpoints
# --------------------------------------------------------------------------------------------

# HistoryBuffer pickles its statistics methods as `getattr(HistoryBuffer, 'mean')` etc. torch
# refuses `builtins.getattr` (an open-ended callable); we register, under that name, a getattr
# that only ever returns a HistoryBuffer statistics method.
_HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")

# Plain numeric numpy dtypes that mmengine's logs and metrics hold (arrays and scalars).
_NUMPY_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
)  # fmt: skip


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    import pickle

    from mmengine.logging import HistoryBuffer

    allowed = set(_HISTORY_BUFFER_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is not HistoryBuffer or not isinstance(name, str) or name not in allowed:
        raise pickle.UnpicklingError(
            f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics methods are allowed"
        )
    return getattr(HistoryBuffer, name)


def mmengine_checkpoint_safe_globals() -> list:
    """The exact extra globals torch's weights-only unpickler needs for mmengine checkpoints.

    Found by saving real checkpoints with mmengine's Runner (CheckpointHook with save_best, a
    metric returning numpy scalars, PolyLR, AdamW) and listing what
    `torch.serialization.get_unsafe_globals_in_checkpoint` reports: numpy
    `_reconstruct`/`ndarray`/`dtype`/`scalar` (+ the dtype classes, for BUILD), mmengine's
    HistoryBuffer and `builtins.getattr` (restricted, see above); ConfigDict is added because
    dataset metainfo given in a config arrives as one.
    """
    import numpy as np
    from mmengine.config import ConfigDict
    from mmengine.logging import HistoryBuffer

    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        multiarray = np.core.multiarray
    entries: list = [
        np.ndarray,
        np.dtype,
        *(type(np.dtype(name)) for name in _NUMPY_DTYPES),
        HistoryBuffer,
        ConfigDict,
        (_history_buffer_getattr, "builtins.getattr"),
    ]
    # Checkpoints written under numpy 1.x name these numpy.core.*, under 2.x numpy._core.*.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        entries.append((multiarray._reconstruct, f"{module}._reconstruct"))
        entries.append((multiarray.scalar, f"{module}.scalar"))
    return entries


def _require_weights_only_default() -> None:
    import torch.serialization

    if not hasattr(torch.serialization, "add_safe_globals"):
        raise RuntimeError(f"torch {__import__('torch').__version__} has no weights-only allowlist; torch >= 2.6 is required")
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: torch.load (and so mmengine's checkpoint loading) "
            "would unpickle arbitrary code; unset it"
        )


def allow_mmengine_checkpoint_types() -> None:
    """Allowlist mmengine's checkpoint types process-wide for torch's weights-only loading.

    Call before `Runner.resume` / `load_checkpoint`: mmengine calls `torch.load` without a
    `weights_only` argument, which on torch >= 2.6 means weights_only=True; with these types
    allowed its own loading path works and any other class in a file is still refused.
    Idempotent (torch keeps the allowlist as a set).
    """
    _require_weights_only_default()
    import torch.serialization

    entries = mmengine_checkpoint_safe_globals()
    already = set(torch.serialization.get_safe_globals())
    if all(entry in already for entry in entries):
        return
    torch.serialization.add_safe_globals(entries)
    log.debug("allowlisted mmengine checkpoint types for weights-only torch.load")


@contextlib.contextmanager
def mmengine_checkpoint_types():
    """Context manager form of `allow_mmengine_checkpoint_types` (restores the list on exit).

    Only the types not yet allowed are added, and only those are removed on exit: torch's
    `safe_globals` context removes every type it was given, which would undo an earlier
    process-wide `allow_mmengine_checkpoint_types` (and break mmengine's own resume after it).
    """
    _require_weights_only_default()
    import torch.serialization

    already = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([entry for entry in mmengine_checkpoint_safe_globals() if entry not in already]):
        yield


def load_error_line(exc: BaseException) -> str:
    """One line saying why torch.load refused or failed on a file, for a DataError message.

    torch's weights-only refusal is several paragraphs whose first line advises re-running with
    `weights_only=False`, exactly what must never be done here; the line that names the
    offending global ("Trying to load unsupported GLOBAL posix.system ...") is the useful one.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line]
    return f"{exc.__class__.__name__}: {(named or lines or [''])[0]}"


def check_inside_run_dir(path: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """The resolved `path` if it lies inside the resolved `run_dir`; DataError otherwise."""
    resolved = Path(path).resolve()
    root = Path(run_dir).resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"{path}: refusing to load a checkpoint outside the run folder {root} (it resolves to {resolved})")
    if not resolved.is_file():
        raise DataError(f"{path}: checkpoint not found")
    return resolved


def load_trusted_checkpoint(path: str | os.PathLike, run_dir: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load an mmengine checkpoint written inside `run_dir`, weights-only with the allowlist.

    Refuses (DataError) files outside `run_dir` (symlinks resolved) and any file that holds a
    class or callable outside the allowlist, which is refused before anything in it runs.
    """
    import pickle

    import torch

    resolved = check_inside_run_dir(path, run_dir)
    with mmengine_checkpoint_types():
        try:
            return torch.load(resolved, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise DataError(f"{path}: refused by the weights-only loader (holds objects outside the allowlist): {load_error_line(exc)}") from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise DataError(f"{path}: cannot read checkpoint ({load_error_line(exc)})") from None


def save_weights(state_dict: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write tensors as safetensors, atomically. Metadata values that are not str are JSON-encoded."""
    import torch
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"save_weights: {name!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if tensor.numel() and (storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size()):
            tensor = tensor.clone()  # safetensors refuses shared or partial storage (tied weights, views)
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    meta = None
    if metadata:
        meta = {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_weights(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict]:
    """(state_dict, metadata) of a safetensors file; DataError if missing or unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, metadata
