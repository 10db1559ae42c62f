"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A whole smoke DAG, run once for the tests of test_workflow.py and test_faults.py."""
    from test_workflow import SMOKE, snakemake

    root = tmp_path_factory.mktemp("smoke")
    result = snakemake("--cores", "2", "--configfile", str(SMOKE), cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root
