"""The README's "With Hugging Face Trainer / accelerate" snippets run as written: each one is
taken from the README, saved as the file its first line names and run by the command there."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
SECTION = "## With Hugging Face Trainer / accelerate"


def snippets() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_the_section_has_its_two_snippets():
    assert [s.splitlines()[0].split("—")[0].strip() for s in snippets()] == [
        "# python hf_trainer.py", "# torchrun --nproc-per-node 2 accelerate_train.py"]


@pytest.mark.parametrize("index", [0, 1], ids=["hf-trainer", "accelerate-ddp"])
def test_a_readme_snippet_runs(index, tmp_path):
    code = snippets()[index]
    command = shlex.split(code.splitlines()[0].lstrip("# ").split("—")[0])
    (tmp_path / command[-1]).write_text(code)
    if command[0] == "python":
        argv = [sys.executable, *command[1:]]
    else:  # torchrun
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *command[1:]]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    if index == 0:
        losses = [float(x) for x in re.findall(r"'loss': '([\d.]+)'", done.stdout)]
        assert len(losses) == 4 and losses[-1] < losses[0] - 1.0  # it learns
        assert (tmp_path / "hf-galore" / "checkpoint-40" / "optimizer.pt").exists()
    else:
        assert (tmp_path / "accelerate-state" / "optimizer.bin").exists()
