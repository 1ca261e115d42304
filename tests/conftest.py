import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


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
