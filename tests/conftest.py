"""Fixtures shared by several test files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps no example database and its caches outside the checkout (by default it
# writes .hypothesis/ into the working directory).
settings.register_profile("no_database", database=None)
settings.load_profile("no_database")
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="dginstyle-hypothesis-"))

REPO = Path(__file__).resolve().parent.parent
# What the suite must leave as it found it: a user's finished run (results/) and Snakemake's
# record of it (.snakemake/), so that running the tests never makes the next run redo work, and
# no example database of Hypothesis.
GUARDED = ("results", ".snakemake", ".hypothesis")


def checkout_state() -> dict[str, tuple]:
    """Every path under the guarded folders of the checkout with its type, size, mode and
    modification time: any write, creation or deletion changes it."""
    state = {}
    for top in GUARDED:
        for dirpath, dirnames, filenames in os.walk(REPO / top):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                info = path.lstat()
                state[path.relative_to(REPO).as_posix()] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return state


STATE_AT_START = pytest.StashKey[dict]()


def pytest_sessionstart(session):
    session.config.stash[STATE_AT_START] = checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(STATE_AT_START, None)
    if before is None:
        return
    after = checkout_state()
    changed = sorted(set(before) ^ set(after) | {k for k in set(before) & set(after) if before[k] != after[k]})
    if changed:
        print(f"\nthe test suite changed {len(changed)} path(s) in the checkout (tests must work in temporary folders): " + ", ".join(changed[:10]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A whole smoke DAG, run once for the tests of test_workflow.py and test_faults.py."""
    from test_workflow import SMOKE, snakemake

    root = tmp_path_factory.mktemp("smoke")
    result = snakemake("--cores", "2", "--configfile", str(SMOKE), cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root
