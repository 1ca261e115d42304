"""The C kernel of low-bit states (optim/lowbit_native.py): built once and cached, and every way it
can be missing falls back to the torch.compile kernel with the same results. (That its results equal
the eager reference bit for bit is tested in test_lowbit.py.)"""

import pytest
import torch

import slimtrain.optim as so
from slimtrain.optim.lowbit import native as lowbit_native

from ..helpers import quiet


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache and no loaded library; the loaded one is restored afterwards."""
    monkeypatch.setenv("SLIMTRAIN_CACHE", str(tmp_path))
    lowbit_native._library.cache_clear()
    yield tmp_path / "kernels"
    lowbit_native._library.cache_clear()


def one_step(**kw):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 128, generator=g))
    opt = quiet(so.AdamW8bit, [("w", p)], lr=1e-2, **kw)
    p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    return p.detach().clone(), opt.state[p]["exp_avg_codes"].clone()


def test_built_once_then_loaded_from_the_cache(fresh_build, monkeypatch):
    assert lowbit_native.available()
    built = list(fresh_build.glob("lowbit_cpu-*.so"))
    assert len(built) == 1
    lowbit_native._library.cache_clear()
    monkeypatch.setattr(lowbit_native, "_build", lambda *a: pytest.fail("rebuilt a cached kernel"))
    assert lowbit_native.available()
    assert lowbit_native.simd_width() in (0, 16)


def test_switched_off_or_unbuildable_falls_back_to_the_same_results(fresh_build, monkeypatch):
    native = one_step()
    lowbit_native._library.cache_clear()
    monkeypatch.setenv("SLIMTRAIN_NATIVE", "0")
    assert not lowbit_native.available()
    assert all(torch.equal(a, b) for a, b in zip(one_step(), native))

    monkeypatch.delenv("SLIMTRAIN_NATIVE")
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    lowbit_native._library.cache_clear()
    with pytest.warns(UserWarning, match="could not build the C kernel"):
        assert not lowbit_native.available()
    assert all(torch.equal(a, b) for a, b in zip(one_step(), native))


def test_unsupported_configurations_take_the_compiled_kernel():
    """float64 parameters and 16-bit moments are not the C kernel's: it must not be asked."""
    f32, q8 = torch.float32, ((8, "signed"), (8, "unsigned"))
    cpu = torch.device("cpu")
    assert lowbit_native.supports(cpu, f32, q8, f32, f32)
    assert lowbit_native.supports(cpu, f32, ((4, "signed"), (4, "linear")), None, torch.bfloat16)
    assert not lowbit_native.supports(cpu, torch.float64, q8, torch.float64, torch.float64)
    assert not lowbit_native.supports(cpu, f32, ((0, ""), (0, "")), f32, f32)
    assert not lowbit_native.supports(cpu, f32, ((8, "signed"), (4, "linear")), f32, f32)
    assert not lowbit_native.supports(torch.device("meta"), f32, q8, f32, f32)


def test_threads_split_a_tensor_into_shares_with_the_same_results(monkeypatch):
    """With two threads a 1024-block tensor runs as two shares (one on the calling thread)."""
    shares = []
    real = lowbit_native._run
    monkeypatch.setattr(lowbit_native, "_run",
                        lambda lib, args, blocks: shares.append(blocks) or real(lib, args, blocks))

    def run(fused, threads):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            g = torch.Generator().manual_seed(0)
            p = torch.nn.Parameter(torch.randn(512, 512, generator=g))
            opt = quiet(so.AdamW8bit, [("w", p)], lr=1e-2, fused=fused)
            for _ in range(3):
                p.grad = torch.randn(p.shape, generator=g)
                opt.step()
            return [p.detach()] + list(opt.state[p].values())
        finally:
            torch.set_num_threads(old)

    reference = run(False, 1)
    split = run(None, 2)
    assert shares == [1024] * 3
    assert all(torch.equal(a, b) for a, b in zip(split, reference))
