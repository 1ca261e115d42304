"""The command line prints slimtrain's output alone: the peer libraries' known start-up logs
(torchao's and bitsandbytes' "Failed to load …", torch's pytree Enum deprecation, which appear
because transformers imports those peers when they are installed) are hidden, and nothing else."""

import logging
import os
import subprocess
import sys
import warnings

from slimtrain.peer_logs import KNOWN, quiet_peer_logs
from tests.train.conftest import base_args

NOISE = ("Failed to load", "is an Enum subclass", "_pytree")


def test_only_the_known_messages_of_the_known_loggers_are_dropped(caplog):
    caplog.set_level(logging.INFO)
    with quiet_peer_logs():
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please …", "no kernels")
        logging.getLogger("torch.utils._pytree").warning(
            "%s is an Enum subclass and is now natively supported by torch.compile", "E")
        logging.getLogger("torchao").warning("a real torchao problem")          # kept: other text
        logging.getLogger("elsewhere").warning("Failed to load my own file")     # kept: other logger
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("slimtrain's own warning")                           # kept: not logging
    logging.getLogger("torchao").warning("Failed to load after the CLI")        # kept: filter gone
    assert [r.getMessage() for r in caplog.records] == [
        "a real torchao problem", "Failed to load my own file", "Failed to load after the CLI"]
    assert [str(w.message) for w in caught] == ["slimtrain's own warning"]
    assert all(not logging.getLogger(name).filters for name in KNOWN)


def run_cli(args, **env):
    return subprocess.run([sys.executable, "-m", "slimtrain", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def test_a_first_run_prints_no_library_noise(model_dir, corpus, tmp_path):
    """A fresh process (the peers are imported for the first time in it)."""
    quiet = run_cli(["pretrain", *base_args(model_dir, corpus, tmp_path / "quiet", steps=2)])
    assert quiet.returncode == 0, quiet.stderr
    output = quiet.stdout + quiet.stderr
    assert "validation perplexity" in output
    assert not [line for line in output.splitlines() if any(n in line for n in NOISE)], output
    # where this machine's peers do log them, the switch shows them again (so the test above
    # hid something real)
    loud = run_cli(["pretrain", *base_args(model_dir, corpus, tmp_path / "loud", steps=2)],
                   SLIMTRAIN_PEER_LOGS="1")
    assert loud.returncode == 0, loud.stderr
    if _torchao_logs_on_import():
        assert "Failed to load" in loud.stdout + loud.stderr, loud.stderr


def _torchao_logs_on_import():
    """Whether torchao, imported alone here, logs about native libraries it cannot load (it does
    on a CPU machine; not where none is installed, nor where all its libraries load)."""
    probe = subprocess.run([sys.executable, "-c", "import torchao"], capture_output=True, text=True,
                           timeout=120)
    return "Failed to load" in probe.stdout + probe.stderr
