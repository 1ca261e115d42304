import pytest
import torch
from transformers import LlamaForCausalLM

from slimtrain.models import preset_config

# Parameter counts of the GaLore configs (research notes §1.10 / issue #67 of jiaweizzhao/GaLore).
PAPER_MILLIONS = {"60m": 58.1, "130m": 134.1, "350m": 368.0, "1b": 1339.1, "7b": 6738.4}


@pytest.mark.parametrize("name,millions", PAPER_MILLIONS.items())
def test_paper_presets_have_the_papers_parameter_counts(name, millions):
    with torch.device("meta"):
        model = LlamaForCausalLM(preset_config(name))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown model preset 'llama-3b'.*60m"):
        preset_config("llama-3b")
