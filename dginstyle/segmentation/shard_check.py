"""A generated shard is checked whole before a stage trains on it or filters it.

Training reads a pair only when the sampler draws it, through mmcv: a truncated file would stop
a run hours in with a traceback that, for a label, names no file. So before any training work
every image and label of the shard is decoded in full (PIL) and, where the shard's
manifest.json records sha256 values (`generate` and `render-oracle` record both, for every
pair; `quality-control` records those of its filtered labels), compared with them. The first
problem is one DataError line naming the file and whether it is corrupt or was changed.

Cost: one read, one hash and one decode per file, in a process pool (about a second per
thousand small pairs per worker; minutes at most for paper-size shards, against hours of
training).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from dginstyle.io import DataError
from dginstyle.parallel import chunked, parallel_map, stopped

MANIFEST = "manifest.json"
#: Written by quality-control beside the hashes of its filtered labels (see `recorded_hashes`).
UNFILTERED_LABEL_SHA256 = "unfiltered_label_sha256"


def recorded_hashes(shard: Path) -> tuple[dict | None, dict | None]:
    """(image sha256 by pair id, label sha256 by pair id) from the shard's manifest; None where
    it records none (no manifest, or one written by hand or by an older version)."""
    path = Path(shard) / MANIFEST
    if not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON manifest ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a JSON object")
    images, labels = manifest.get("image_sha256"), manifest.get("label_sha256")
    if "quality_control" in manifest and UNFILTERED_LABEL_SHA256 not in manifest:
        # A copy made by an older quality-control: it kept the generator's manifest, whose
        # label hashes are those of the labels before filtering. Its images are the same files.
        labels = None
    return (images if isinstance(images, dict) else None), (labels if isinstance(labels, dict) else None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__


def check_file(path: str, kind: str, expected: str | None, manifest: str) -> None:
    """Decode `path` in full and compare its sha256 with `expected` (None: not recorded)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {kind} listed in the shard but missing") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # the full decode: a truncated or damaged file fails here
            mode = img.mode
    except Exception as exc:  # PIL raises OSError / SyntaxError / ValueError / zlib.error for damaged files
        raise DataError(f"{path}: generated {kind} is corrupt or truncated, it cannot be decoded ({_first_line(exc)}); regenerate the shard") from None
    if kind == "label" and mode not in ("L", "P"):
        raise DataError(f"{path}: generated label has mode {mode}, expected a single-channel 8-bit PNG of train IDs")
    if expected is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise DataError(
                f"{path}: generated {kind}'s checksum differs from the one in {manifest} (sha256 {actual[:12]}..., "
                f"recorded {str(expected)[:12]}...): the file changed after the shard was written; regenerate the shard"
            )


def _check_chunk(jobs: list[tuple[str, str, str | None, str]]) -> int:
    for job in jobs:
        if stopped():
            break
        check_file(*job)
    return len(jobs)


def verify_shard(shard: Path, samples: list[tuple[str, Path, Path]], workers: int = 1) -> None:
    """Check every (id, image, label) of `samples` (datasets.generated_samples(shard)) as the
    module docstring says; DataError naming the first bad file."""
    shard = Path(shard)
    manifest = shard / MANIFEST
    images, labels = recorded_hashes(shard)
    jobs = []
    for pair_id, image, label in samples:
        for kind, path, hashes in (("image", image, images), ("label", label, labels)):
            expected = None
            if hashes is not None:
                expected = hashes.get(str(pair_id))
                if expected is None:
                    raise DataError(f"{path}: {manifest} records no sha256 of this {kind} (pair {pair_id}); the shard is not the one the manifest describes")
            jobs.append((str(path), kind, expected, str(manifest)))
    for _ in parallel_map(_check_chunk, chunked(jobs, workers), workers):
        pass

