"""slimtrain optimizers in ``transformers.Trainer``.

``optimizer(name, args, **options)`` is what ``Trainer(optimizer_cls_and_kwargs=…)`` takes: the
factory form of transformers ≥ 5, so the recipe is built on the Trainer's own model and picks its
targets by parameter name. From ``TrainingArguments`` it takes what transformers' GaLore handler
takes: ``learning_rate``, ``weight_decay`` (biases and norms exempt, as ``Trainer`` decides),
``optim_target_modules`` (linear modules: names, a regex, or ``"all-linear"``) and ``optim_args``
(``"rank=64,update_proj_gap=200,scale=0.25,proj_type=std"``, galore-torch's keys or ours);
options given to ``optimizer`` win over them.

``Trainer(..., fused_backward=True)`` runs layer-wise updates inside ``Trainer.train()``: with
gradient accumulation, ``max_grad_norm`` (the previous step's norm scales this step:
``slimtrain.optim.layerwise``), DDP through accelerate, FSDP2, and checkpoints through the
Trainer's own ``optimizer.pt`` — transformers' own ``*_layerwise`` optimizers refuse accumulation
and DDP, and save only a placeholder optimizer."""

from __future__ import annotations

import re
from typing import Any

import torch
import transformers

from .. import optim as so
from ..optim.config import build
from ..optim.targets import translate_galore_keys
from ..userinput import typed


class OptimizerFactory:
    """What ``Trainer`` calls as ``OptimizerFactory()(model, **kwargs)`` (transformers' factory
    protocol: anything that is not an Optimizer class)."""

    def __call__(self, model: torch.nn.Module, *, recipe: str, options: dict[str, Any],
                 training_args=None) -> torch.optim.Optimizer:
        merged = {} if training_args is None else options_from_training_args(recipe, training_args,
                                                                             model)
        return so.create(recipe, model, **{**merged, **options})


def optimizer(name: str, args: transformers.TrainingArguments | None = None,
              **options) -> tuple[type, dict[str, Any]]:
    """``Trainer(optimizer_cls_and_kwargs=optimizer("galore-adamw", args, rank=64))``.

    ``args``: the Trainer's ``TrainingArguments``, read as the module docstring says (this
    module's ``Trainer`` passes its own when ``args`` is left out). Unknown names and bad values
    are refused here, before training starts."""
    recipe = so.recipe(name)
    if recipe.config is not None:
        build(recipe.config, options, recipe.name)  # refuse bad options now, not at train()
    return OptimizerFactory, {"recipe": recipe.name, "options": options, "training_args": args}


def parse_optim_args(text: str | None) -> dict[str, Any]:
    """``"rank=64,scale=0.25"`` → {"rank": 64, "scale": 0.25}, galore-torch's keys translated."""
    if not text:
        return {}
    out = {}
    for item in text.replace(" ", "").split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"optim_args item {item!r} is not KEY=VALUE; write e.g. "
                             "optim_args='rank=64,scale=0.25'")
        out[key] = typed(value)
    return translate_galore_keys(out)


def options_from_training_args(name: str, args, model: torch.nn.Module) -> dict[str, Any]:
    """The recipe's options that ``args`` sets (learning rate, weight decay and its exemptions,
    target modules, ``optim_args``)."""
    recipe = so.recipe(name)
    out: dict[str, Any] = {"lr": args.learning_rate}
    if args.weight_decay:
        out["weight_decay"] = args.weight_decay
        decay = set(transformers.Trainer.get_decay_parameter_names(None, model))  # HF's own rule
        exempt = [n for n, p in model.named_parameters() if p.requires_grad and n not in decay]
        if exempt:
            out["no_decay"] = tuple(f"^{re.escape(n)}$" for n in exempt)
    if args.optim_target_modules is not None:
        if not recipe.accepts("targets"):
            raise ValueError(f"optim_target_modules is set but {name} projects nothing; drop it or "
                             "choose a projected recipe (galore-adamw, apollo, …)")
        out["targets"] = target_modules(model, args.optim_target_modules)
    out.update(parse_optim_args(args.optim_args))
    unknown = [k for k in out if not recipe.accepts(k)]
    if unknown:
        raise ValueError(f"optim_args sets {unknown[0]!r}, which {name} does not take; see "
                         f"`slimtrain optimizers {name}`")
    return out


def target_modules(model: torch.nn.Module, spec) -> tuple[str, ...]:
    """``optim_target_modules`` as transformers reads it for GaLore (linear modules whose name is
    in the list, contains an entry, or fully matches a regex; ``"all-linear"``: every linear
    layer) → regexes of their weights' exact names."""
    from transformers.trainer_utils import check_target_module_exists

    if not isinstance(spec, (list, tuple, str)):
        raise TypeError(f"optim_target_modules must be a list of names, a regex or 'all-linear', "
                        f"got {spec!r}")
    all_linear = isinstance(spec, str) and spec.replace("_", "-") == "all-linear"
    spec = list(spec) if isinstance(spec, tuple) else spec
    names = [f"{name}.weight" for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear)
             and (all_linear or check_target_module_exists(spec, name))]
    if not names:
        raise ValueError(f"optim_target_modules={spec!r} matches no linear module of the model; "
                         "name modules as model.named_modules() does, or use 'all-linear'")
    return tuple(f"^{re.escape(n)}$" for n in names)


class Trainer(transformers.Trainer):
    """``transformers.Trainer`` with ``fused_backward=True``: slimtrain's layer-wise updates (the
    optimizer must be a slimtrain one: ``optimizer_cls_and_kwargs=optimizer(...)`` or
    ``optimizers=(so.create(...), None)``). ``fused_options``: ``accumulate`` / ``refresh_from``
    of ``slimtrain.optim.fuse_backward``. Without ``fused_backward`` it is the plain Trainer, save
    that ``optimizer(name)`` without ``args`` reads this Trainer's arguments."""

    def __init__(self, *args, fused_backward: bool = False,
                 fused_options: dict[str, Any] | None = None, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if fused_backward and training_args is not None \
                and training_args.ddp_find_unused_parameters is None:
            # DDP's default here would search for unused parameters, which layer-wise updates
            # under DDP cannot allow (a parameter would count its micro-batches differently)
            training_args.ddp_find_unused_parameters = False
        super().__init__(*args, **kwargs)
        self.fused_backward = fused_backward
        self.fused_options = dict(fused_options or {})
        self.fused = None  # the FusedBackward handle, from the first training step on
        if fused_backward:
            if self.args.fp16:
                raise ValueError("fused_backward cannot run with fp16 loss scaling (the update "
                                 "happens before the scaler could unscale); use bf16=True")
            if self.is_deepspeed_enabled:
                raise ValueError("fused_backward does not run under DeepSpeed; use DDP or FSDP2")
        factory = self.optimizer_cls_and_kwargs
        if factory is not None and factory[0] is OptimizerFactory \
                and factory[1].get("training_args") is None:
            self.optimizer_cls_and_kwargs = (OptimizerFactory,
                                             {**factory[1], "training_args": self.args})

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.fused_backward and self.fused is None:
            self.fused = self._fuse(model)
        return super().training_step(model, inputs, num_items_in_batch)

    def _fuse(self, model):
        opt = getattr(self.optimizer, "optimizer", self.optimizer)  # under accelerate's wrapper
        if not isinstance(opt, so.PipelineOptimizer):
            raise ValueError(f"fused_backward needs a slimtrain optimizer, got "
                             f"{type(opt).__name__}; pass optimizer_cls_and_kwargs="
                             "slimtrain.integrations.hf.optimizer(name)")
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm and \
            self.args.max_grad_norm > 0 else None
        return so.fuse_backward(model, opt, grad_accum=self.args.gradient_accumulation_steps,
                                max_grad_norm=max_norm, **self.fused_options)

    # the update ran inside backward and freed each gradient: nothing is left to clip or
    # measure here; the handle clipped by the previous norm, and logs this step's norm below
    def _clip_grad_norm(self, model):
        return None if self.fused is not None else super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        return None if self.fused is not None else super()._get_grad_norm(model, grad_norm)

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        if self.fused is not None:
            grad_norm = self.fused.grad_norm  # the step's unclipped norm, known after step()
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)


__all__ = ["OptimizerFactory", "Trainer", "optimizer", "options_from_training_args",
           "parse_optim_args", "target_modules"]
