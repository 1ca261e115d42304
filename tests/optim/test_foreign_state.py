"""An optimizer state saved by one recipe is refused by another (torch's loader would let the saved
group keys replace the new optimizer's: a GaLore-Lion would then run Adam)."""

import pytest

import slimtrain.optim as so

from .test_contract import named_params, set_grads

TARGETS = r"\.mlp\.\w+\.weight$"
PAIRS = [("galore-adamw", "apollo"), ("galore-adamw", "galore-lion"),
         ("galore-adamw", "galore-adamw8bit"), ("galore-adamw", "q-galore"),
         ("galore-adamw", "fira"), ("fira", "galore-adamw"), ("adamw", "adamw8bit"),
         ("galore-adafactor", "galore-adamw")]


def stepped(name, **kwargs):
    named = named_params()
    extra = {} if name.startswith("adamw") else dict(rank=4, targets=TARGETS)
    opt = so.create(name, named, **extra, **kwargs)
    set_grads(named, 0)
    opt.step()
    return named, opt


@pytest.mark.parametrize("saved,loaded", PAIRS)
def test_another_recipes_state_is_refused(saved, loaded):
    _, source = stepped(saved)
    _, target = stepped(loaded)
    before = [dict(g) for g in target.param_groups]
    with pytest.raises(ValueError, match=f"saved by {type(source).__name__}, not {type(target).__name__}"):
        target.load_state_dict(source.state_dict())
    assert [dict(g) for g in target.param_groups] == before  # nothing was replaced


@pytest.mark.parametrize("change,match", [(dict(basis="svd"), "basis='randomized'"),
                                          (dict(state_bits=8), "state_bits=None"),
                                          (dict(switch="reset"), "switch='keep'")])
def test_the_same_recipe_with_other_parts_is_refused(change, match):
    _, source = stepped("galore-adamw")
    _, target = stepped("galore-adamw", **change)
    with pytest.raises(ValueError, match=f"saved with {match}"):
        target.load_state_dict(source.state_dict())


def test_the_same_recipe_loads_and_takes_the_saved_hyperparameters():
    """lr, betas and the like come from the checkpoint, as torch's loader does: a resume."""
    _, source = stepped("galore-adamw", lr=0.02)
    _, target = stepped("galore-adamw", lr=0.05)
    target.load_state_dict(source.state_dict())
    assert target.param_groups[0]["lr"] == 0.02
