"""The benchmark's methods: names, options and availability are checked before anything runs."""

import importlib.util

import pytest

from slimtrain import optim
from slimtrain.bench import methods
from slimtrain.bench.peers import PEERS
from slimtrain.bench.runner import resolve
from slimtrain.bench.spec import BenchSettings, parse_method
from slimtrain.errors import UserError

def settings(*specs, **kw):
    return BenchSettings(methods=list(specs), tokens=2048, seq_len=64, batch_size=8, **kw).validate()


def test_every_recipe_is_a_method_and_every_reference_names_a_recipe():
    assert set(optim.available()) <= set(methods.available())
    for peer in PEERS:
        if peer.reference_of:
            assert parse_method(peer.reference_of).name in optim.available(), peer.name


def test_unknown_methods_suggest_the_nearest_names():
    with pytest.raises(UserError, match="unknown method 'galore-adam'. Did you mean galore-adamw"):
        methods.get("galore-adam")


@pytest.mark.parametrize("spec,message", [
    ("galore-torch-adamw:rnak=4", "takes no option 'rnak'"),
    ("torch-adamw:rank=4", "takes no option 'rank'"),
    ("galore-adamw:rnak=4", "galore-adamw:rnak=4: optimizer galore-adamw takes no argument 'rnak'"),
    ("galore-adamw:rank=0", "galore-adamw:rank=0"),
    ("apollo-mini:rest=sgd", "unknown rest='sgd'"),
    ("adamw:lr=fast", "lr must be a number"),
])
def test_bad_options_fail_before_anything_runs(spec, message):
    with pytest.raises(UserError, match=message):
        resolve(settings(spec))


def test_a_missing_package_is_a_skip_not_an_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fira" else real(name, *a))
    entries = {e.spec.text: e for e in resolve(settings("fira-adamw", "adamw"))}
    assert entries["fira-adamw"].skipped == "fira is not installed (pip install fira)"
    assert entries["adamw"].skipped is None


def test_sweeps_start_at_the_authors_lr_on_the_ladder():
    entries = resolve(settings("adamw", "galore-adamw", "apollo-mini:lr=0.03", "frugal", "torch-adamw"))
    assert [e.center for e in entries] == [2e-3, 1e-2, 2e-2, 1e-3, 2e-3]
    # the papers' lrs (--gpu-protocol): the AdamW family back at 1e-3; an lr= given still wins
    entries = resolve(settings("adamw", "galore-adamw", "apollo-mini:lr=0.03", "torch-adamw",
                               "adamw:lr=0.005", centers="papers"))
    assert [e.center for e in entries] == [1e-3, 1e-2, 2e-2, 1e-3, 5e-3]


def test_recipes_pair_with_their_reference_by_options():
    group = lambda text: methods.group(parse_method(text))  # noqa: E731
    assert group("galore-torch-adamw") == group("galore-adamw") == "galore-adamw"
    assert group("galore-torch-adamw:rank=16") == group("galore-adamw:rank=16:lr=0.02")
    assert group("galore-torch-adamw:rank=16") != group("galore-adamw")
    assert group("apollo-torch-mini") == "apollo-mini" != group("apollo-mini:rest=adafactor")
    # galore-torch's GaLoreAdafactor trains every parameter with Adafactor
    assert group("galore-torch-adafactor") == group("galore-adafactor:rest=adafactor:lr=0.02")


def test_trainer_options_go_to_the_trainer_and_the_benchmark_settings_to_every_method(tmp_path):
    from slimtrain.bench.trials import Trial, trial_spec

    s = settings("galore-adamw:fused_backward=true:rank=8", "galore-torch-adamw", "adamw", rank=16,
                 refresh_every=50)
    resolve(s)
    ours, peer, adamw = s.specs()
    spec = trial_spec(Trial(ours, 1e-2, 0, "sweep"), s, tmp_path, is_recipe=True)
    assert spec["train"]["fused_backward"] is True and "fused_backward" not in spec["options"]
    assert spec["train"]["rank"] == 8 and spec["train"]["optim_args"] == {"refresh_every": 50}
    spec = trial_spec(Trial(peer, 1e-2, 0, "sweep"), s, tmp_path, is_recipe=False)
    assert spec["rank"] == 16 and spec["options"] == {"refresh_every": 50} and "rank" not in spec["train"]
    spec = trial_spec(Trial(adamw, 1e-3, 1, "seed"), s, tmp_path, is_recipe=True)
    assert spec["train"]["rank"] is None and spec["train"]["optim_args"] == {}  # adamw projects nothing
    assert spec["train"]["seed"] == 1 and spec["train"]["steps"] == 4 and spec["weight_decay"] == 0.0
