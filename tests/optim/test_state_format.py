"""Optimizer states written by earlier versions keep loading: format 1 (before the house refactor;
``data/make_format1.py`` made the file at commit c29bd30) resumes as the run that wrote it went on
— with the per-rule group keys renamed and 4-bit packed bases in the new nibble order. Bit for bit
where this machine's arithmetic reproduces the writer's first steps (the same kind of CPU); to
1e-5 elsewhere, which still catches a wrong key (eps 1e-8 for 1e-30) or nibble order."""

from pathlib import Path

import pytest
import torch

import slimtrain.optim as so

from .data.make_format1 import CASES, grads, params

# natural-galore's Fisher-inverse solve amplifies a last-bit difference of its first steps: on a
# CPU kind other than the writer's (a Xeon with AVX-512 and AMX) its weights differ by up to 6.7e-6
# of a tensor's largest entry (6e-4 relative on its smallest ones). Tolerance: 1e-4 of the largest.
AMPLIFIED = {"natural-galore"}
SAVED = torch.load(Path(__file__).with_name("data") / "format1.pt", weights_only=True)


def _reproduces_the_writer(name, case) -> bool:
    named = params()
    opt = so.create(name, named, lr=1e-2, targets=r"\.mlp\.", **case["kwargs"])
    for k in range(3):
        grads(named, k)
        opt.step()
    return all(torch.equal(p, w) for (_, p), w in zip(named, case["weights"]))


@pytest.mark.parametrize("name", list(CASES))
def test_format_1_resumes_as_the_run_that_wrote_it(name):
    case = SAVED[name]
    assert case["state"]["format_version"] == 1
    exact = _reproduces_the_writer(name, case)
    named = params()
    with torch.no_grad():
        for (_, p), w in zip(named, case["weights"]):
            p.copy_(w)
    opt = so.create(name, named, lr=1e-2, targets=r"\.mlp\.", **case["kwargs"])
    fresh = [dict(g) for g in opt.param_groups]
    opt.load_state_dict(case["state"])
    for group, built in zip(opt.param_groups, fresh):  # the keys and values format 2 would have
        assert {k: v for k, v in group.items() if k != "params"} == \
            {k: v for k, v in built.items() if k != "params"}
    for k in range(3, 6):
        grads(named, k)
        opt.step()
    for (n, p), e in zip(named, case["expected"]):
        if exact:
            assert torch.equal(p, e), f"{name}: {n} differs from the run that wrote the state"
        else:
            atol = 1e-4 * e.abs().max().item() if name in AMPLIFIED else 1e-6
            torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=atol, msg=f"{name}: {n}")
    assert opt.state_dict()["format_version"] == so.STATE_FORMAT == 2
