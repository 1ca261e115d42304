"""The CUDA paths (``pytest -m gpu``; skipped without a GPU, so the default suite stays CPU-only).
``scripts/gpu_check.sh`` runs these and writes ``gpu_report.md``. Written to be right by design:
they have not run on a GPU yet (README)."""

import pytest
import torch

import slimtrain.optim as so
from tests.helpers import quiet, stdlib_bytes, tiny_llama

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ON_CPU = ("step", "seed", "moment_step")  # counters and seeds live on the CPU by design


def text_batches(steps: int, batch: int = 4, seq: int = 64, vocab: int = 256):
    return stdlib_bytes(steps * batch * seq).view(steps, batch, seq) % vocab


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("recipe", so.available())
def test_every_recipe_steps_on_cuda(recipe, dtype):
    model = tiny_llama().to("cuda", dtype)
    kwargs = {"rank": 8} if so.recipe(recipe).accepts("rank") else {}
    # bf16: an update below half an ulp of a weight near 1 (norms) would round away at 1e-3
    opt = quiet(so.create, recipe, model, lr=1e-2 if dtype == torch.bfloat16 else 1e-3, **kwargs)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for tokens in text_batches(4).cuda():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        quiet(opt.step)
        opt.zero_grad()
        losses.append(float(loss.detach()))
    torch.cuda.synchronize()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for st in opt.state.values():
        for key, value in st.items():
            if torch.is_tensor(value) and key not in ON_CPU and value.numel() > 1:
                assert value.is_cuda, f"{recipe}: state {key} is on {value.device}"


LOWBIT = [("adamw8bit", {}), ("adamw4bit", {}), ("galore-adamw8bit", {"rank": 8})]


@pytest.mark.parametrize("recipe,kw", LOWBIT, ids=[r for r, _ in LOWBIT])
def test_compiled_lowbit_kernel_equals_eager_within_an_ulp_on_cuda(recipe, kw):
    """On CPU the compiled kernel equals the eager reference bit for bit; a GPU compiler may fuse
    multiply-adds (``lowbit/codec.py``): each weight within a few float32 ulps after 4 steps,
    each stored code within one step of the code eager stored."""
    runs = {}
    for fused in (False, None):  # False: the eager reference; None: torch.compile on CUDA
        model = tiny_llama().cuda()
        opt = quiet(so.create, recipe, model, lr=1e-2, quantize_min_numel=0, fused=fused, **kw)
        for tokens in text_batches(4).cuda():
            model(input_ids=tokens, labels=tokens).loss.backward()
            quiet(opt.step)
            opt.zero_grad()
        runs[fused] = (model, opt)
    (eager, eager_opt), (compiled, compiled_opt) = runs[False], runs[None]
    from slimtrain.optim.lowbit import kernel

    assert not kernel.compile_failed
    for p, q in zip(eager.parameters(), compiled.parameters()):
        ulp = torch.finfo(torch.float32).eps * p.abs().clamp_min(1e-3)
        assert ((p - q).abs() <= 8 * ulp).all()
    for p, q in zip(eager.parameters(), compiled.parameters()):
        for key, value in eager_opt.state[p].items():
            if torch.is_tensor(value) and value.dtype == torch.uint8:
                other = compiled_opt.state[q][key]
                assert (value.int() - other.int()).abs().max() <= 1 or recipe == "adamw4bit"


@pytest.mark.parametrize("fused", [False, True], ids=["ordinary", "layer-wise"])
def test_peak_allocated_agrees_with_the_planner_on_cuda(fused):
    """``torch.cuda.max_memory_allocated`` over real steps of the 60m preset vs ``plan(...)``."""
    from transformers import LlamaForCausalLM

    from slimtrain.memory import measure, plan
    from slimtrain.models import preset_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(preset_config("60m")).cuda()
    opt = quiet(so.create, "galore-adamw", model, rank=128)
    measured = quiet(measure, model, opt, batch_size=2, seq_len=256, steps=2,
                     fused_backward=fused)
    planned = plan("60m", "galore-adamw", batch_size=2, seq_len=256, fused_backward=fused, rank=128)
    ratio = measured["peak_allocated"] / planned.total
    print(f"peak allocated {measured['peak_allocated'] / 2**20:.1f} MiB, planned "
          f"{planned.total / 2**20:.1f} MiB, ratio {ratio:.3f}")
    assert 0.85 <= ratio <= 1.15


def test_bf16_autocast_training_step_on_cuda():
    model = tiny_llama().cuda()
    opt = so.create("galore-adamw", model, rank=8, lr=1e-3)
    for tokens in text_batches(3).cuda():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        quiet(opt.step)
        opt.zero_grad()
    assert torch.isfinite(loss)
