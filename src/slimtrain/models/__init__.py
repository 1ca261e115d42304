"""LLaMA-style model presets (the GaLore papers' configs and small CPU sizes), resolving a model
argument to a config, and building the model a run trains (fresh or from a local directory)."""

from .build import build_model, check_pretrained, config_for, has_weights, is_preset, is_pretrained
from .config import model_config
from .presets import PRESETS, preset_config, preset_names

__all__ = ["PRESETS", "model_config", "preset_config", "preset_names", "build_model",
           "check_pretrained", "config_for", "has_weights", "is_preset", "is_pretrained"]
