"""Writes that survive a crash of the machine, not only of the process: checkpoints.

`dginstyle.io.atomic_write_bytes` renames a complete file into place, which is enough when only
the process dies. After a power cut or a node failure the rename can reach the disk before the
file's data does, and a checkpoint of the right name holds zeros. Here the data is flushed and
fsynced before the rename, and the folder after it, so that a checkpoint under its final name
is complete. An error while writing names the final file (a failed write() names none), so
that "out of disk space" says which checkpoint could not be written.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from dginstyle.io import json_text, naming


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the entries of `folder` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some file systems cannot sync a folder
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush the data of a file written by someone else's code (mmengine) to the disk."""
    with naming(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def open_durable(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary name beside it, then flush, fsync,
    rename and fsync of the folder. On any error the temporary file is removed and `path` is
    untouched; an OSError names `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with naming(path), open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open_durable(path) as handle:
        handle.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """As dginstyle.io.atomic_write_json (the same bytes), made durable."""
    write_bytes(path, json_text(obj).encode("utf-8"))


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, durable. Written through a Python file object: given a path, torch.save on
    a full disk fails with "unexpected pos ..." and no file name."""
    import torch

    with open_durable(path) as handle:
        torch.save(obj, handle)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace, then fsync of the folder that holds `dst`."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
