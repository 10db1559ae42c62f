"""Outputs are ours alone: where a stage may write, decided before it does any work.

A stage writes a folder only where none exists, where an empty one stands, or where an earlier
run of the same stage left one: every folder a stage makes carries a marker file naming that
stage. A file is written only where none exists or where a file of the kind the stage writes
(its suffix) stands. No output is, holds or lies inside one of the stage's inputs, and outputs
do not overlap each other. A refusal is one DataError line naming the path and the reason, and
nothing has been touched when it is raised: a user's folder is never moved or deleted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from dginstyle.io import STAGE_MARKER, DataError, mark, ours_or_empty, stage_of

#: The kinds of output a stage argument can be (anything else is a file suffix such as ".png").
FOLDER = "folder"  # built in a staging folder and renamed into place when complete
WORKSPACE = "workspace"  # kept and written into across runs (checkpoints, predictions)
PREFIX = "prefix"  # <prefix>.md, .csv and .tex
PREFIX_SUFFIXES = (".md", ".csv", ".tex")


# Checkpoint folders written before folders carried a marker: recognised when every entry is
# one the stage itself writes there, so that an earlier run resumes instead of being refused.
UNMARKED_WORKSPACES = {
    "finetune-unet": r"\.?step_\d{8}(\.partial)?",
    "train-controlnet": r"\.?step_\d{8}(\.partial)?",
    "pretrain-prior": r"vae|unet",
    "train-segmentation": r"\.?iter_\d+\.pth(\.tmp)?|last_checkpoint|settings\.json|train_log\.jsonl|\d{8}_\d{6}(\.py)?",
}


def may_replace(folder: Path, stage: str, kind: str = FOLDER) -> bool:
    """True when `folder` is absent, empty, or was made by `stage` (for a workspace, also an
    unmarked one holding only what `stage` writes there)."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return True
    if ours_or_empty(folder, stage):
        return True
    if folder.is_symlink() or not folder.is_dir():
        return False
    pattern = UNMARKED_WORKSPACES.get(stage) if kind == WORKSPACE else None
    return bool(pattern) and stage_of(folder) is None and all(re.fullmatch(pattern, entry.name) for entry in folder.iterdir())


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _overlap(output: Path, other: Path) -> str | None:
    """How `output` overlaps `other` (both resolved), or None."""
    if output == other:
        return "is"
    if other in output.parents:
        return "lies inside"
    if output in other.parents:
        return "contains"
    return None


def check_outputs(stage: str, outputs: dict[Path, str], inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, outputs a run of `stage` may not write (see the module doc).

    `outputs` maps each output path to its kind (FOLDER, WORKSPACE, PREFIX or a file suffix);
    `inputs` are the paths the stage reads (model ids that name no path are harmless here).
    """
    inputs = [Path(p) for p in inputs if p is not None and str(p) != ""]
    resolved_inputs = [(p, _resolved(p)) for p in inputs]
    claimed: list[tuple[Path, Path]] = []
    for out, kind in outputs.items():
        out = Path(out)
        targets = [(out.with_name(out.name + suffix), suffix) for suffix in PREFIX_SUFFIXES] if kind == PREFIX else [(out, kind)]
        for target, target_kind in targets:
            _check_kind(stage, target, target_kind)
            where = _resolved(target)
            for given, other in resolved_inputs:
                how = _overlap(where, other)
                if how is not None:
                    raise DataError(f"{target}: refusing to write here: it {how} the input {given} (choose another output path)")
            for given, other in claimed:
                how = _overlap(where, other)
                if how is not None:
                    raise DataError(f"{target}: refusing to write here: it {how} the other output {given}")
            claimed.append((target, where))


def _check_kind(stage: str, target: Path, kind: str) -> None:
    exists = target.exists() or target.is_symlink()
    if kind in (FOLDER, WORKSPACE):
        if exists and (target.is_symlink() or not target.is_dir()):
            raise DataError(f"{target}: refusing to write a folder here: an existing file stands there (choose another output path)")
        if exists and not may_replace(target, stage, kind):
            made_by = stage_of(target)
            why = f"it was made by `dginstyle {made_by}`" if made_by else f"it is not empty and was not made by `dginstyle {stage}` (no {STAGE_MARKER} marker)"
            raise DataError(f"{target}: refusing to write into this folder: {why}; choose another output path or remove it yourself")
        return
    if target.suffix != kind:
        raise DataError(f"{target}: the output of `dginstyle {stage}` must be a {kind} file")
    if exists and (target.is_dir() or not target.is_file()):
        raise DataError(f"{target}: refusing to write a file here: a folder or special file stands there")


def claim_workspace(folder: Path, stage: str) -> Path:
    """Create `folder` (a WORKSPACE output already checked) and mark it as `stage`'s."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if stage_of(folder) is None:
        mark(folder, stage)
    return folder
