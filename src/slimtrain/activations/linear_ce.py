"""Cross-entropy of a linear head, ``CE(hidden @ weight.T + bias, labels)``, without the logits.

A causal LM's logits are tokens × vocabulary: at 4,096 tokens and 32,000 words, 0.5 GB in fp32, and
the naive loss holds about three such tensors at the start of backward (log-softmax output, its
gradient, the logits' gradient). Here the forward pass runs over chunks of tokens. When the loss
is one number (reduction "mean" or "sum", the training case) and a gradient is wanted, each
chunk's logits are turned in place into ``(softmax − onehot) · coefficient`` right away and give
that chunk's rows of ``grad_hidden`` and its share of ``grad_weight`` (V × d, fp32): backward only
scales them by the upstream gradient (one number), so the head costs the same three matmuls as the
naive loss. Per-token losses (reduction "none") keep, per token, only the log-sum-exp and
recompute each chunk's logits in backward (one more matmul). The extra memory is about two chunks
of fp32 logits plus the fp32 weight-gradient accumulator.

Numerics follow ``transformers``' ``ForCausalLMLoss``: logits are computed in the inputs' dtype
(bf16 matmul, as ``lm_head`` would) and upcast to fp32 before the softmax; the log-sum-exp, the loss
and ``grad_weight`` are accumulated in fp32 and gradients come back in the inputs' dtypes. The loss
is fp32 whatever the inputs.

``causal_lm_loss`` is the drop-in for ``ForCausalLMLoss`` (labels shifted inside, optional
``num_items_in_batch``); ``linear_cross_entropy`` takes labels already aligned with ``hidden``.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "slimtrain", "cce")

# Default tokens per chunk: as many as keep one chunk's fp32 logits at 2**24 elements (64 MiB):
# 512 tokens at a 32k vocabulary, 128 at 128k. Large enough that each chunk's matmul
# (tokens × d × V) is a full-size GEMM on a GPU and amortises the per-chunk Python work on a CPU;
# small enough that two chunks stay well under the naive loss's three full logits at any batch
# of a few thousand tokens. Rounded down to a multiple of 64 (tensor-core and SIMD friendly).
CHUNK_LOGITS = 2**24
MIN_CHUNK_TOKENS = 64


def default_chunk_size(vocab_size: int) -> int:
    return max(MIN_CHUNK_TOKENS, CHUNK_LOGITS // max(vocab_size, 1) // 64 * 64)


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Labels aligned with the positions that predict them, as ``ForCausalLMLoss`` does: position t
    is scored on ``labels[..., t + 1]``; the last position on ``ignore_index``."""
    return torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous()


_shift = shift_labels  # causal_lm_loss has a keyword of the same name (transformers' spelling)


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One chunk's logits in the inputs' dtype, upcast to fp32 (a fresh tensor we may overwrite)."""
    out = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    return out.float()


def _chunk_lse(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor):
    """A chunk's log-sum-exp and target logits; ``x`` (fp32 logits, overwritten) becomes
    ``exp(x - peak)``, returned with the row sums to make the softmax from."""
    target = x.gather(1, torch.where(valid, y, 0)[:, None]).squeeze(1)
    peak = x.amax(1)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)  # a row of -inf stays -inf
    sums = x.sub_(peak[:, None]).exp_().sum(1)
    return sums.log().add_(peak), target, sums


def _into_grad_(g: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """softmax (``g``, in place) → ``(softmax − onehot(y)) · coef`` per row; ignored rows → 0."""
    rows = torch.arange(g.shape[0], device=g.device)
    g[rows, torch.where(valid, y, 0)] -= valid.float()
    return g.mul_(coef[:, None])


def _accumulate(g, h, weight, start, stop, grad_h, grad_w, grad_b, dtype):
    """A chunk's logit gradient ``g`` (fp32) into the gradients of hidden rows, weight and bias."""
    if grad_b is not None:
        grad_b += g.sum(0)
    if dtype != torch.float32:
        g = g.to(dtype)  # the fp32 chunk is freed here: one chunk alive, not two
    if grad_h is not None:
        torch.mm(g, weight, out=grad_h[start:stop])
    if grad_w is not None:
        if dtype == torch.float32:
            grad_w.addmm_(g.T, h)
        else:
            grad_w += g.T @ h


def _gradient_buffers(hidden, weight, need_h, need_w, need_b):
    # fp32 weights accumulate straight into their gradient (addmm_); others into an fp32 copy.
    return (torch.empty_like(hidden) if need_h else None,
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None,
            torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None)


class _LinearCEScalar(torch.autograd.Function):
    """``scale · Σ_t loss_t`` (zero where ignored) and, in the same pass over the chunks, its
    gradients; backward multiplies them by the upstream gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, chunk_size, scale):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, dtype = hidden.shape[0], hidden.dtype
        grad_h, grad_w, grad_b = _gradient_buffers(hidden, weight, need_h, need_w, need_b)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                h, y = hidden[start:stop], labels[start:stop]
                valid = y != ignore_index
                x = _logits(h, weight, bias)
                lse, target, sums = _chunk_lse(x, y, valid)
                total += torch.where(valid, lse - target, 0.0).sum()
                g = _into_grad_(x.div_(sums[:, None]), y, valid, valid.float() * scale)
                _accumulate(g, h, weight, start, stop, grad_h, grad_w, grad_b, dtype)
                del x, g
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grads = []
        for g, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            grads.append(None if g is None else g.mul_(grad_total.to(g.dtype)).to(dtype))
        return (*grads, None, None, None, None)


class _LinearCE(torch.autograd.Function):
    """Per-token losses (zero where ignored); saves hidden, weight, bias, labels and the lse."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, chunk_size):
        n = hidden.shape[0]
        lse = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        losses = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                y = labels[start:stop]
                valid = y != ignore_index
                x = _logits(hidden[start:stop], weight, bias)
                lse_c, target, _ = _chunk_lse(x, y, valid)
                lse[start:stop] = lse_c
                losses[start:stop] = torch.where(valid, lse_c - target, 0.0)
                del x
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.ignore_index, ctx.chunk_size = ignore_index, chunk_size
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, dtype = hidden.shape[0], hidden.dtype
        grad_h, grad_w, grad_b = _gradient_buffers(hidden, weight, need_h, need_w, need_b)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, ctx.chunk_size):
                stop = min(start + ctx.chunk_size, n)
                h, y = hidden[start:stop], labels[start:stop]
                valid = y != ctx.ignore_index
                coef = torch.where(valid, grad_losses[start:stop].float(), 0.0)
                g = _logits(h, weight, bias).sub_(lse[start:stop, None]).exp_()  # softmax
                _accumulate(_into_grad_(g, y, valid, coef), h, weight, start, stop, grad_h, grad_w,
                            grad_b, dtype)
                del g
        return (grad_h,
                None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype),
                None, None, None)


def _check(hidden, weight, labels, bias, ignore_index, chunk_size, reduction, backend):
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 1:
        raise ValueError("hidden must be a tensor of shape (..., d)")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be (vocab, d); got shape {tuple(getattr(weight, 'shape', ()))}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"hidden's last dim {hidden.shape[-1]} != weight's d {weight.shape[1]} "
                         "(weight is (vocab, d), as nn.Linear and nn.Embedding store it)")
    if not isinstance(labels, torch.Tensor) or labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels shape {tuple(getattr(labels, 'shape', ()))} must equal hidden's "
                         f"leading shape {tuple(hidden.shape[:-1])}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids, got {labels.dtype}")
    if hidden.dtype != weight.dtype or not hidden.dtype.is_floating_point:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one "
                         "floating dtype: cast hidden to the head's dtype")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise ValueError(f"bias must be ({weight.shape[0]},) in {weight.dtype}; got "
                         f"{tuple(bias.shape)} in {bias.dtype}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    vocab = weight.shape[0]
    # Out-of-range ids would otherwise gather garbage (CPU) or assert inside the kernel (CUDA).
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if labels.device.type != "cpu":  # checked on the device: no host sync per micro-batch
        torch._assert_async(~bad.any(), f"a label is outside the vocabulary [0, {vocab}) and is "
                            f"not ignore_index ({ignore_index}): check the tokenizer / head size")
    elif bad.any():
        first = labels[bad][0].item()
        raise ValueError(f"label {first} is outside the vocabulary [0, {vocab}) and is not "
                         f"ignore_index ({ignore_index}): check the tokenizer / head size")


def _cce_losses(hidden, weight, labels, ignore_index):
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
    except ImportError:
        raise ImportError("backend='cce' needs cut-cross-entropy: pip install cut-cross-entropy") from None
    # Its Triton kernel needs CUDA; elsewhere its torch.compile implementation runs (CPU included).
    impl = "cce" if hidden.is_cuda else "torch_compile"
    return cce(hidden, weight, labels, ignore_index=ignore_index, reduction="none", impl=impl)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         bias: torch.Tensor | None = None, ignore_index: int = -100,
                         reduction: str = "mean", normalizer=None, chunk_size: int | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, labels)`` without materialising the logits.

    hidden: (..., d); weight: (V, d) — a head's or a tied embedding's weight, gradients flow to it
    like any use; labels: hidden's leading shape, already aligned (position t scored on labels[t]),
    ``ignore_index`` where no loss is wanted. reduction: "mean" over non-ignored tokens (0, with zero
    gradients, when all are ignored — where ``F.cross_entropy`` gives NaN), "sum", or "none"
    (per-token, zeros where ignored, labels' shape). normalizer: a number or tensor (transformers'
    ``num_items_in_batch``): the loss is the sum divided by it, whatever ``reduction`` says (not
    with "none"). chunk_size: tokens per chunk (default ``default_chunk_size(V)``). backend:
    "auto"/"slimtrain" (this module) or "cce" (Apple's cut-cross-entropy, when installed; no bias).
    The loss is fp32.
    """
    if chunk_size is None and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        chunk_size = default_chunk_size(weight.shape[0])
    _check(hidden, weight, labels, bias, ignore_index, chunk_size, reduction, backend)
    if normalizer is not None and reduction == "none":
        raise ValueError("normalizer divides a summed loss: use reduction='sum' or 'mean' with it")
    if normalizer is not None and not isinstance(normalizer, torch.Tensor):
        if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float)) or not normalizer > 0:
            raise ValueError(f"normalizer must be a positive number or a tensor, got {normalizer!r}")
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = labels.reshape(-1).long()
    if backend == "cce":
        if bias is not None:
            raise ValueError("backend='cce' takes no bias: use backend='slimtrain'")
        losses = _cce_losses(flat_h, weight, flat_y, ignore_index).float()
    elif reduction != "none" and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (hidden, weight, bias)):
        if normalizer is not None:
            scale = 1.0 / (normalizer.to(flat_h.device, torch.float32)
                           if isinstance(normalizer, torch.Tensor) else
                           torch.tensor(float(normalizer), device=flat_h.device))
        elif reduction == "sum":
            scale = torch.ones((), device=flat_h.device)
        else:
            scale = 1.0 / (flat_y != ignore_index).sum().clamp(min=1).float()
        return _LinearCEScalar.apply(flat_h, weight, bias, flat_y, ignore_index, chunk_size, scale)
    else:
        losses = _LinearCE.apply(flat_h, weight, bias, flat_y, ignore_index, chunk_size)
    if reduction == "none":
        return losses.view(labels.shape)
    total = losses.sum()
    if normalizer is not None:
        return total / (normalizer.to(total.device, torch.float32)
                        if isinstance(normalizer, torch.Tensor) else float(normalizer))
    if reduction == "sum":
        return total
    return total / (flat_y != ignore_index).sum().clamp(min=1)


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   bias: torch.Tensor | None = None, ignore_index: int = -100,
                   num_items_in_batch=None, shift_labels: torch.Tensor | None = None,
                   chunk_size: int | None = None, backend: str = "auto") -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` on ``hidden @ weight.T`` without the logits.

    ``hidden`` is the final norm's output (``model.model(...).last_hidden_state``), ``weight`` the
    head's (``model.lm_head.weight``, the embedding's when tied), ``labels`` the unshifted labels
    (``model(input_ids, labels=labels)``'s): position t is scored on labels[t + 1]. Pass
    ``shift_labels`` instead to give aligned labels, and ``num_items_in_batch`` to divide the sum
    by a step's token count, both as transformers does. One difference: when every label is
    ignored the loss is 0 (transformers: NaN).
    """
    if shift_labels is None:
        if not isinstance(labels, torch.Tensor) or labels.dim() < 1:
            raise ValueError("labels must be a tensor of shape (..., sequence)")
        shift_labels = _shift(labels, ignore_index)
    return linear_cross_entropy(hidden, weight, shift_labels, bias=bias, ignore_index=ignore_index,
                                normalizer=num_items_in_batch, chunk_size=chunk_size,
                                backend=backend)
