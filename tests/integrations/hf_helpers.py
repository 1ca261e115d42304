"""A tiny LLaMA trained by a real ``transformers.Trainer`` on real text (standard-library bytes)."""

from __future__ import annotations

import warnings

import datasets
import torch
import transformers

from slimtrain.integrations import hf
from tests.helpers import stdlib_bytes, tiny_llama

SEQ = 32


def text_dataset(n_sequences: int = 64) -> datasets.Dataset:
    blocks = stdlib_bytes(n_sequences * SEQ).view(n_sequences, SEQ).tolist()
    return datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def training_args(out, **overrides) -> transformers.TrainingArguments:
    settings = dict(max_steps=8, per_device_train_batch_size=2, learning_rate=3e-3, save_steps=4,
                    logging_steps=1, report_to=[], use_cpu=True, seed=0, max_grad_norm=0.0,
                    lr_scheduler_type="cosine", warmup_steps=2, disable_tqdm=True,
                    optim_target_modules=["self_attn", "mlp"],
                    optim_args="rank=8,update_proj_gap=3")  # refreshes on both sides of a resume
    settings.update(overrides)
    return transformers.TrainingArguments(str(out), **settings)


def trainer(out, recipe="galore-adamw", *, cls=hf.Trainer, model=None, optim_args=None,
            options=None, **overrides):
    """A Trainer whose optimizer is ``hf.optimizer(recipe, args, **options)``; ``cls`` may be the
    plain ``transformers.Trainer`` (its args are given to ``hf.optimizer`` then) or ``hf.Trainer``
    (with its extra keywords: ``fused_backward`` …)."""
    fused = {k: overrides.pop(k) for k in ("fused_backward", "fused_options") if k in overrides}
    if optim_args is not None:
        overrides["optim_args"] = optim_args
    args = training_args(out, **overrides)
    if recipe in ("adamw", "adamw8bit", "adamw4bit"):
        args.optim_target_modules, args.optim_args = None, None  # nothing to project
    return cls(model=model if model is not None else tiny_llama(), args=args,
               train_dataset=text_dataset(), optimizer_cls_and_kwargs=hf.optimizer(
                   recipe, args if cls is transformers.Trainer else None, **(options or {})),
               **fused)


def run(t, resume=None) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train; (the logged loss of every step, the final weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' and the layer-wise mode's advice
        t.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    return losses, {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def logged(t, key: str) -> list:
    return [h[key] for h in t.state.log_history if key in h and "train_runtime" not in h]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
