"""Small file helpers: atomic writes, PNG label encode/decode, checksums.

Every artifact is written under a temporary name and renamed into place, so a killed or
failed job never leaves a file that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# zlib level 1: label maps are mostly flat regions, so level 1 is within a few percent of the
# size of level 6 at a fraction of the time.
LABEL_PNG_COMPRESS_LEVEL = 1


class DataError(Exception):
    """A problem with an input file or folder; the message names the path and what is wrong."""


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """Make an OSError raised inside name `path` when it names no file (a failed write() on an
    open file names none), so that "out of disk space" can say which file."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Path.write_bytes, but an error names the file."""
    with naming(path):
        Path(path).write_bytes(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are 0600 whatever the umask, and outputs on a shared filesystem
    # must get the permissions the user's umask gives, as any other file they write.
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with naming(path), os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# A full disk, an exhausted quota, a file-size limit (ulimit -f): "out of space" for the user.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch.save and safetensors wrap the operating system's error in their own exception types, and
# a worker process's error reaches us as text: these phrases find it there.
DISK_FULL_PHRASES = ("No space left on device", "Disk quota exceeded", "File too large", "StorageFull")


def disk_full_message(exc: BaseException) -> str | None:
    """One line saying which file could not be written for lack of space, or None when `exc`
    (or an exception it was raised from) is not about space."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror)
        text = str(exc).splitlines()[0] if str(exc) else ""
        if any(phrase in text for phrase in DISK_FULL_PHRASES):
            return text
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """How every JSON artifact of the project is written (one space indent, keys in order)."""
    return json.dumps(obj, indent=1, sort_keys=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (weights can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_label_png(label: np.ndarray) -> bytes:
    """A (H, W) uint8 train-ID map as greyscale PNG bytes."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label must be a 2-D uint8 array, got {label.dtype} {label.shape}")
    buffer = io.BytesIO()
    Image.fromarray(label, mode="L").save(buffer, format="PNG", compress_level=LABEL_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_rgb_png(image: np.ndarray) -> bytes:
    """A (H, W, 3) uint8 image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=LABEL_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def read_label_png(path: str | os.PathLike, what: str = "label") -> np.ndarray:
    """Decode a single-channel label PNG (greyscale or palette indices) to a uint8 array.

    Palette PNGs (GTA5, Mapillary) decode to their indices, which are the label IDs. RGB or
    16-bit files are refused: they are not label maps in any format this project reads. `what`
    names the file's role in messages ("label", "prediction").
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise DataError(f"{path}: {what} image has mode {img.mode}, expected a single-channel 8-bit PNG (L or P)")
            array = np.asarray(img)  # forces the full decode: truncation is detected here
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except Exception as exc:  # PIL raises OSError/SyntaxError/ValueError for damaged files
        raise DataError(f"{path}: cannot decode {what} PNG ({exc.__class__.__name__}: {exc}); the file is corrupt or truncated") from None
    return array


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as RGB; DataError naming the file when it is missing or damaged."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image not found (broken link?)") from None
    except Exception as exc:  # PIL raises several types for damaged files
        raise DataError(f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})") from None


#: The file inside every folder a stage made, holding the stage's name (dginstyle.outputs).
STAGE_MARKER = ".dginstyle-stage"


def stage_of(folder: str | os.PathLike) -> str | None:
    """The stage whose marker `folder` carries, or None when it carries none."""
    try:
        return (Path(folder) / STAGE_MARKER).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def mark(folder: str | os.PathLike, stage: str) -> None:
    """Record that `stage` made `folder`: only a marked folder (or an empty one) is ever replaced."""
    (Path(folder) / STAGE_MARKER).write_text(stage + "\n", encoding="utf-8")


def ours_or_empty(folder: Path, stage: str) -> bool:
    """True when `folder` is a real folder that `stage` made (its marker) or that is empty."""
    return folder.is_dir() and not folder.is_symlink() and (stage_of(folder) == stage or not any(folder.iterdir()))


def remove_ours(folder: Path, stage: str) -> None:
    """Delete a folder this stage made (its marker says so); refuse anything else."""
    if not ours_or_empty(folder, stage):
        raise DataError(f"{folder}: not made by `dginstyle {stage}` (no {STAGE_MARKER} marker); refusing to delete it, remove it yourself")
    shutil.rmtree(folder)


def set_aside(folder: Path, stage: str) -> Path:
    """Move `stage`'s workspace `folder` (checkpoints it found unusable) to `<folder>.stale`,
    replacing an older set-aside copy of the same stage only; returns the new place."""
    folder = Path(folder)
    stale = folder.with_name(folder.name + ".stale")
    if stale.exists() or stale.is_symlink():
        remove_ours(stale, stage)
    if stage_of(folder) is None:
        mark(folder, stage)  # it holds this stage's checkpoints: a later run may remove it
    os.replace(folder, stale)
    return stale


def replace_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder to `final`, replacing an older `final` only at the end,
    and only when the same stage made it (the staging folder's marker names the stage)."""
    stage = stage_of(staging)
    if stage is None:
        raise DataError(f"{staging}: staging folder without a {STAGE_MARKER} marker (internal error: use fresh_staging_dir)")
    old = final.with_name(f".{final.name}.old")
    if old.exists() or old.is_symlink():
        remove_ours(old, stage)
    if final.exists() or final.is_symlink():
        if not ours_or_empty(final, stage):
            raise DataError(f"{final}: not made by `dginstyle {stage}` (no {STAGE_MARKER} marker); refusing to replace it, choose another output path")
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def fresh_staging_dir(final: Path, stage: str) -> Path:
    """An empty hidden folder beside `final` to build it in, marked as `stage`'s (the leftovers of
    a killed run of the same stage are removed; anything else there is refused)."""
    staging = final.with_name(f".{final.name}.partial")
    if staging.exists() or staging.is_symlink():
        remove_ours(staging, stage)
    staging.mkdir(parents=True)
    mark(staging, stage)
    return staging
