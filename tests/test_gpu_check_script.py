"""``scripts/gpu_check.sh`` on a machine without a GPU: one line saying so, exit 0."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs the whole check")
def test_without_a_gpu_the_check_says_so_in_one_line_and_exits_0(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "report.md")], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check"]
    assert done.stderr == "" and not (tmp_path / "report.md").exists()
