"""slimtrain.optim.zo: zeroth-order fine-tuning — MeZO and the ZO-Bench family — with the memory
of inference: no gradient, no activation kept for backward, for most recipes no state.

Not the gradient pipeline: a ``ZOOptimizer`` estimates the gradient from forward passes
(``optimizer.py``, directions regenerated from seeds in ``noise.py``), and its stateful variants
hand that estimate to the pipeline's rules. Recipes (``recipes.py``) are in the one registry::

    opt = slimtrain.optim.create("mezo", model, lr=1e-6, eps=1e-3, q=1)
    opt.step(lambda: model(**batch).loss)       # two forward passes, no backward
    log = opt.replay_log()                       # kilobytes: rebuilds the weights (replay.py)
"""

from .optimizer import ZOOptimizer
from .recipes import (RECIPES, MeZO, SparseMeZO, ZOAdam, ZOSGDConservative, ZOSGDMomentum,
                      ZOSGDSign)
from .replay import load_log, replay, save_log

__all__ = ["RECIPES", "MeZO", "SparseMeZO", "ZOAdam", "ZOOptimizer", "ZOSGDConservative",
           "ZOSGDMomentum", "ZOSGDSign", "load_log", "replay", "save_log"]
