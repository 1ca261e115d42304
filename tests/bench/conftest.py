# The micro LLaMA and the small real-text corpus of the trainer's tests.
from tests.train.conftest import corpus, model_dir  # noqa: F401

__all__ = ["corpus", "model_dir"]  # fixtures, used by name: pyflakes counts these as used
