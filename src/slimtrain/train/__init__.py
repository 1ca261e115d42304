"""The trainer: settings (``config``), building a run (``setup``), the loop (``loop``), checkpoints
(``checkpoint``), metrics and plots (``metrics``), and one CLI invocation (``session``)."""

from .config import TrainConfig
from .loop import Interrupted, evaluate, train, train_step
from .watch import Diverged
from .session import run
from .setup import Run, prepare

__all__ = ["TrainConfig", "Diverged", "Interrupted", "evaluate", "train", "train_step", "run", "Run",
           "prepare"]
