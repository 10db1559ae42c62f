"""Outputs are ours alone: every stage refuses, in one line and before touching anything, an
output path that is a user's file or folder, an input, inside an input, or holds an input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dginstyle import cli, outputs
from dginstyle.io import STAGE_MARKER, DataError, fresh_staging_dir, mark, replace_dir

# Values for the required arguments that are not paths (a refusal comes before any is used).
PLAIN_VALUES = {"format": None, "split": "val", "spec": "{}", "request": "{}", "steps": "1", "num_pairs": "1"}


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under `root` with its content hash (folders and links included)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def subparser(stage: str):
    parser = cli.build_parser([stage])
    return parser, parser._subparsers._group_actions[0].choices[stage]


def stage_argv(stage: str, root: Path, output: Path) -> tuple[list[str], list[Path]]:
    """A command line of `stage` whose first output is `output`; every other path it names is an
    existing input folder under root/inputs. Returns (argv, input folders)."""
    _, sub = subparser(stage)
    kinds = cli.WRITES[stage]
    first = next(iter(kinds))
    argv, inputs = [stage], []
    for action in sub._actions:
        if action.dest == "help" or not (action.required or action.dest == first or action.type is Path):
            continue
        if action.dest in kinds and action.dest != first and not action.required:
            continue
        flag = action.option_strings[0] if action.option_strings else None
        if action.dest == first:
            value = str(output)
        elif action.dest in kinds:  # another output: a fresh path of its kind
            kind = kinds[action.dest]
            value = str(root / "other" / ("out" if kind in (outputs.FOLDER, outputs.WORKSPACE, outputs.PREFIX) else "out" + kind))
        elif action.type is Path or action.dest in ("tables",):
            folder = root / "inputs" / action.dest
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "data.txt").write_text("an input\n")
            inputs.append(folder)
            value = str(folder)
        else:
            value = PLAIN_VALUES[action.dest] or action.choices[0]
        argv += [flag, value] if flag else [value]
    return argv, inputs


def folder_cases(root: Path, inputs: list[Path]) -> dict[str, Path]:
    """Output paths a folder stage must refuse, each prepared in `root`."""
    unrelated = root / "mydocs"
    unrelated.mkdir()
    (unrelated / "thesis.txt").write_text("years of work\n")
    a_file = root / "afile"
    a_file.write_text("a user's file\n")
    other_stage = root / "made_by_another_stage"
    other_stage.mkdir()
    mark(other_stage, "no-such-stage")
    (other_stage / "weights.bin").write_bytes(b"\0")
    cases = {"an unrelated folder": unrelated, "an existing file": a_file, "a folder another stage made": other_stage}
    if inputs:
        cases.update({"the input itself": inputs[0], "inside the input": inputs[0] / "sub", "a folder that holds the input": inputs[0].parent})
    return cases


def file_cases(root: Path, inputs: list[Path], suffix: str) -> dict[str, Path]:
    folder = root / f"afolder{suffix}"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work\n")
    cases = {"an existing folder": folder, "the wrong suffix": root / "out.txt"}
    if inputs:
        cases["inside an input"] = inputs[0] / f"out{suffix}"
    return cases


def cases_of(stage: str, root: Path) -> list[tuple[str, list[str]]]:
    kind = next(iter(cli.WRITES[stage].values()))
    _, inputs = stage_argv(stage, root, root / "placeholder")
    if kind in (outputs.FOLDER, outputs.WORKSPACE):
        paths = folder_cases(root, inputs)
    elif kind == outputs.PREFIX:
        (root / "table.md").mkdir()
        paths = {"a folder at <prefix>.md": root / "table", "inside an input": inputs[0] / "table"}
        assert inputs
    else:
        paths = file_cases(root, inputs, kind)
    return [(name, stage_argv(stage, root, path)[0]) for name, path in paths.items()]


@pytest.mark.parametrize("stage", sorted(cli.WRITES))
def test_every_stage_refuses_outputs_it_does_not_own_in_one_line_touching_nothing(stage, tmp_path, capsys):
    root = tmp_path / "work"
    root.mkdir()
    cases = cases_of(stage, root)
    assert cases
    for name, argv in cases:
        before = tree_digest(root)
        code = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1, (name, argv)
        assert len(err) == 1 and err[0].startswith(f"dginstyle {stage}: error: "), (name, err)
        assert "Traceback" not in err[0]
        assert tree_digest(root) == before, f"{stage}, {name}: the tree changed"


def test_the_writes_table_names_every_output_argument_of_every_stage():
    """A stage added without its outputs in cli.WRITES would write unchecked."""
    stages = set(cli.HEAVY_STAGES) | {"prepare", "contact-sheet", "evaluate-predictions", "make-table", "readme-results", "training-curves"}
    assert set(cli.WRITES) == stages
    for stage in stages:
        _, sub = subparser(stage)
        path_args = {a.dest for a in sub._actions if a.type is Path}
        looks_written = {d for d in path_args if d.startswith("out") or d in ("checkpoints", "work_dir", "save_predictions", "samples", "numbers", "plot", "figure_out")}
        assert looks_written <= set(cli.WRITES[stage]), (stage, looks_written - set(cli.WRITES[stage]))


def test_a_stage_may_write_where_nothing_is_where_an_empty_folder_is_and_over_its_own_earlier_output(tmp_path):
    source = tmp_path / "raw"
    source.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    mark(earlier, "prepare")
    (earlier / "manifest.json").write_text("{}")
    for out in (tmp_path / "new", empty, earlier):
        outputs.check_outputs("prepare", {out: outputs.FOLDER}, [source])
    table = tmp_path / "metrics.json"
    table.write_text("{}")
    outputs.check_outputs("evaluate", {table: ".json"}, [source])
    with pytest.raises(DataError, match="made by `dginstyle prepare`"):
        outputs.check_outputs("generate", {earlier: outputs.FOLDER}, [source])
    with pytest.raises(DataError, match="other output"):
        outputs.check_outputs("finetune-unet", {tmp_path / "x": outputs.FOLDER, tmp_path / "x" / "ckpt": outputs.WORKSPACE})


def test_prepare_refuses_its_own_root_and_a_user_folder_then_replaces_its_own_output(tmp_path, capsys):
    """The audit's rows, end to end: `prepare --out mydocs` deleted mydocs/thesis.txt and
    `--out R` for the dataset's root deleted the raw dataset."""
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work\n")
    base = ["prepare", "minicity", "--domain", "game", "--splits", "train=2", "--size", "32x16", "--workers", "1"]
    assert cli.main(base + ["--out", str(docs)]) == 1
    assert "mydocs" in capsys.readouterr().err
    assert (docs / "thesis.txt").read_text() == "years of work\n"
    out = tmp_path / "prepared"
    assert cli.main(base + ["--out", str(out)]) == 0
    assert (out / STAGE_MARKER).read_text().strip() == "prepare"
    assert cli.main(base + ["--seed", "1", "--out", str(out)]) == 0  # its own earlier output: replaced
    assert "1" in (out / "manifest.json").read_text()
    # The prepared folder is an input of a real-format prepare, never its output.
    assert cli.main(["prepare", "cityscapes", "--root", str(out), "--out", str(out)]) == 1
    assert "is the input" in capsys.readouterr().err
    assert (out / "manifest.json").is_file()


def test_staging_and_replacing_never_delete_a_folder_the_stage_did_not_make(tmp_path):
    final = tmp_path / "out"
    users = tmp_path / ".out.partial"  # a user's folder that happens to have the staging name
    users.mkdir()
    (users / "notes.txt").write_text("mine\n")
    with pytest.raises(DataError, match="refusing to delete"):
        fresh_staging_dir(final, "prepare")
    assert (users / "notes.txt").is_file()
    (users / "notes.txt").unlink()
    staging = fresh_staging_dir(final, "prepare")  # an empty one is harmless
    final.mkdir()
    (final / "thesis.txt").write_text("mine\n")
    with pytest.raises(DataError, match="refusing to replace"):
        replace_dir(staging, final)
    assert (final / "thesis.txt").is_file() and staging.is_dir()


def test_checkpoint_folders_of_earlier_versions_are_resumed_but_a_user_folder_is_not(tmp_path):
    """Checkpoint folders made before folders carried a marker hold only what the stage writes
    there: they are taken (and marked); one file of the user's among them and it is refused."""
    legacy = tmp_path / "ck"
    (legacy / "step_00000002").mkdir(parents=True)
    outputs.check_outputs("finetune-unet", {legacy: outputs.WORKSPACE})
    outputs.claim_workspace(legacy, "finetune-unet")
    assert (legacy / STAGE_MARKER).read_text().strip() == "finetune-unet"
    seg = tmp_path / "work"
    seg.mkdir()
    for name in ("iter_800.pth", "last_checkpoint", "settings.json", "20261207_142147", "20261207_142147.py"):
        (seg / name).write_text("")
    outputs.check_outputs("train-segmentation", {seg: outputs.WORKSPACE})
    with pytest.raises(DataError, match="not made by"):
        outputs.check_outputs("finetune-unet", {seg: outputs.WORKSPACE})  # another stage's
    (seg / "thesis.txt").write_text("mine\n")
    with pytest.raises(DataError, match="not made by"):
        outputs.check_outputs("train-segmentation", {seg: outputs.WORKSPACE})
    with pytest.raises(DataError, match="not made by"):
        outputs.check_outputs("train-segmentation", {seg: outputs.FOLDER})
