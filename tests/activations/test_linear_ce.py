"""linear_cross_entropy / causal_lm_loss against F.cross_entropy on the full logits and against
transformers' own loss; its peak memory against the naive loss's in fresh processes."""

import sys

import pytest
import torch
import torch.nn.functional as F

from slimtrain.activations import causal_lm_loss, default_chunk_size, linear_cross_entropy
from slimtrain.activations import shift_labels
from slimtrain.activations.peak_memory import run_isolated
from tests.helpers import quiet

FP32_TOL = 1e-5
# bf16 inputs vs the fp32 loss of the same (bf16-rounded) inputs, worst of 6 seeds at 300 tokens ×
# 1000 words × d 64 (chunks of 64 and of the whole batch): loss 2.7e-5; max-relative error (as
# FP32_TOL's) grad_hidden 6.7e-3, grad_weight 5.6e-3; norm-relative (‖Δ‖/‖ref‖, which rounding noise
# averages down and a scale error does not) 2.4e-3 and 3.0e-3. The naive bf16 loss (bf16 logits
# upcast, as transformers does) measures the same. Asserted at 2–4× those.
BF16_LOSS_TOL, BF16_GRAD_TOL, BF16_GRAD_NORM_TOL = 1e-4, 1.5e-2, 6e-3


def rel(a, b):
    """max |a − b| / max |b| (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max()
    return ((a - b).abs().max() / scale).item() if scale > 0 else (a - b).abs().max().item()


def norm_rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def leaves(*shapes, dtype=torch.float32, scale=1.0):
    return [(torch.randn(*s) * scale).to(dtype).requires_grad_() for s in shapes]


def grads_of(loss, tensors):
    out = torch.autograd.grad(loss, tensors)
    return [g.clone() for g in out]


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_equals_full_logits_fp32(chunk_size, with_bias):
    V, d = 300, 32
    h, W, b = leaves((3, 40, d), (V, d), (V,))
    y = torch.randint(0, V, (3, 40))
    y[0, :9] = -100
    y[2, -5:] = -100
    bias = b if with_bias else None
    loss = linear_cross_entropy(h, W, y, bias=bias, chunk_size=chunk_size)
    ours = grads_of(loss, [h, W, b] if with_bias else [h, W])
    logits = h @ W.T + (b if with_bias else 0)
    ref = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    theirs = grads_of(ref, [h, W, b] if with_bias else [h, W])
    assert loss.dtype == torch.float32
    assert rel(loss, ref) <= FP32_TOL
    for g, r in zip(ours, theirs):
        assert rel(g, r) <= FP32_TOL


@pytest.mark.parametrize("reduction,normalizer", [("sum", None), ("none", None), ("mean", 37.0),
                                                  ("sum", "tensor"), ("mean", 5)])
def test_reductions_and_normalizer(reduction, normalizer):
    V, d = 200, 16
    h, W = leaves((50, d), (V, d))
    y = torch.randint(0, V, (50,))
    y[::4] = 3  # a non-default ignore_index that is also a real word id
    if normalizer == "tensor":
        normalizer = torch.tensor(123)
    loss = linear_cross_entropy(h, W, y, ignore_index=3, reduction=reduction,
                                normalizer=normalizer, chunk_size=8)
    ref = F.cross_entropy(h @ W.T, y, ignore_index=3,
                          reduction="sum" if normalizer is not None else reduction)
    if normalizer is not None:
        ref = ref / normalizer
    assert loss.shape == ref.shape
    assert rel(loss, ref) <= FP32_TOL
    weights = torch.rand(ref.shape)  # a non-uniform upstream gradient for "none"
    for g, r in zip(grads_of((loss * weights).sum(), [h, W]), grads_of((ref * weights).sum(), [h, W])):
        assert rel(g, r) <= FP32_TOL


def test_tied_embedding_gets_the_naive_gradient():
    V, d = 250, 24
    torch.manual_seed(1)
    emb = torch.nn.Embedding(V, d)
    body = torch.nn.Linear(d, d)
    ids = torch.randint(0, V, (4, 30))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100

    def embedding_grads(loss_fn):
        emb.zero_grad(set_to_none=True)
        body.zero_grad(set_to_none=True)
        hidden = torch.tanh(body(emb(ids)))
        loss_fn(hidden, emb.weight).backward()
        return emb.weight.grad.clone(), body.weight.grad.clone()

    ours = embedding_grads(lambda h, w: linear_cross_entropy(h, w, labels, chunk_size=16))
    naive = embedding_grads(lambda h, w: F.cross_entropy((h @ w.T).reshape(-1, V), labels.reshape(-1)))
    for g, r in zip(ours, naive):
        assert rel(g, r) <= FP32_TOL


@pytest.mark.parametrize("chunk_size", [64, None])
def test_bf16_inputs_fp32_accumulation(chunk_size):
    V, d, n = 1000, 64, 300
    h32, W32 = torch.randn(n, d), torch.randn(V, d) / d**0.5 * 2
    y = torch.randint(0, V, (n,))
    y[:20] = -100
    h, W = (t.bfloat16().float().requires_grad_() for t in (h32, W32))
    ref = F.cross_entropy(h @ W.T, y)
    ref_grads = grads_of(ref, [h, W])
    hb, Wb = (t.bfloat16().requires_grad_() for t in (h32, W32))
    loss = linear_cross_entropy(hb, Wb, y, chunk_size=chunk_size)
    gh, gw = grads_of(loss, [hb, Wb])
    assert loss.dtype == torch.float32 and gh.dtype == gw.dtype == torch.bfloat16
    assert rel(loss, ref) <= BF16_LOSS_TOL
    assert rel(gh, ref_grads[0]) <= BF16_GRAD_TOL
    assert rel(gw, ref_grads[1]) <= BF16_GRAD_TOL
    assert norm_rel(gh, ref_grads[0]) <= BF16_GRAD_NORM_TOL
    assert norm_rel(gw, ref_grads[1]) <= BF16_GRAD_NORM_TOL


def test_autocast_does_not_lower_precision():
    h, W = leaves((40, 16), (100, 16))
    y = torch.randint(0, 100, (40,))
    plain = linear_cross_entropy(h, W, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = linear_cross_entropy(h, W, y)
    assert rel(cast, plain) <= FP32_TOL


def test_frozen_head_and_inputs_without_grad():
    h, W = leaves((20, 8), (50, 8))
    y = torch.randint(0, 50, (20,))
    loss = linear_cross_entropy(h, W.detach(), y)
    (g,) = torch.autograd.grad(loss, [h])
    assert rel(g, torch.autograd.grad(F.cross_entropy(h @ W.detach().T, y), [h])[0]) <= FP32_TOL
    with torch.no_grad():
        assert rel(linear_cross_entropy(h, W, y), F.cross_entropy(h @ W.T, y)) <= FP32_TOL


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_is_zero_with_zero_grads(reduction):
    h, W = leaves((2, 10, 8), (50, 8))
    y = torch.full((2, 10), -100)
    loss = linear_cross_entropy(h, W, y, reduction=reduction, chunk_size=4)
    gh, gw = grads_of(loss, [h, W])
    assert loss.item() == 0.0
    assert torch.count_nonzero(gh) == 0 and torch.count_nonzero(gw) == 0


def test_mean_over_one_valid_token():
    h, W = leaves((6, 8), (50, 8))
    y = torch.tensor([-100, -100, 7, -100, -100, -100])
    loss = linear_cross_entropy(h, W, y, chunk_size=4)
    assert rel(loss, F.cross_entropy(h[2] @ W.T, y[2])) <= FP32_TOL


def test_empty_input():
    h, W = leaves((0, 8), (50, 8))
    y = torch.zeros(0, dtype=torch.long)
    loss = linear_cross_entropy(h, W, y)
    gh, gw = grads_of(loss, [h, W])
    assert loss.item() == 0.0 and gh.shape == (0, 8) and torch.count_nonzero(gw) == 0
    assert linear_cross_entropy(h, W, y, reduction="none").shape == (0,)


@pytest.mark.parametrize("kwargs,labels,match", [
    ({}, torch.tensor([1, 50, 2]), "label 50 is outside the vocabulary"),
    ({}, torch.tensor([1, -1, 2]), "label -1 is outside the vocabulary"),
    ({}, torch.tensor([1, 2]), "labels shape"),
    ({}, torch.tensor([1.0, 2.0, 3.0]), "integer token ids"),
    ({"chunk_size": 0}, None, "chunk_size"),
    ({"chunk_size": -3}, None, "chunk_size"),
    ({"chunk_size": 2.5}, None, "chunk_size"),
    ({"reduction": "avg"}, None, "reduction"),
    ({"backend": "triton"}, None, "backend"),
    ({"reduction": "none", "normalizer": 3.0}, None, "normalizer"),
    ({"normalizer": 0}, None, "normalizer"),
    ({"bias": torch.zeros(49)}, None, "bias"),
])
def test_bad_arguments_raise(kwargs, labels, match):
    h, W = torch.randn(3, 8), torch.randn(50, 8)
    labels = torch.tensor([1, 2, 3]) if labels is None else labels
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(h, W, labels, **kwargs)


def test_shape_and_dtype_mismatch_raise():
    y = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="last dim"):
        linear_cross_entropy(torch.randn(3, 8), torch.randn(50, 9), y)
    with pytest.raises(ValueError, match="weight must be"):
        linear_cross_entropy(torch.randn(3, 8), torch.randn(50), y)
    with pytest.raises(ValueError, match="share one"):
        linear_cross_entropy(torch.randn(3, 8).bfloat16(), torch.randn(50, 8), y)


def test_cce_backend_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", None)  # import fails as if absent
    with pytest.raises(ImportError, match="pip install cut-cross-entropy"):
        linear_cross_entropy(torch.randn(3, 8), torch.randn(50, 8), torch.tensor([1, 2, 3]),
                             backend="cce")


def test_default_chunk_size():
    assert default_chunk_size(32000) == 512 and default_chunk_size(128256) == 128
    assert default_chunk_size(10**7) == 64 and default_chunk_size(1000) >= 4096


def test_shift_labels():
    y = torch.tensor([[5, 6, 7], [8, -100, 9]])
    assert shift_labels(y).tolist() == [[6, 7, -100], [-100, 9, -100]]
    assert shift_labels(y, ignore_index=0).tolist() == [[6, 7, 0], [-100, 9, 0]]


def tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=144,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("num_items", [None, 41])
def test_causal_lm_loss_equals_transformers(tied, num_items):
    model = quiet(tiny_llama, tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    ids = torch.randint(0, 1000, (3, 24))
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt
    labels[2, -3:] = -100  # padding
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    params = [p for p in model.parameters()]

    ref = model(input_ids=ids, labels=labels, **extra).loss
    ref_grads = grads_of(ref, params)
    hidden = model.model(input_ids=ids).last_hidden_state
    loss = causal_lm_loss(hidden, model.lm_head.weight, labels, chunk_size=16, **extra)
    ours = grads_of(loss, params)
    assert rel(loss, ref) <= FP32_TOL
    for (name, _), g, r in zip(model.named_parameters(), ours, ref_grads):
        assert rel(g, r) <= FP32_TOL, name
    aligned = causal_lm_loss(hidden, model.lm_head.weight, None, shift_labels=shift_labels(labels),
                             **extra)
    assert rel(aligned, ref) <= FP32_TOL


def test_peak_memory_quarter_of_naive():
    """4,096 tokens × 32,000 words × d 128, fp32, each in a fresh process (both at once: two
    cores). Measured here: naive 1,576 MB (three full logits), chunked 87 MB (0.055×)."""
    naive, chunked = run_isolated(["naive", "chunked"], tokens=4096, vocab=32000, dim=128,
                                  parallel=True)
    assert naive["peak_extra_bytes"] and chunked["peak_extra_bytes"]
    assert abs(naive["loss"] - chunked["loss"]) <= FP32_TOL * abs(naive["loss"])
    logits_bytes = 4096 * 32000 * 4
    assert naive["peak_extra_bytes"] >= 2 * logits_bytes  # the measurement sees the logits
    assert chunked["peak_extra_bytes"] <= 0.25 * naive["peak_extra_bytes"]


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cce_backend_matches_ours(dtype):
    """cut-cross-entropy's torch.compile implementation on CPU (its Triton kernel needs CUDA);
    slow for its first compilation (about 12 s here)."""
    pytest.importorskip("cut_cross_entropy")
    V, d = 300, 32
    h, W = leaves((2, 40, d), (V, d), dtype=dtype)
    y = torch.randint(0, V, (2, 40))
    y[0, :10] = -100
    tol = FP32_TOL if dtype == torch.float32 else BF16_GRAD_TOL
    for kwargs in ({}, {"reduction": "sum"}, {"normalizer": 17.0}):
        cce = linear_cross_entropy(h, W, y, backend="cce", **kwargs)
        ours = linear_cross_entropy(h, W, y, backend="slimtrain", chunk_size=16, **kwargs)
        assert rel(cce, ours) <= FP32_TOL
        for g, r in zip(grads_of(cce, [h, W]), grads_of(ours, [h, W])):
            assert rel(g, r) <= tol
