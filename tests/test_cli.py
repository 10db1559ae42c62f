"""The `dginstyle` command: every stage answers --help; light stages never import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dginstyle.cli import HEAVY_STAGES, build_parser

LIGHT_STAGES = ["prepare", "contact-sheet", "evaluate-predictions", "make-table", "readme-results", "training-curves"]


@pytest.mark.parametrize("stage", LIGHT_STAGES + sorted(HEAVY_STAGES))
def test_every_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser([stage, "--help"]).parse_args([stage, "--help"])
    assert exit_info.value.code == 0
    assert "usage: dginstyle " + stage in capsys.readouterr().out


def test_top_level_help_lists_every_stage():
    result = subprocess.run([sys.executable, "-m", "dginstyle", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for stage in LIGHT_STAGES + list(HEAVY_STAGES):
        assert stage in result.stdout


def test_light_stages_do_not_import_torch():
    """`prepare` runs in envs/data.yaml, which has no torch: building its parser must not need it."""
    code = "import sys; from dginstyle.cli import build_parser; build_parser(['prepare', '--help']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
