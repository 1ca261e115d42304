"""Building the model a run trains: a preset (fresh weights) or a local Hugging Face directory.

A directory holds at least ``config.json``; with weights (``*.safetensors`` / ``*.bin``) they are
loaded (fine-tuning, continued pretraining), without them the model starts from fresh weights of
that configuration. Nothing is ever downloaded (``local_files_only``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError, first_line
from .config import model_config
from .presets import PRESETS


def is_preset(spec: str) -> bool:
    return spec.lower().removeprefix("llama-").removeprefix("llama_") in PRESETS


def has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def is_pretrained(spec: str) -> bool:
    """A local directory with weights: training starts from them (fine-tuning needs one)."""
    return not is_preset(spec) and has_weights(Path(spec))


def config_for(spec: str):
    """``model_config`` with its complaints turned into user errors."""
    try:
        return model_config(spec)
    except (ValueError, OSError) as err:
        raise UserError(f"--model {spec!r}: {first_line(err)}") from None


def check_pretrained(spec: str) -> None:
    """Fine-tuning needs weights to start from: a directory that holds them."""
    if not is_pretrained(spec):
        raise UserError(f"fine-tuning needs pretrained weights, but {spec!r} is "
                        f"{'a preset' if is_preset(spec) else 'a directory without weights'}; pass a "
                        "local directory with config.json and model.safetensors (e.g. a checkpoint)")


def build_model(spec: str, seed: int) -> torch.nn.Module:
    """A causal LM in float32 (master weights; bf16 comes from autocast)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar would cut into our log
    config = config_for(spec)
    path = Path(spec)
    torch.manual_seed(seed)  # fresh weights are a function of the seed
    try:
        if is_pretrained(spec):
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                         dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as err:  # transformers and safetensors raise many types for unreadable files
        if not _unreadable(err):
            raise
        raise UserError(f"could not build a causal language model from {spec!r} "
                        f"({first_line(err)}); its weights or config are damaged or not a "
                        "Hugging Face model") from None
    return model


def _unreadable(err: Exception) -> bool:
    """The errors of a damaged or foreign model directory (not bugs)."""
    from safetensors import SafetensorError

    return isinstance(err, (OSError, ValueError, KeyError, SafetensorError, EOFError))
