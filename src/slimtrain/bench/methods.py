"""The methods a benchmark can run: every slimtrain recipe (through the trainer's own registry
path), the per-group AdamW baseline, and the other libraries' optimizers (``peers.py``).

Each method has a *centre* learning rate, the middle of its sweep: the lr its authors recommend
for the GaLore papers' LLaMA runs (1e-2 for the projected family). For AdamW and the AdamW-like
peers the centre is 2e-3 rather than torch's default 1e-3, because models this small take larger
steps (see benchmarks/README.md: with the centre at 1e-3 AdamW's best trial sat at the top of its
range). With ``--centers papers`` (the GPU protocol, on the papers' model sizes) every method starts
at its paper's lr instead (``paper_lr``): AdamW and the AdamW-like packages at 1e-3, the GaLore
papers' LLaMA-60M AdamW lr.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import optim
from ..errors import UserError
from ..userinput import did_you_mean
from .spec import MethodSpec

# (model, lr, weight_decay, rank, options) → optimizer
Build = Callable[[torch.nn.Module, float, float, int, dict[str, Any]], torch.optim.Optimizer]

ADAMW_CENTER_LR = 2e-3
ADAMW_PAPER_LR = 1e-3  # the GaLore/APOLLO papers' AdamW on LLaMA-60M … 1B
# Recipes whose sweep centre is not their signature's default lr: the AdamW family.
_CENTER_LR = {"adamw": ADAMW_CENTER_LR, "adamw8bit": ADAMW_CENTER_LR, "adamw4bit": ADAMW_CENTER_LR}


@dataclass(frozen=True)
class Method:
    name: str
    label: str                     # how tables and plots name it
    kind: str                      # "slimtrain", "baseline" (built here) or "peer" (another library)
    center_lr: float
    summary: str
    build: Build | None = None     # None: a registry recipe, trained as `slimtrain pretrain` trains it
    options: frozenset[str] = frozenset()  # what a built method accepts (a recipe: its Config)
    default_rank: int | None = None  # the rank it projects / adapts with, before the hidden/4 cap
    reference_of: str | None = None  # the recipe (spec) this package is the reference implementation of
    module: str | None = None        # the package it needs (import name) and how to install it
    pip: str | None = None
    paper_lr: float | None = None    # its paper's lr where the centre differs from it (None: the same)

    def unavailable(self) -> str | None:
        """Why this method cannot run here (its package is not installed), or None."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed (pip install {self.pip or self.module})"
        return None


def _recipe_method(name: str) -> Method:
    recipe = optim.recipe(name)
    rank = recipe.default("rank")
    return Method(name=name, label=f"slimtrain {name}", kind="slimtrain",
                  center_lr=_CENTER_LR.get(name, recipe.default("lr", ADAMW_CENTER_LR)),
                  summary=recipe.summary, default_rank=rank if isinstance(rank, int) else None,
                  paper_lr=recipe.default("lr", ADAMW_PAPER_LR))


def _registry() -> dict[str, Method]:
    from .peers import PEERS

    methods = {name: _recipe_method(name) for name in optim.available()}
    for method in PEERS:
        if method.name in methods:
            raise AssertionError(f"bench method {method.name!r} shadows a recipe")
        methods[method.name] = method
    return methods


def available() -> list[str]:
    return list(_registry())


def get(name: str) -> Method:
    methods = _registry()
    if name not in methods:
        raise UserError(f"--methods: unknown method {name!r}.{did_you_mean(name, methods)} "
                        f"Methods: {', '.join(methods)}")
    return methods[name]


def check_options(spec: MethodSpec, method: Method) -> None:
    """Options a built method does not take fail before anything runs (registry recipes are
    checked by building them on a meta-device model, in ``runner``)."""
    if method.build is None:
        return
    from .trials import TRAINER_OPTIONS

    unknown = [k for k in spec.option_dict() if k not in ("lr", *TRAINER_OPTIONS) and k not in method.options]
    if unknown:
        takes = ", ".join(sorted(method.options)) or "no options"
        raise UserError(f"--methods {spec.text}: {method.name} takes no option {unknown[0]!r} "
                        f"(it takes {takes}, and lr=, fused_backward=)")


def accepts(method: Method, key: str) -> bool:
    """Whether a method takes an option (a registry recipe: its Config says)."""
    if method.build is None:
        from ..memory.planner import recipe_accepts

        return recipe_accepts(method.name, key)
    return key in method.options


def center_lr(spec: MethodSpec, method: Method, centers: str = "bench", mode: str = "pretrain") -> float:
    """The centre of the method's sweep: ``lr=`` in its spec, else its ``--centers`` lr; when
    fine-tuning, what ``slimtrain finetune`` would use: the fine-tuning lr (3e-5), or a
    zeroth-order recipe's own (MeZO's 1e-6)."""
    default = method.paper_lr if centers == "papers" and method.paper_lr is not None else method.center_lr
    if mode == "finetune":
        from ..train.config import FINETUNE_DEFAULTS

        zeroth_order = method.build is None and optim.recipe(method.name).zeroth_order
        default = optim.recipe(method.name).default("lr") if zeroth_order else FINETUNE_DEFAULTS["lr"]
    lr = spec.option_dict().get("lr", default)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise UserError(f"--methods {spec.text}: lr must be a number, got {lr!r}")
    return float(lr)


def group(spec: MethodSpec) -> str:
    """The name reference implementations and recipes are paired by: a recipe's spec without its
    lr; for a package, the recipe configuration it implements (``reference_of``, e.g. galore-torch's
    GaLoreAdafactor is ``galore-adafactor:rest=adafactor``: Adafactor for every parameter) with the
    options given to it (galore-torch-adamw:rank=16 pairs with galore-adamw:rank=16)."""
    from .spec import parse_method

    method = get(spec.name)
    base = parse_method(method.reference_of or method.name)
    options = {**base.option_dict(), **{k: v for k, v in spec.options if k != "lr"}}
    return MethodSpec(base.name, tuple(sorted(options.items()))).text
