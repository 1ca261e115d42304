"""The LLaMA presets: the GaLore repository's configs (configs/llama_*.json, shared by APOLLO, Fira,
Q-GaLore and FRUGAL) and two small sizes that train on a laptop CPU.

All: SiLU, RMSNorm eps 1e-6, initializer range 0.02, untied embeddings (as the papers' configs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    vocab_size: int = 32000
    max_position_embeddings: int = 1024


PRESETS: dict[str, Preset] = {
    # CPU sizes: a smaller vocabulary keeps the embeddings from dominating.
    "tiny": Preset(128, 344, 4, 4, vocab_size=4096, max_position_embeddings=512),     # 1.8M
    "small": Preset(256, 688, 8, 6, vocab_size=8192, max_position_embeddings=512),    # 8.9M
    # The papers' sizes (jiaweizzhao/GaLore configs/llama_*.json).
    "60m": Preset(512, 1376, 8, 8),
    "130m": Preset(768, 2048, 12, 12),
    "350m": Preset(1024, 2736, 16, 24),
    "1b": Preset(2048, 5461, 32, 24),
    "7b": Preset(4096, 11008, 32, 32, max_position_embeddings=2048),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_config(name: str):
    """A ``transformers.LlamaConfig`` for a preset name (``"60m"``, ``"llama-60m"``, ``"tiny"`` …)."""
    from transformers import LlamaConfig

    key = name.lower().removeprefix("llama-").removeprefix("llama_")
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)} "
                         "or pass a local directory holding a Hugging Face config.json")
    p = PRESETS[key]
    return LlamaConfig(**asdict(p), num_key_value_heads=p.num_attention_heads, hidden_act="silu",
                       rms_norm_eps=1e-6, initializer_range=0.02, tie_word_embeddings=False)
