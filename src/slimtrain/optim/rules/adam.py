"""Adam: the rule (``AdamRule``, its hyperparameters) and its kernels.

Every recipe that keeps Adam moments (AdamW, GaLore, APOLLO, Fira, FRUGAL, Q-GaLore, Natural
GaLore's inner step, the 8/4-bit AdamWs) runs these kernels. They have two outputs:

* ``params`` given: the update is applied to those tensors exactly as ``torch.optim.AdamW`` does
  (decoupled weight decay first, then ``p -= lr * m_hat / (sqrt(v_hat) + eps)``) — the same
  operations in the same order, so a parameter that is not projected equals torch's AdamW bit for
  bit.
* ``params`` omitted: the normalised directions ``m / (sqrt(v) / sqrt(bc2) + eps)`` are returned
  with their per-tensor factor ``1 / bc1``; the caller maps them back to the full space (GaLore's
  ``alpha * P @ N``) and applies them itself.

Three implementations: a for-loop (the reference), foreach (multi-tensor), and fused (torch's
``_fused_adamw_`` kernel, one pass per tensor; ~5× faster than foreach on CPU). For-loop and
foreach agree in float64 bit for bit; fused agrees to rounding (with ``eps_mode="hf"`` it is called
with eps/√(1−β₂ᵗ), one call per step count).
A fourth, ``adam_elementwise``, is the same step as a pure function of tensors with tensor
hyperparameters: the low-bit state kernel (``lowbit/kernel.py``) runs it between dequantize and
requantize, eagerly or under torch.compile (Python-float hyperparameters would recompile there);
it is the reference the C kernel (``lowbit/cpu.c``) mirrors operation for operation. So there are
five hand-written moment updates — for-loop, foreach, elementwise, C, AVX-512 — pinned together by
bit-exactness tests (tests/optim/test_contract.py in float64, test_lowbit*.py), as torch keeps three.

``eps_mode`` says where eps enters: ``"torch"`` adds it to sqrt(v_hat) (torch.optim.AdamW and the
Adam paper); ``"hf"`` adds it to sqrt(v) before bias correction (transformers' legacy AdamW, which
galore-torch copies). "hf" is "torch" with eps / sqrt(bc2), which is how it is implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import Hyper, option
from .base import Rule, decay_

EPS_MODES = ("torch", "hf")
ADAMW_LR = 1e-3  # torch's AdamW default: the AdamW recipe's and the matrix-only rules' fallback
IMPLS = ("forloop", "foreach", "fused")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_supported(tensors: list[Tensor], eps_mode: str) -> bool:
    """Whether torch's fused AdamW kernel can run on these tensors."""
    return (eps_mode in EPS_MODES and hasattr(torch, "_fused_adamw_")
            and all(t.dtype in _FUSED_DTYPES and t.device.type in ("cpu", "cuda", "mps", "xpu")
                    and not t.is_sparse for t in tensors))


def bias_corrections(t: float, beta1: float, beta2: float) -> tuple[float, float]:
    """(1 − β₁ᵗ, 1 − β₂ᵗ) at step ``t``: the one place Adam's bias corrections are computed."""
    return 1 - beta1**t, 1 - beta2**t


def _bias_corrections(steps: list[Tensor], beta1: float, beta2: float):
    pairs = [bias_corrections(float(s.item()), beta1, beta2) for s in steps]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _effective_eps(eps: float, bc2_sqrt: list[float], eps_mode: str) -> list[float]:
    if eps_mode == "hf":
        return [eps / s for s in bc2_sqrt]
    return [eps] * len(bc2_sqrt)


def adam_(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    eps_mode: str = "torch",
    params: list[Tensor] | None = None,
    lr: float = 0.0,
    weight_decay: float = 0.0,
    impl: str = "foreach",
) -> tuple[list[Tensor], list[float]] | None:
    """Advance Adam by one step; update ``params`` in place, or return (directions, factors)
    such that the Adam update of tensor i is ``-lr * factors[i] * directions[i]``.

    ``steps`` are scalar float32 CPU tensors, incremented here (as torch does).
    """
    if not grads:
        return None if params is not None else ([], [])
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    kernel = {"forloop": _single_tensor, "foreach": _multi_tensor, "fused": _fused}[impl]
    return kernel(
        grads, exp_avgs, exp_avg_sqs, steps, beta1=beta1, beta2=beta2, eps=eps,
        eps_mode=eps_mode, params=params, lr=lr, weight_decay=weight_decay,
    )


def _single_tensor(grads, exp_avgs, exp_avg_sqs, steps, *, beta1, beta2, eps, eps_mode, params,
                   lr, weight_decay):
    directions, inv_bc1 = [], []
    for i, grad in enumerate(grads):
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], steps[i]
        step_t += 1
        if params is not None:
            decay_([params[i]], lr, weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        (bc1,), (bc2,) = _bias_corrections([step_t], beta1, beta2)
        bc2_sqrt = bc2**0.5
        (eps_t,) = _effective_eps(eps, [bc2_sqrt], eps_mode)
        denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps_t)
        if params is not None:
            params[i].addcdiv_(exp_avg, denom, value=-(lr / bc1))
        else:
            directions.append(denom.reciprocal_().mul_(exp_avg))  # same ops as the foreach path
            inv_bc1.append(1.0 / bc1)
    return None if params is not None else (directions, inv_bc1)


def _multi_tensor(grads, exp_avgs, exp_avg_sqs, steps, *, beta1, beta2, eps, eps_mode, params,
                  lr, weight_decay):
    # Steps live on the CPU (as in torch); foreach on CPU scalars is a plain loop either way.
    torch._foreach_add_(steps, 1)
    if params is not None:
        decay_(params, lr, weight_decay, foreach=True)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    bc1, bc2 = _bias_corrections(steps, beta1, beta2)
    bc2_sqrt = [b**0.5 for b in bc2]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, _effective_eps(eps, bc2_sqrt, eps_mode))
    if params is not None:
        torch._foreach_addcdiv_(params, exp_avgs, denom, [-(lr / b) for b in bc1])
        return None
    # Reuse the denominators' storage for the directions: no extra allocation.
    torch._foreach_reciprocal_(denom)
    torch._foreach_mul_(denom, exp_avgs)
    return denom, [1.0 / b for b in bc1]


def _layout(t: Tensor) -> tuple:
    """The strides that matter: a dimension of size 1 may have any stride without moving data."""
    return tuple(st for size, st in zip(t.shape, t.stride()) if size != 1)


def _fused(grads, exp_avgs, exp_avg_sqs, steps, *, beta1, beta2, eps, eps_mode, params, lr,
           weight_decay):
    # The kernel walks every tensor of a call with the same linear index: layouts must agree.
    for g, m in zip(grads, exp_avgs):
        if _layout(g) != _layout(m):
            raise ValueError("fused Adam needs gradients laid out like their moments; pass "
                             "contiguous gradients or fused=False")
    torch._foreach_add_(steps, 1)
    # Without params, run the kernel on zero "parameters" with lr=1: they come out as
    # -m_hat / (sqrt(v_hat) + eps), i.e. the direction with factor -1.
    targets = params if params is not None else [torch.zeros_like(g) for g in grads]
    # one call per device and dtype (and, with eps_mode="hf", per step count: eps/√(1−β₂ᵗ))
    by_device: dict[tuple, list[int]] = {}
    for i, g in enumerate(grads):
        t = float(steps[i].item()) if eps_mode == "hf" else 0.0
        by_device.setdefault((g.device, g.dtype, t), []).append(i)
    for (device, _, t), idx in by_device.items():
        eps_t = eps if eps_mode == "torch" else _effective_eps(
            eps, [bias_corrections(t, beta1, beta2)[1] ** 0.5], eps_mode)[0]
        torch._fused_adamw_(
            [targets[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
            [exp_avg_sqs[i] for i in idx], [],
            [steps[i].to(device, non_blocking=True) for i in idx],
            lr=lr if params is not None else 1.0, beta1=beta1, beta2=beta2,
            weight_decay=weight_decay if params is not None else 0.0, eps=eps_t,
            amsgrad=False, maximize=False,
        )
    return None if params is not None else (targets, [-1.0] * len(targets))


def adam_elementwise(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, hp: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam step, out of place: returns (exp_avg, exp_avg_sq, direction) with direction
    ``m / (sqrt(v) / sqrt(bc2) + eps)``. ``hp`` = [β₁, 1−β₁, β₂, 1−β₂, sqrt(bc2), eps] as a tensor
    (eps already placed by ``eps_mode``). Plain multiplies and adds instead of ``lerp``/``addcmul``,
    so eager and compiled code round alike (no fused multiply-add on CPU)."""
    beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps = hp.unbind()
    m = exp_avg * beta1 + grad * one_minus_beta1
    v = exp_avg_sq * beta2 + (grad * one_minus_beta2) * grad
    return m, v, m / (sqrt_rn(v) / bc2_sqrt + eps)


def sqrt_rn(x: Tensor) -> Tensor:
    """Correctly rounded square root. Compiled code uses the hardware instruction (exact); torch's
    eager float32 CPU sqrt can be an ulp off, so eagerly it goes through float64 (exact after
    rounding back), and the eager reference and the compiled kernel agree bit for bit."""
    if torch.compiler.is_compiling() or x.dtype != torch.float32:
        return x.sqrt()
    return x.double().sqrt().to(x.dtype)


def elementwise_hyperparameters(step: Tensor, *, beta1: float, beta2: float, eps: float,
                                eps_mode: str) -> tuple[list[float], float]:
    """(``hp`` of ``adam_elementwise``, ``1 / bc1``) at a step count (already incremented)."""
    (bc1,), (bc2,) = _bias_corrections([step], beta1, beta2)
    bc2_sqrt = bc2**0.5
    (eps_t,) = _effective_eps(eps, [bc2_sqrt], eps_mode)
    return [beta1, 1 - beta1, beta2, 1 - beta2, bc2_sqrt, eps_t], 1.0 / bc1


@dataclass
class AdamHyper(Hyper):
    betas: tuple = option((0.9, 0.999), "decay rates of the first and second moments",
                          kind="betas")
    eps: float = option(1e-8, "added to the denominator", low=0)
    eps_mode: str = option("torch", "where eps enters: 'torch' adds it to √v̂ (torch's AdamW), "
                           "'hf' to √v before bias correction (transformers' legacy AdamW, "
                           "galore-torch)", choices=EPS_MODES)


class AdamRule(Rule):
    """Adam; on the unprojected path bit-identical to ``torch.optim.AdamW``."""

    name = "adam"
    Hyper = AdamHyper
    implementations = IMPLS
    reprojectable = {"exp_avg": "first", "exp_avg_sq": "second"}
    nonnegative = ("exp_avg_sq",)

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape), "exp_avg_sq": tuple(shape)}

    def step_size(self, count, group):
        bc1, bc2 = bias_corrections(count, *group["betas"])
        return math.sqrt(bc2) / bc1

    def update(self, grads, moments, counts, group, impl, params=None, inputs=None):
        beta1, beta2 = group["betas"]
        return adam_(
            grads, [m["exp_avg"] for m in moments], [m["exp_avg_sq"] for m in moments], counts,
            beta1=beta1, beta2=beta2, eps=group["eps"], eps_mode=group["eps_mode"], params=params,
            lr=group["lr"], weight_decay=group["weight_decay"], impl=impl)


ADAM = AdamRule()
