"""What every recipe is: a ``Config`` dataclass (one field per argument, a help text each, the
authors' defaults) and the param groups it makes of a model.

The CLI (``--optim-arg``, ``slimtrain optimizers NAME``), the memory planner and the benchmark read
``Config``; nothing inspects a signature. Fields are declared once: the pipeline's and the rules'
own fields are copied with ``like`` (same help, same checks, optionally another default), and a
config inherits the blocks it takes — ``Base`` (lr, weight decay), a rule's ``Hyper``,
``Projection``, ``Runtime`` — listed in that order by ``slimtrain optimizers NAME``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import Option, build, names_of, option, options_of
from ..groups import PipelineOptions
from ..optimizer import PipelineOptimizer
from ..rules import get_rule
from ..targets import build_param_groups, split_no_decay
from .rest import rest_keys

_SAME = object()


def like(source, name: str, default: Any = _SAME) -> Any:
    """A field with the help text and checks of ``source``'s field ``name`` (a dataclass: the
    pipeline's options, a rule's Hyper), optionally with another default."""
    f = {f.name: f for f in dataclasses.fields(source)}[name]
    return dataclasses.field(default=f.default if default is _SAME else default, metadata=f.metadata)


@dataclass
class Base:
    lr: float = like(PipelineOptions, "lr")
    weight_decay: float = like(PipelineOptions, "weight_decay")
    no_decay: Any = option(None, "regexes searched in parameter names for those that get no weight "
                           "decay (e.g. biases and norms, as transformers.Trainer does); None: "
                           "every parameter decays")


@dataclass
class Projection:
    """How target matrices are projected (GaLore's knobs, shared by the family)."""

    rank: int = like(PipelineOptions, "rank", 128)
    refresh_every: int = like(PipelineOptions, "refresh_every")
    scale: float = like(PipelineOptions, "scale", 0.25)
    targets: Any = option(None, "regexes searched in parameter names for the matrices to project; "
                          "None: attention and MLP weights (optim.DEFAULT_TARGETS)")
    rest: str = option("adamw", "rule of the parameters outside targets (embeddings, head, norms): "
                       "adamw, adamw8bit, adamw4bit, adafactor (so.rest_names())")
    side: str = like(PipelineOptions, "side")
    stagger: bool = like(PipelineOptions, "stagger")
    power_iters: int = like(PipelineOptions, "power_iters")
    oversample: int = like(PipelineOptions, "oversample")


@dataclass
class Subspace:
    """The selector and switch policy of recipes that let the user choose them."""

    basis: str = like(PipelineOptions, "basis")
    switch: str = like(PipelineOptions, "switch")


@dataclass
class Spike:
    """The spike stages (``optim/stages.py``: SPAM's resets, warm-up and spike clipping,
    Stable-SPAM's AdaClip and AdaGN); every recipe takes them, all off by default."""

    reset_every: int | None = like(PipelineOptions, "reset_every")
    reset_warmup: int = like(PipelineOptions, "reset_warmup")
    reset_count: bool = like(PipelineOptions, "reset_count")
    spike_threshold: float | None = like(PipelineOptions, "spike_threshold")
    spike_after: int = like(PipelineOptions, "spike_after")
    clip_decay: float | None = like(PipelineOptions, "clip_decay")
    norm_decays: tuple | None = like(PipelineOptions, "norm_decays")
    norm_eps: float = like(PipelineOptions, "norm_eps")


@dataclass
class Runtime(Spike):
    """How the step runs and stores its state (and the spike stages); every recipe takes these."""

    foreach: bool = like(PipelineOptions, "foreach")
    fused: bool | None = like(PipelineOptions, "fused")
    check_finite: bool = like(PipelineOptions, "check_finite")
    state_bits: int | str | None = like(PipelineOptions, "state_bits")
    fp8_expansion: bool = like(PipelineOptions, "fp8_expansion")
    quantize_min_numel: int = like(PipelineOptions, "quantize_min_numel")
    stochastic_rounding: bool = like(PipelineOptions, "stochastic_rounding")


RUNTIME_KEYS = names_of(Runtime)
_PROJECTION_KEYS = ("side", "stagger", "power_iters", "oversample")


class Recipe(PipelineOptimizer):
    """Base of every recipe: ``Recipe(model_or_params, lr=None, **options)`` builds ``Config``
    from the options (an unknown one is a TypeError naming the close ones) and the groups from it.
    The built configuration is ``optimizer.config``."""

    Config: type = Base
    #: the inner rule of the recipe (``rule_of`` may choose it from the config)
    rule = "adam"
    #: how the state of one parameter is made up (``slimtrain optimizers`` prints it)
    state_formula = ""

    def __init__(self, model_or_params, lr: float | None = None, **options):
        if lr is not None:
            options["lr"] = lr
        self.config = build(self.Config, options, type(self).__name__)
        self.check(self.config)
        groups, defaults = self.param_groups_for(model_or_params, self.config)
        PipelineOptimizer.__init__(self, groups, defaults)

    @classmethod
    def options(cls) -> list[Option]:
        return options_of(cls.Config)

    def check(self, config) -> None:
        """Checks across fields (each field's own bounds are checked by ``config.build``)."""

    def rule_of(self, config) -> str:
        return self.rule

    def shared_keys(self, config) -> dict[str, Any]:
        """Group keys every group of the recipe gets as defaults: lr, weight decay, the rule and
        its hyperparameters, the runtime options."""
        rule = self.rule_of(config)
        hyper = {k: getattr(config, k) for k in names_of(get_rule(rule).Hyper) if hasattr(config, k)}
        return {"rule": rule, "lr": config.lr, "weight_decay": config.weight_decay, **hyper,
                **{k: getattr(config, k) for k in RUNTIME_KEYS}}

    def param_groups_for(self, model_or_params, config) -> tuple[list[dict], dict[str, Any]]:
        """(param groups, optimizer defaults). Unprojected recipes: one group."""
        groups = build_param_groups(model_or_params, projection=None)
        return split_no_decay(groups, config.no_decay), self.shared_keys(config)


class ProjectedRecipe(Recipe):
    """Base of the recipes that project their target matrices. ``parts(config)`` names the
    pipeline's parts the recipe uses (selector, switch, back-map, residual, limiter, …)."""

    def parts(self, config) -> dict[str, Any]:
        return {k: getattr(config, k) for k in ("basis", "switch") if hasattr(config, k)}

    def param_groups_for(self, model_or_params, config):
        # the targets get rank (or density), refresh_every and scale; the rest is a default of
        # every group, so galore-style groups written by hand (which carry just rank /
        # update_proj_gap / scale / proj_type) get it too
        rule = self.rule_of(config)
        density = getattr(config, "density", None)
        projected = dict(rank=config.rank, density=None if config.rank is not None else density,
                         refresh_every=config.refresh_every, scale=config.scale)
        defaults = {**self.shared_keys(config), **{k: getattr(config, k) for k in _PROJECTION_KEYS},
                    **self.parts(config), "refresh_every": config.refresh_every,
                    "scale": config.scale}
        groups = build_param_groups(model_or_params, projection=projected, targets=config.targets,
                                    rest=rest_keys(config.rest, rule))
        return split_no_decay(groups, config.no_decay), defaults


def rest_at_lr(groups: list[dict], defaults: dict[str, Any], rule: str, lr: float) -> None:
    """A matrix-only recipe's AdamW parts — its rest group (another rule) and the fallback of its
    non-matrix targets — train at ``lr`` (Muon's and COSMOS's ``adamw_lr``)."""
    for group in groups:
        if group.get("rule", rule) != rule:
            group["lr"] = lr
    defaults["fallback"] = {**(defaults.get("fallback") or {}), "lr": lr}


@dataclass
class OptionalProjection(Projection):
    """Projection for the recipes of one rule, off unless ``rank`` is given: ``rank=128`` makes
    Lion, AdaBelief, Adan, … run GaLore-style in a subspace of the target matrices."""

    rank: int | None = like(PipelineOptions, "rank", None)


class RuleRecipe(ProjectedRecipe):
    """A recipe that runs one rule on every parameter — or, with ``rank``, GaLore-style on the
    target matrices (the rest with ``rest``)."""

    def param_groups_for(self, model_or_params, config):
        if config.rank is None:
            if config.targets is not None:
                raise ValueError("targets= chooses the matrices to project: give rank= too (or "
                                 "drop targets=)")
            return Recipe.param_groups_for(self, model_or_params, config)
        return super().param_groups_for(model_or_params, config)
