"""LLaMA-style model presets (the GaLore papers' configs and small CPU sizes)."""

from .config import model_config
from .presets import PRESETS, preset_config, preset_names

__all__ = ["PRESETS", "model_config", "preset_config", "preset_names"]
