"""The one copy of Adam in slimtrain.

Every recipe that keeps Adam moments (plain AdamW, GaLore, and later the rest of the family) runs
this kernel. It has two outputs:

* ``params`` given: the update is applied to those tensors exactly as ``torch.optim.AdamW`` does
  (decoupled weight decay first, then ``p -= lr * m_hat / (sqrt(v_hat) + eps)``) — the same
  operations in the same order, so a parameter that is not projected equals torch's AdamW bit for
  bit.
* ``params`` omitted: the normalised directions ``m / (sqrt(v) / sqrt(bc2) + eps)`` are returned
  with their per-tensor factor ``1 / bc1``; the caller maps them back to the full space (GaLore's
  ``alpha * P @ N``) and applies them itself.

Both a for-loop and a foreach (multi-tensor) implementation exist; they agree in float64 (tested).

``eps_mode`` says where eps enters: ``"torch"`` adds it to sqrt(v_hat) (torch.optim.AdamW and the
Adam paper); ``"hf"`` adds it to sqrt(v) before bias correction (transformers' legacy AdamW, which
galore-torch copies). "hf" is "torch" with eps / sqrt(bc2), which is how it is implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS_MODES = ("torch", "hf")


def _bias_corrections(steps: list[Tensor], beta1: float, beta2: float):
    values = [float(s.item()) for s in steps]
    bc1 = [1 - beta1**t for t in values]
    bc2 = [1 - beta2**t for t in values]
    return bc1, bc2


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
    foreach: bool = False,
) -> tuple[list[Tensor], list[float]] | None:
    """Advance Adam by one step; update ``params`` in place, or return (directions, 1/bc1).

    ``steps`` are scalar CPU tensors, incremented here (as torch does).
    """
    if not grads:
        return None if params is not None else ([], [])
    impl = _multi_tensor if foreach else _single_tensor
    return impl(
        grads, exp_avgs, exp_avg_sqs, steps, beta1=beta1, beta2=beta2, eps=eps,
        eps_mode=eps_mode, params=params, lr=lr, weight_decay=weight_decay,
    )


def _single_tensor(grads, exp_avgs, exp_avg_sqs, steps, *, beta1, beta2, eps, eps_mode, params,
                   lr, weight_decay):
    directions, inv_bc1 = [], []
    for i, grad in enumerate(grads):
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], steps[i]
        step_t += 1
        if params is not None and weight_decay != 0:
            params[i].mul_(1 - lr * weight_decay)
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
    if params is not None and weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
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
