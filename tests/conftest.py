import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The machine is shared: one thread per process is steadier (and oversubscribed OpenMP threads
    slow everyone down). Child processes inherit OMP_NUM_THREADS."""
    old_threads, old_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = old_env


@pytest.fixture(scope="session", autouse=True)
def _slimtrain_cache(tmp_path_factory):
    """Corpora, tokenizers and token files built by tests go to a temporary cache."""
    old = os.environ.get("SLIMTRAIN_CACHE")
    os.environ["SLIMTRAIN_CACHE"] = str(tmp_path_factory.mktemp("slimtrain-cache"))
    yield
    if old is None:
        os.environ.pop("SLIMTRAIN_CACHE")
    else:
        os.environ["SLIMTRAIN_CACHE"] = old
