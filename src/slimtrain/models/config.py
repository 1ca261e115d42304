"""Resolve a model argument — a preset name or a local Hugging Face directory / config.json — to a
``transformers`` config, without loading any weights."""

from __future__ import annotations

from pathlib import Path

from ..errors import first_line
from .presets import preset_config


def model_config(model):
    """``"60m"``/``"llama-7b"`` → preset; a directory holding ``config.json`` or the file itself →
    ``AutoConfig``; a config object is returned as is."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return model
    text = str(model)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".json":
        return _config_from_json(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} has no config.json; point --model at a Hugging Face model directory")
        _config_from_json(path / "config.json")  # a clear error for a broken file first
        try:
            return AutoConfig.from_pretrained(str(path), local_files_only=True)
        except (OSError, KeyError, TypeError) as err:
            raise ValueError(f"{path / 'config.json'} is not a config transformers can read "
                             f"({first_line(err, 120)})") from None
    return preset_config(text)  # a ValueError naming the presets when it is none of them


def _config_from_json(path: Path):
    import json

    from transformers import AutoConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); pass a Hugging Face config.json") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a config object")
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path} has no 'model_type'; it does not look like a Hugging Face config")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: transformers does not know model_type {model_type!r} or its "
                         f"fields ({first_line(err, 120)})") from None
