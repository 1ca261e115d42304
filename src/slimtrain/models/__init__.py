"""LLaMA-style model presets (the GaLore papers' configs and small CPU sizes) and loading local
pretrained models."""

from .build import build_model, check_pretrained, has_weights, is_preset, model_config
from .presets import PRESETS, preset_config, preset_names

__all__ = ["PRESETS", "preset_config", "preset_names", "build_model", "check_pretrained", "has_weights", "is_preset",
           "model_config"]
