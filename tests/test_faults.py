"""Issue 7, faults on the real DAG: SIGKILL inside every long stage, rerun, same artifacts.

One smoke DAG is driven to completion through a series of killed Snakemake invocations. In
each, as soon as a job of the next stage is running, it is SIGKILLed at a random point of its
run time (drawn from the uninterrupted run's benchmark of that rule). Half of the kills take
only the job's process (Snakemake survives, records the failure and stops); the other half
kill Snakemake's whole process group at once, as when a node dies: the rerun must then redo
the jobs Snakemake had marked incomplete (the default profile's `rerun-incomplete`), after
`snakemake --unlock` (the killed Snakemake's lock on the folder outlives it).

The final artifacts are compared with those of an uninterrupted run of the same config
(`smoke_run`, tests/conftest.py): the data artifacts (prepared datasets, plans, generated
images and labels) byte for byte, the metrics exactly. Both hold because every training stage
resumes from a checkpoint that holds its RNG states, on the same CPU.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_workflow import REPO, SMOKE, _fingerprints

# (CLI stage, rule) in DAG order: every stage that runs longer than seconds at paper scale.
STAGES = (
    ("prepare", "prepare"),
    ("pretrain-prior", "pretrain_prior"),
    ("finetune-unet", "finetune_unet"),
    ("train-controlnet", "train_controlnet"),
    ("generate", "generate"),
    ("train-segmentation", "train_segmentation"),
    ("evaluate", "evaluate"),
)


def _start_snakemake(cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2", "--configfile", str(SMOKE), *extra]
    # Its own process group, so that "the node dies" can take Snakemake and its jobs at once.
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _job_process(stage: str, cwd: Path) -> int | None:
    """The pid of a running `python -m dginstyle <stage>` job whose working directory is `cwd`
    (other tests' processes on this machine are left alone)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"dginstyle" in argv and stage.encode() in argv and b"-m" in argv and Path(os.readlink(entry / "cwd")) == cwd:
                return int(entry.name)
        except OSError:  # the process ended while we looked
            continue
    return None


def _shortest_run_time(results: Path, rule: str) -> float:
    """The shortest wall time of `rule`'s jobs in a run's Snakemake benchmark files."""
    rules = results / "benchmarks" / "rules"
    files = [*rules.glob(f"{rule}/**/*.tsv"), *rules.glob(f"{rule}.tsv")]  # a job with wildcards, or without
    times = [float(row["s"]) for tsv in files for row in csv.DictReader(tsv.open(), delimiter="\t")]
    assert times, f"no benchmark of rule {rule}"
    return min(times)


def _kill_during(stage: str, delay: float, whole_group: bool, cwd: Path) -> dict:
    """One Snakemake invocation in `cwd`, killed `delay` seconds after a job of `stage` starts."""
    proc = _start_snakemake(cwd)
    deadline = time.monotonic() + 600
    pid = None
    while pid is None and proc.poll() is None and time.monotonic() < deadline:
        pid = _job_process(stage, cwd)
        time.sleep(0.02)
    assert pid is not None, f"no {stage} job ran; snakemake said:\n{proc.communicate()[0][-3000:]}"
    time.sleep(delay)
    alive = Path(f"/proc/{pid}").exists()
    try:
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        alive = False
    if not alive and not whole_group and proc.poll() is None:
        # The job had ended before the kill (the machine ran faster than in the reference run):
        # stop this invocation too, or it runs the rest of the DAG and leaves later stages
        # nothing to kill. It then counts as a whole-group kill.
        os.killpg(proc.pid, signal.SIGKILL)
        whole_group = True
    output = proc.communicate(timeout=600)[0]
    if whole_group:
        assert proc.returncode == -signal.SIGKILL
        # What a user does after a dead node: Snakemake's lock on the folder outlives it.
        unlock = _start_snakemake(cwd, "--unlock")
        assert unlock.wait(timeout=300) == 0, unlock.communicate()[0][-3000:]
    elif alive:  # a job failed: Snakemake stops and says so
        assert proc.returncode != 0 and "Error in rule" in output, output[-3000:]
    return {"stage": stage, "delay": round(delay, 2), "whole_group": whole_group, "job_alive_at_kill": alive}


@pytest.mark.slow
def test_sigkill_in_every_long_stage_then_rerun_equals_an_uninterrupted_run(smoke_run, tmp_path):
    reference = smoke_run / "results"
    killed = tmp_path / "killed"
    killed.mkdir()
    rng = random.Random(7)
    kills = []
    for i, (stage, rule) in enumerate(STAGES):
        # A random point of the job's run time; at most 90% of the shortest job of that rule so
        # that the kill lands while it runs (this process is not the only one on the machine).
        delay = rng.uniform(0.0, 0.9 * _shortest_run_time(reference, rule))
        kills.append(_kill_during(stage, delay, whole_group=i % 2 == 1, cwd=killed))
    # Most kills must have hit a running job, or the test proves nothing.
    assert sum(k["job_alive_at_kill"] for k in kills) >= len(STAGES) - 1, kills

    final = _start_snakemake(killed)
    output = final.communicate(timeout=1800)[0]  # the rest of a smoke run; only a hang should stop it
    assert final.returncode == 0, output[-3000:]

    expected, got = _fingerprints(reference), _fingerprints(killed / "results")
    assert len(expected) > 100
    differing = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    assert not differing, (kills, differing[:10])
    # Every table holds the same numbers (its comment lines name dates and the metrics files'
    # hashes, which differ by their timing keys).
    for table in (reference / "tables").glob("*.csv"):
        again = killed / "results" / "tables" / table.name
        assert _data_lines(again) == _data_lines(table) and len(_data_lines(table)) > 1


def _data_lines(csv_table: Path) -> list[str]:
    return [line for line in csv_table.read_text().splitlines() if not line.startswith("#")]


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A function that mounts a tmpfs of a given size: a real file system that runs out of
    space (mounting needs root; the test is skipped without it)."""
    mounted = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; return it (delete it to free the space)."""
    ballast = disk / "ballast"
    with open(ballast, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return ballast


def _tree_digests(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dginstyle(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dginstyle", *argv], env=env, capture_output=True, text=True, timeout=300)


def _one_line_space_error(stderr: str, stage: str, under: Path) -> str:
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"dginstyle {stage}: error: out of disk space: {under}"), stderr[-3000:]
    assert "No space left on device" in line and "Traceback" not in stderr, stderr[-3000:]
    return line


def test_prepare_on_a_full_disk_fails_in_one_line_and_keeps_the_previous_dataset(small_disk):
    disk = small_disk("400k")
    out = disk / "ds"
    argv = ("prepare", "minicity", "--out", str(out), "--domain", "game", "--size", "64x32", "--workers", "2")
    assert _dginstyle(*argv, "--splits", "train=4").returncode == 0
    before = _tree_digests(out)
    # The same dataset with 100x the pairs does not fit.
    result = _dginstyle(*argv, "--splits", "train=400")
    assert result.returncode == 1
    _one_line_space_error(result.stderr, "prepare", disk / ".ds.partial")
    assert _tree_digests(out) == before  # the previous complete dataset, byte for byte
    assert sorted(p.name for p in disk.iterdir()) == ["ds"]  # no staging folder left


def test_generate_on_a_full_disk_fails_in_one_line_then_resumes_once_space_is_free(small_disk, tmp_path):
    from dginstyle.diffusion import generate
    from test_mrlf import _files, _shard_kwargs, build_world, start_generate_until_pairs

    (tmp_path / "world").mkdir()
    generator_world = build_world(tmp_path / "world")

    reference = tmp_path / "reference" / "0"
    kwargs = _shard_kwargs(generator_world, reference, stride=2, steps=4)
    generate.generate_shard(**kwargs)

    disk = small_disk("4m")
    out = disk / "gen" / "0"
    partial = generate.partial_dir(out)
    proc = start_generate_until_pairs(generator_world, out, 2)
    ballast = _fill(disk)  # the disk fills up while the shard is half written
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1
    _one_line_space_error(stderr, "generate", partial)
    assert not out.exists()  # an unfinished shard is never taken as complete
    committed = (partial / "pairs.jsonl").read_text().count("\n")
    assert 2 <= committed < 6

    ballast.unlink()  # space again: the rerun keeps the committed pairs and makes the rest
    generate.generate_shard(**{**kwargs, "out": out})
    assert _files(out) == _files(reference)



def _leave_free(ballast: Path, free: int) -> None:
    """Give `free` bytes of a filled disk back: enough for logs and records, not a checkpoint."""
    os.truncate(ballast, ballast.stat().st_size - free)


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".partial")))


def test_train_segmentation_on_a_full_disk_fails_in_one_line_then_resumes(small_disk, tmp_path):
    import json

    from dginstyle.compat import load_trusted_checkpoint
    from dginstyle.data.prepare import prepare

    prepare("minicity", tmp_path / "source", domain="game", splits="train=4", seed=0, size="64x32", rcs_min_pixels=3, workers=1)
    disk = small_disk("32m")
    work, run = disk / "work", tmp_path / "run"
    argv = (
        "train-segmentation", "--source", str(tmp_path / "source"), "--out", str(run), "--work-dir", str(work),
        "--model", "daformer_tiny", "--batch-size", "2", "--crop-size", "32", "--threads", "1",
        "--checkpoint-interval", "2", "--log-interval", "1",
    )  # fmt: skip
    first = _dginstyle(*argv, "--iterations", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = work / "iter_2.pth"
    assert checkpoint.stat().st_size > 512 * 1024  # more than the space left below
    before = checkpoint.read_bytes()

    ballast = _fill(disk)
    _leave_free(ballast, 256 * 1024)
    result = _dginstyle(*argv, "--iterations", "4")  # resumes at 2; the checkpoint of iteration 4 does not fit
    assert result.returncode == 1
    _one_line_space_error(result.stderr, "train-segmentation", work / "iter_4.pth")
    assert not (work / "iter_4.pth").exists() and not _hidden_leftovers(work)  # nothing truncated under any name
    assert (work / "last_checkpoint").read_text() == str(checkpoint) and checkpoint.read_bytes() == before
    assert load_trusted_checkpoint(checkpoint, work)["meta"]["iter"] == 2

    ballast.unlink()  # space again: the rerun resumes from iteration 2
    again = _dginstyle(*argv, "--iterations", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "metadata.json").read_text())["resumed_at_iteration"] == 2
    assert (work / "last_checkpoint").read_text() == str(work / "iter_4.pth") and (work / "iter_4.pth").is_file()


def test_finetune_unet_on_a_full_disk_fails_in_one_line_then_resumes(small_disk, tmp_path):
    """training.save_checkpoint (finetune-unet, train-controlnet, pretrain-prior)."""
    import json

    from dginstyle.data.minicity import prepare_minicity
    from dginstyle.diffusion import models
    from dginstyle.diffusion.training import checkpoint_steps
    from dginstyle.labels import CLASSES
    from test_finetune import CROP, SPEC

    components = models.tiny_components(SPEC, [" ".join(CLASSES), "a city street scene"], CROP, tmp_path / "tok", seed=0)
    models.save_pipeline(tmp_path / "prior", components, {"kind": "prior", "steps": 0})
    prepare_minicity(tmp_path / "src", "game", {"train": 4}, 0, 64, 32, 1, None, 12)
    disk = small_disk("32m")
    ck, out = disk / "ck", tmp_path / "us"
    argv = (
        "finetune-unet", "--prior", str(tmp_path / "prior"), "--source", str(tmp_path / "src"), "--out", str(out),
        "--checkpoints", str(ck), "--crop-size", str(CROP), "--learning-rate", "1e-3", "--checkpoint-every", "2",
        "--device", "cpu", "--mixed-precision", "no",
    )  # fmt: skip
    first = _dginstyle(*argv, "--steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    step2 = ck / "step_00000002"
    assert sum(p.stat().st_size for p in step2.iterdir()) > 512 * 1024  # more than the space left below
    before = _tree_digests(step2)

    ballast = _fill(disk)
    _leave_free(ballast, 256 * 1024)
    result = _dginstyle(*argv, "--steps", "4")
    assert result.returncode == 1
    line = _one_line_space_error(result.stderr, "finetune-unet", ck / ".step_00000004.partial")
    assert line.split(": No space left on device")[0].rsplit("/", 1)[-1] in ("model.safetensors", "optimizer.optim.pt", "rng.pt", "state.json")
    assert checkpoint_steps(ck) == [2] and _tree_digests(step2) == before
    assert not _hidden_leftovers(ck)  # the half-written step was removed, its space given back

    ballast.unlink()
    again = _dginstyle(*argv, "--steps", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / models.METADATA).read_text())["resumed_from"] == [2]
    assert checkpoint_steps(ck) == [2, 4]
