"""State precision (DESIGN §1): how an inner rule's moments are stored, and the one-pass low-bit step.

``state_bits`` of a param group:

* ``None`` — moments in the parameter's dtype: the unchanged kernels of ``adam.py`` (torch's AdamW);
* ``32`` / ``16`` — float32 / bfloat16 moments;
* ``8`` / ``4`` — block-wise quantized moments (``quant.py``): uint8 codes + one float32 absmax per
  block. Tensors with fewer than ``quantize_min_numel`` elements (4096, as bitsandbytes and torchao)
  keep float32 moments: codes would save a few bytes for their error.

Moments stored in the parameter's dtype take the unchanged path. All others go through
``_block_step``: dequantize into a temporary in the compute dtype (float32; float64 for float64
parameters) → ``adam.adam_elementwise`` → requantize, and write the parameter (or return the
direction, on the projected path). It runs on row chunks of the (blocks × block) view — compiled by
torch.compile (one compile per storage configuration, dynamic in the number of rows) unless the group
says ``fused=False``, or eagerly: the same Python function, the reference. On CPU the two give the
same bits (inductor keeps IEEE semantics: no contraction, no reassociation); tested.

``stochastic_rounding=True`` writes bfloat16 parameters by stochastic rounding of the float32
result: the update survives in expectation even when it is below half a bf16 ulp. The random bits
are a hash of (parameter name, step, element index): reproducible, resume-safe, and the same under
compile, with no global RNG.

Only Adam has the one-pass kernel. Any other inner rule can keep low-bit moments through
``load_moment`` / ``store_moment_`` (dequantize → update → requantize, eagerly).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from .._warnings import warn
from .adam import adam_elementwise, elementwise_hyperparameters
from .quant import block_size, dequantize_blocks, quantize_blocks
from .rules import RULES

STATE_BITS = (None, 32, 16, 8, 4)
_CHUNK_ELEMENTS = 1 << 20  # rows per compiled call: temporaries stay in cache, few calls per tensor


@dataclass(frozen=True)
class Storage:
    """How one moment tensor is kept: a plain ``dtype``, or ``bits``-bit codes with map ``kind``."""

    dtype: torch.dtype | None = None
    bits: int = 0
    kind: str = ""

    @property
    def quantized(self) -> bool:
        return self.dtype is None

    def keys(self, name: str) -> tuple[str, ...]:
        """The state keys that hold the moment ``name``."""
        return (f"{name}_codes", f"{name}_absmax") if self.quantized else (name,)

    def shapes(self, name: str, shape) -> dict[str, tuple[int, ...]]:
        shape = tuple(shape)
        if not self.quantized:
            return {name: shape}
        blocks = -(-math.prod(shape) // block_size(self.bits))
        return dict(zip(self.keys(name), (_codes_shape(shape, self.bits), (blocks,))))

    def dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.uint8, torch.float32) if self.quantized else (self.dtype,)

    def nbytes(self, shape) -> int:
        return sum(math.prod(s) * d.itemsize
                   for s, d in zip(self.shapes("m", shape).values(), self.dtypes()))

    def zeros(self, name: str, shape, device) -> dict[str, Tensor]:
        """Zero moments: code 0 with absmax 0 decodes to 0 in every map."""
        return {k: torch.zeros(s, dtype=d, device=device)
                for (k, s), d in zip(self.shapes(name, shape).items(), self.dtypes())}


def _codes_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
    """8-bit codes have the moment's shape; 4-bit ones pair consecutive elements in a byte, so the
    last dimension halves (flat when it is odd: then pairs cross rows)."""
    if bits == 8:
        return shape
    if shape and shape[-1] % 2 == 0:
        return (*shape[:-1], shape[-1] // 2)
    return ((math.prod(shape) + 1) // 2,)


def check_group(group: dict) -> None:
    bits = group["state_bits"]
    if bits not in STATE_BITS:
        raise ValueError(f"state_bits must be one of {STATE_BITS} (None: the parameter's dtype), "
                         f"got {bits!r}")
    floor = group["quantize_min_numel"]
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
        raise ValueError(f"quantize_min_numel must be an integer >= 0, got {floor!r}")


def _storage(group: dict, dtype: torch.dtype, numel: int, signed: bool) -> Storage:
    bits = group["state_bits"]
    if bits is None:
        return Storage(dtype)
    if bits in (32, 16):
        return Storage(torch.float32 if bits == 32 else torch.bfloat16)
    if numel < group["quantize_min_numel"]:
        return Storage(torch.float32)
    return Storage(bits=bits, kind="signed" if signed else "unsigned" if bits == 8 else "linear")


Layout = dict  # moment key → (Storage, moment shape)


def layout(group: dict, rule: str, like: Tensor, shape) -> Layout:
    """How each moment of ``rule`` for an update of ``shape`` is stored (``like``: the parameter,
    or a tensor of its dtype); derived from the group, never stored."""
    kernel = RULES[rule]
    return {key: (_storage(group, like.dtype, math.prod(s), key not in kernel.nonnegative), tuple(s))
            for key, s in kernel.moment_shapes(tuple(shape), group).items()}


def native(group: dict, like: Tensor, lay: Layout) -> bool:
    """Whether the rule can run on the stored moments as they are (all in the parameter's dtype,
    and no stochastic rounding to do)."""
    rounded = group["stochastic_rounding"] and like.dtype == torch.bfloat16
    return not rounded and all(s.dtype == like.dtype for s, _ in lay.values())


def init_moments(state: dict, lay: Layout, device) -> None:
    for key, (storage, shape) in lay.items():
        state.update(storage.zeros(key, shape, device))


def stored_shapes(lay: Layout) -> dict[str, tuple[int, ...]]:
    """State key → shape of every tensor that holds the moments."""
    return {k: v for key, (s, shape) in lay.items() for k, v in s.shapes(key, shape).items()}


def moment_bytes(lay: Layout) -> int:
    return sum(s.nbytes(shape) for s, shape in lay.values())


def _parts(state: dict, name: str, storage: Storage) -> tuple[Tensor, ...]:
    return tuple(state[k] for k in storage.keys(name))


def load_moment(state: dict, name: str, storage: Storage, shape, dtype=torch.float32) -> Tensor:
    """A moment in ``shape``: a float32 copy (``dtype``) when quantized; a plain one converted to
    ``dtype``, or itself with ``dtype=None``."""
    if not storage.quantized:
        return state[name] if dtype is None else state[name].to(dtype)
    codes, absmax = _parts(state, name, storage)
    numel, B = math.prod(shape), block_size(storage.bits)
    flat = _pad(codes.reshape(-1), absmax.numel() * B * storage.bits // 8)
    values = dequantize_blocks(flat.view(absmax.numel(), -1), absmax, storage.kind, storage.bits,
                               dtype or torch.float32)
    return values.reshape(-1)[:numel].reshape(shape)


def store_moment_(state: dict, name: str, storage: Storage, value: Tensor) -> None:
    if not storage.quantized:
        if value is not state[name]:
            state[name].copy_(value)
        return
    codes, absmax = _parts(state, name, storage)
    B = block_size(storage.bits)
    blocks = _pad(value.reshape(-1), absmax.numel() * B).view(-1, B)
    new_codes, new_absmax = quantize_blocks(blocks, storage.kind, storage.bits)
    codes.view(-1).copy_(new_codes.view(-1)[:codes.numel()])
    absmax.copy_(new_absmax)


def run_rule_(group: dict, rule: str, lay: Layout, grad: Tensor, state: dict, count_key: str,
              param: Tensor | None, *, name: str, impl: str):
    """One step of ``rule`` for one tensor whose moments are not in the parameter's dtype.
    Returns (direction, factor) on the projected path (``param`` None), else None.

    Adam takes the one-pass kernel below; any other rule runs on float32 copies of its moments
    (dequantize → rule → requantize) and of a lower-precision parameter."""
    if rule == "adam":
        direction, factor = update_tensor_(group, {k: s for k, (s, _) in lay.items()}, param, grad,
                                           state, state[count_key], name)
        return (direction, factor) if param is None else None
    compute = torch.float64 if grad.dtype == torch.float64 else torch.float32
    moments = {k: load_moment(state, k, s, shape, compute) for k, (s, shape) in lay.items()}
    work = None if param is None else (param if param.dtype == compute else param.to(compute))
    out = RULES[rule].update([grad.to(compute)], [moments], [state[count_key]], group, impl,
                             params=None if work is None else [work])
    for key, (storage, _) in lay.items():
        store_moment_(state, key, storage, moments[key])
    if param is None:
        return out[0][0], out[1][0]
    if work is not param:
        write_rounded_(group, param, work, name, state[count_key])
    return None


def write_rounded_(group: dict, param: Tensor, value: Tensor, name: str, step: Tensor) -> None:
    """param ← value (higher precision), rounded to nearest, or stochastically for bf16 parameters
    with ``stochastic_rounding``."""
    if group["stochastic_rounding"] and param.dtype == torch.bfloat16:
        seed = torch.tensor([_seed_key(name, step), 0], dtype=torch.int64, device=param.device)
        param.copy_(stochastic_round_bf16(value.to(torch.float32), seed))
    else:
        param.copy_(value)


def _pad(flat: Tensor, length: int) -> Tensor:
    if flat.numel() == length:
        return flat
    return torch.cat((flat, flat.new_zeros(length - flat.numel())))


# ------------------------------------------------------------------------------ the one-pass kernel
@dataclass(frozen=True)
class _Config:
    m: Storage
    v: Storage
    compute: torch.dtype
    param: torch.dtype | None  # None: the projected path, which returns the direction
    stochastic: bool


def _load(parts: tuple[Tensor, ...], storage: Storage, dtype: torch.dtype) -> Tensor:
    if storage.quantized:
        return dequantize_blocks(parts[0], parts[1], storage.kind, storage.bits, dtype)
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


def _seed_key(name: str, step: Tensor) -> int:
    return (zlib.crc32(name.encode()) * 1_000_003 + int(step.item())) & 0xFFFFFFFF


def _block_step(target, grad, m_parts, v_parts, hp, seed, cfg: _Config, valid: int | None = None):
    """One Adam step on (rows × block) views; returns (new target or direction, *m parts, *v parts).
    ``hp`` = adam_elementwise's six values, then weight-decay factor and step size (−lr/bc1)."""
    m = _load(m_parts, cfg.m, cfg.compute)
    v = _load(v_parts, cfg.v, cfg.compute)
    m, v, direction = adam_elementwise(grad.to(cfg.compute), m, v, hp[:6])
    if valid is not None:  # a zero-padded tail block: padding must not count in the block's absmax
        keep = torch.arange(m.shape[1], device=m.device) < valid
        m, v = torch.where(keep, m, 0.0), torch.where(keep, v, 0.0)
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
        codes, absmax = _parts(state, name, storage)
        main, tail = _rows(codes.view(-1), B * storage.bits // 8, rows)
        return (main, absmax[:rows]), (tail, absmax[rows:])
    main, tail = _rows(state[name].view(-1), B, rows)
    return (main,), (tail,)


def _padded_row(parts: tuple[Tensor, ...], storage: Storage, B: int) -> tuple[Tensor, ...]:
    if storage.quantized:
        return (_pad(parts[0], B * storage.bits // 8).view(1, -1), parts[1])
    return (_pad(parts[0], B).view(1, B),)


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
    hp += [1.0, 0.0] if target is None else [1 - group["lr"] * group["weight_decay"],
                                             -group["lr"] * inv_bc1]
    hp_t = torch.tensor(hp, dtype=compute, device=x.device)
    stochastic = bool(group["stochastic_rounding"]) and param_dtype == torch.bfloat16
    cfg = _Config(kept["exp_avg"], kept["exp_avg_sq"], compute, param_dtype, stochastic)
    key = _seed_key(name, step)
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
    for start in range(0, rows, chunk):
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
        seed = torch.tensor([key, rows * B], dtype=torch.int64, device=x.device)
        m_in, v_in = _padded_row(m_tail, cfg.m, B), _padded_row(v_tail, cfg.v, B)
        result = _block_step(None if target is None else _pad(out_tail, B).view(1, B),
                             _pad(grad_tail, B).view(1, B), m_in, v_in, hp_t, seed, cfg=cfg,
                             valid=tail)
        for dst, src in zip((out_tail, *m_tail, *v_tail), result):
            dst.copy_(src.reshape(-1)[:dst.numel()])
    if target is None:
        return out_flat.view(x.shape), inv_bc1
    if work is not target:
        target.copy_(work)
    return None, inv_bc1

