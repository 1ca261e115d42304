"""The projected step runs in chunks of bounded low-rank bytes; the result does not depend on it."""

import pytest
import torch

import slimtrain.optim.subspace.projected as core
from slimtrain.optim import GaLoreAdamW
from slimtrain.optim.subspace.projected import chunk_by_bytes

_ORIGINAL_CHUNK_STEP = core.ProjectedStep._step_projected_chunk


def test_chunk_by_bytes():
    assert chunk_by_bytes([3, 3, 3, 10, 1], 6) == [[0, 1], [2], [3], [4]]
    assert chunk_by_bytes([], 6) == []
    assert chunk_by_bytes([1, 1, 1], 100) == [[0, 1, 2]]


def _train(monkeypatch, limit):
    monkeypatch.setattr(core, "PROJECTED_CHUNK_BYTES", limit)
    calls = []
    def spy(self, group, params, *args):
        calls.append(len(params))
        return _ORIGINAL_CHUNK_STEP(self, group, params, *args)

    monkeypatch.setattr(core.ProjectedStep, "_step_projected_chunk", spy)
    g = torch.Generator().manual_seed(0)
    params = [(f"l{i}.mlp.weight", torch.nn.Parameter(torch.randn(16, 40, generator=g))) for i in range(5)]
    opt = GaLoreAdamW(params, rank=4, refresh_every=3, targets="mlp")
    for _ in range(4):
        for _, p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for _, p in params], calls


def test_chunked_step_equals_one_chunk(monkeypatch):
    whole, calls_whole = _train(monkeypatch, 2**30)
    chunked, calls_chunked = _train(monkeypatch, 2 * 4 * 40 * 4)  # two 4×40 fp32 gradients a chunk
    assert calls_whole == [5] * 4 and calls_chunked == [2, 2, 1] * 4
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lion", "adabelief", "adan", "sophia"])
def test_elementwise_rules_in_pieces_equal_whole_tensors(monkeypatch, name):
    """The unprojected step of an elementwise rule on flat pieces (optimizer._in_pieces) is the
    same arithmetic on the same elements: bit for bit, counters counted once."""
    import slimtrain.optim as so
    import slimtrain.optim.rule_step as optimizer

    def train(piece):
        monkeypatch.setattr(optimizer, "PIECE", piece)
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((30, 41), (7,))]
        opt = so.create(name, [(f"w{i}", p) for i, p in enumerate(params)], weight_decay=0.1)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            extra = {"hessian_grads": {p: torch.randn(p.shape, generator=g) for p in params}}
            opt.step(**(extra if name == "sophia" else {}))
        return [p.detach().clone() for p in params], [float(opt.state[p]["step"]) for p in params]

    whole, whole_steps = train(1 << 20)
    cut, cut_steps = train(100)  # 30×41 in 13 pieces
    assert all(torch.equal(a, b) for a, b in zip(whole, cut))
    assert whole_steps == cut_steps == [4.0, 4.0]
