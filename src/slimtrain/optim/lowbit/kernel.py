"""The one-pass low-bit Adam step (``storage.py`` stores the moments; this moves them).

``_block_step`` on (rows × block) views of a tensor: dequantize its moments into temporaries in the
compute dtype (float32; float64 for float64 parameters) → ``rules.adam.adam_elementwise`` → requantize,
and write the parameter (or return the direction, on the projected path). ``update_tensor_`` runs it
on row chunks (2²⁰ elements) — compiled by torch.compile, once per storage configuration with the
number of rows dynamic, writing in place — unless the group says ``fused=False``; then the same
Python function runs eagerly: the reference. On CPU the two give the same bits (inductor keeps IEEE
semantics, no contraction; see ``adam.sqrt_rn``); tested. A 1-row chunk and the zero-padded tail
block of a partial last block run eagerly.

``stochastic_round_bf16``: bfloat16 parameters written by stochastic rounding of the float32 result
— the update survives in expectation even below half a bf16 ulp. The random bits are a hash of
(parameter name, step, element index): reproducible, resume-safe, the same under compile, no
global RNG.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..._warnings import warn
from ..rules.adam import adam_elementwise, elementwise_hyperparameters
from ..rules.base import decay_factor
from ..util import name_seed, pad_flat
from . import native
from .codec import block_size, dequantize_blocks, quantize_blocks

if TYPE_CHECKING:
    from .storage import Storage

_CHUNK_ELEMENTS = 1 << 20  # elements per compiled call: temporaries stay in cache, few calls per tensor


@dataclass(frozen=True)
class _Config:
    m: Storage
    v: Storage
    compute: torch.dtype
    param: torch.dtype | None  # None: the projected path, which returns the direction
    stochastic: bool


def _load(parts: tuple[Tensor, ...], storage: Storage, dtype: torch.dtype) -> Tensor:
    if storage.quantized:
        return dequantize_blocks(*parts[:2], storage.kind, storage.bits, dtype, *parts[2:])
    return parts[0].to(dtype)


def _save(value: Tensor, storage: Storage) -> tuple[Tensor, ...]:
    if storage.quantized:
        return quantize_blocks(value, storage.kind, storage.bits)
    return (value.to(storage.dtype),)


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mix (xorshift-multiply, constants < 2**31 so int64 never overflows)."""
    mask = 0xFFFFFFFF
    x = x & mask
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & mask
    x = x ^ (x >> 15)
    x = (x * 0x1B873593) & mask
    return x ^ (x >> 16)


def stochastic_round_bf16(x: Tensor, seed: Tensor) -> Tensor:
    """float32 → bfloat16, rounding up with probability equal to the dropped fraction.
    ``seed`` = [key, index of x's first element] (int64)."""
    index = torch.arange(x.numel(), device=x.device).view(x.shape) + seed[1]
    noise = (_hash32(index ^ seed[0]) & 0xFFFF).to(torch.int32)
    bits = (x.view(torch.int32) + noise) & -65536  # add below the kept bits, then truncate
    return bits.view(torch.float32).to(torch.bfloat16)


def seed_key(name: str, step: Tensor) -> int:
    """The 32-bit key of stochastic rounding's random bits for ``name`` at ``step``."""
    return name_seed(name, int(step.item())) & 0xFFFFFFFF


def _block_step(target, grad, m_parts, v_parts, hp, seed, cfg: _Config):
    """One Adam step on (rows × block) views; returns (new target or direction, *m parts, *v parts).
    ``hp`` = adam_elementwise's six values, then weight-decay factor and step size (−lr/bc1)."""
    m = _load(m_parts, cfg.m, cfg.compute)
    v = _load(v_parts, cfg.v, cfg.compute)
    m, v, direction = adam_elementwise(grad.to(cfg.compute), m, v, hp[:6])
    if cfg.param is None:
        out = direction
    else:
        out = target.to(cfg.compute) * hp[6] + hp[7] * direction
        if cfg.stochastic:
            out = stochastic_round_bf16(out, seed)
        else:
            out = out.to(cfg.param)
    return (out, *_save(m, cfg.m), *_save(v, cfg.v))


_COMPILED: dict[_Config, object] = {}
compile_failed = False  # set when torch.compile is unusable here; the eager path then runs


def _step_in_place(target, grad, m_parts, v_parts, hp, seed, cfg: _Config):
    """``_block_step`` writing its results into its inputs (compiled: stored once, no copies)."""
    result = _block_step(target, grad, m_parts, v_parts, hp, seed, cfg)
    for dst, src in zip((target, *m_parts, *v_parts), result):
        if dst is not None:
            dst.copy_(src)
    return result[0]


def _compiled(cfg: _Config):
    if cfg not in _COMPILED:
        _COMPILED[cfg] = torch.compile(functools.partial(_step_in_place, cfg=cfg), fullgraph=True)
    return _COMPILED[cfg]


def _call(cfg: _Config, args: tuple, compiled: bool):
    global compile_failed
    target, grad, m_parts, v_parts = args[:4]
    if compiled and not compile_failed and grad.shape[0] >= 2:  # 1 row would specialise
        for t in (target, grad, *m_parts, *v_parts):
            if t is not None:
                torch._dynamo.mark_dynamic(t, 0)  # one compile for every number of rows
        try:
            with torch._dynamo.utils.disable_cache_limit():  # one compile per configuration
                return _compiled(cfg)(*args), True
        except (torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.InductorError) as err:
            compile_failed = True
            warn(f"torch.compile failed ({type(err).__name__}); low-bit optimizer states use the "
                 "eager path (same results, slower). Install a C++ compiler to get the fast path")
    return _block_step(*args, cfg=cfg), False


def _rows(flat: Tensor, per_row: int, rows: int) -> tuple[Tensor, Tensor]:
    """(the first ``rows`` rows of ``per_row`` elements as a 2-D view, the rest as 1-D)."""
    return flat[:rows * per_row].view(rows, per_row), flat[rows * per_row:]


def _storage_rows(state: dict, name: str, storage: Storage, rows: int, B: int):
    if storage.quantized:
        codes, *per_block = storage.parts(state, name)  # absmax[, expand]: one value per block
        main, tail = _rows(codes.view(-1), B * storage.bits // 8, rows)
        return (main, *(t[:rows] for t in per_block)), (tail, *(t[rows:] for t in per_block))
    main, tail = _rows(state[name].view(-1), B, rows)
    return (main,), (tail,)


def _padded_row(parts: tuple[Tensor, ...], storage: Storage, B: int) -> tuple[Tensor, ...]:
    if storage.quantized:
        return (pad_flat(parts[0], B * storage.bits // 8).view(1, -1), *parts[1:])
    return (pad_flat(parts[0], B).view(1, B),)


def update_tensor_(group: dict, kept: dict[str, Storage], target: Tensor | None, x: Tensor,
                   state: dict, step: Tensor, name: str) -> tuple[Tensor | None, float]:
    """Advance one tensor's Adam moments by one step (``step`` is incremented here).

    ``target`` given: the update is applied to it (decoupled weight decay, lr) and (None, 1/bc1) is
    returned. ``target`` None: ``x`` is a projected gradient and (direction, 1/bc1) is returned, the
    Adam update being ``-lr · direction / bc1``.
    """
    step += 1
    beta1, beta2 = group["betas"]
    hp, inv_bc1 = elementwise_hyperparameters(step, beta1=beta1, beta2=beta2, eps=group["eps"],
                                              eps_mode=group["eps_mode"])
    param_dtype = None if target is None else target.dtype
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    hp += [1.0, 0.0] if target is None else [decay_factor(group["lr"], group["weight_decay"]),
                                             -group["lr"] * inv_bc1]
    hp_t = torch.tensor(hp, dtype=compute, device=x.device)
    stochastic = bool(group["stochastic_rounding"]) and param_dtype == torch.bfloat16
    cfg = _Config(kept["exp_avg"], kept["exp_avg_sq"], compute, param_dtype, stochastic)
    key = seed_key(name, step)
    compiled = group["fused"] is not False

    B = max(block_size(s.bits) if s.quantized else 256 for s in kept.values())
    numel = x.numel()
    rows = numel // B
    work = None if target is None else (target if target.is_contiguous() else target.contiguous())
    out_flat = x.new_empty(numel, dtype=compute) if target is None else work.view(-1)
    grad_main, grad_tail = _rows(x.contiguous().view(-1), B, rows)
    out_main, out_tail = _rows(out_flat, B, rows)
    m_main, m_tail = _storage_rows(state, "exp_avg", cfg.m, rows, B)
    v_main, v_tail = _storage_rows(state, "exp_avg_sq", cfg.v, rows, B)

    chunk = max(_CHUNK_ELEMENTS // B, 2)
    if compiled and rows and native.supports(
            x.device, compute, ((cfg.m.bits, cfg.m.kind), (cfg.v.bits, cfg.v.kind)), param_dtype,
            x.dtype):
        native.adam_step(cfg.m.bits, rows, None if target is None else out_flat,
                                out_flat if target is None else None, grad_main,
                                cfg.m.parts(state, "exp_avg"), cfg.v.parts(state, "exp_avg_sq"),
                                hp_t, key, stochastic, (cfg.m.kind, cfg.v.kind))
        rows_done = rows
    else:
        rows_done = 0
    for start in range(rows_done, rows, chunk):
        rs = slice(start, start + chunk)
        seed = torch.tensor([key, start * B], dtype=torch.int64, device=x.device)
        m_in, v_in = tuple(t[rs] for t in m_main), tuple(t[rs] for t in v_main)
        result, written = _call(cfg, (None if target is None else out_main[rs], grad_main[rs], m_in,
                                      v_in, hp_t, seed), compiled)
        if written:  # the compiled kernel stored the target and the moments in place
            if target is None:
                out_main[rs].copy_(result)
            continue
        for dst, src in zip((out_main[rs], *m_in, *v_in), result):
            dst.copy_(src)
    tail = numel - rows * B
    if tail:
        # The partial last block, zero-padded. Padding cannot raise the block's absmax: it starts
        # as code 0 (value 0, or a V of at most absmax/16) with a zero gradient, so it only decays
        # while the block's largest real V decays no faster. Only real elements are copied back.
        seed = torch.tensor([key, rows * B], dtype=torch.int64, device=x.device)
        m_in, v_in = _padded_row(m_tail, cfg.m, B), _padded_row(v_tail, cfg.v, B)
        result = _block_step(None if target is None else pad_flat(out_tail, B).view(1, B),
                             pad_flat(grad_tail, B).view(1, B), m_in, v_in, hp_t, seed, cfg=cfg)
        for dst, src in zip((out_tail, *m_tail, *v_tail), result):
            dst.copy_(src.reshape(-1)[:dst.numel()])
    if target is None:
        return out_flat.view(x.shape), inv_bc1
    if work is not target:
        target.copy_(work)
    return None, inv_bc1

