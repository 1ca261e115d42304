"""LLaMA-style model presets (the GaLore papers' configs and small CPU sizes)."""

from .presets import PRESETS, preset_config, preset_names

__all__ = ["PRESETS", "preset_config", "preset_names"]
