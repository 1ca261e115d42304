"""The CPU's fast path for the low-bit Adam step: ``cpu.c``, built at first use.

Why a C kernel: on a CPU the one-pass step is compute-bound (decode, Adam, absmax, encode for two
moments), and torch.compile's code for it ran 6.5–7.7× torch's fused fp32 AdamW — inductor turns
the encoder's float↔int bit casts and any gather into scalar loops. The C file is the eager
reference's float32 arithmetic in the same order (plain C for the auto-vectorizer, plus an AVX-512
path; fp8's block in ``cpu_fp8.h``, plain C plus an AVX2 path), so it gives the same bits (tested).
It covers the 8/4-bit tree maps and fp8's expanded e4m3 codes (``FORMATS``).

It is compiled once per machine with the system's C compiler (``$CC``, else ``cc``/``gcc``/``clang``
— torch.compile needs one too) and cached in slimtrain's cache directory (``paths.cache_dir``), keyed by
the source, the compiler, its flags and the CPU (``-march=native``). No compiler, a failed build,
or ``SLIMTRAIN_NATIVE=0``: ``available()`` is False and the step runs the torch.compile kernel.
``SLIMTRAIN_NATIVE=portable`` runs the plain-C path even where the AVX-512 (tree maps) or AVX2 (fp8)
one exists.
Loaded with ctypes (no torch headers, no ninja: a two-second build); ctypes releases the GIL, so
large tensors are split across ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ..._warnings import warn
from ...paths import cache_dir
from . import fp8
from .codec import TREES, code_table

SOURCE = Path(__file__).with_name("cpu.c")
HEADERS = tuple(Path(__file__).with_name(name) for name in ("cpu_fp8.h", "cpu_avx512.h"))
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
NATIVE_FLAGS = ["-march=native"]  # tried first; some compilers/targets lack it
_ABI = 5
_MIN_BLOCKS_PER_THREAD = 256  # below this a thread costs more than it saves


class _Tree(ctypes.Structure):
    _fields_ = [("R", ctypes.c_float * 8), ("K", ctypes.c_float * 8), ("low", ctypes.c_float * 8),
                ("between", ctypes.c_float * 8), ("zero", ctypes.c_float), ("one", ctypes.c_float)]


class _Args(ctypes.Structure):
    _fields_ = [("target", ctypes.c_void_p), ("grad", ctypes.c_void_p),
                ("direction", ctypes.c_void_p), ("m_codes", ctypes.c_void_p),
                ("v_codes", ctypes.c_void_p), ("m_absmax", ctypes.c_void_p),
                ("v_absmax", ctypes.c_void_p), ("m_table", ctypes.c_void_p),
                ("v_table", ctypes.c_void_p), ("m_expand", ctypes.c_void_p),
                ("v_expand", ctypes.c_void_p),
                ("m_tree", _Tree), ("v_tree", _Tree),
                ("hp", ctypes.c_float * 8), ("index0", ctypes.c_int64), ("key", ctypes.c_uint32),
                ("bits", ctypes.c_int32), ("param_mode", ctypes.c_int32),
                ("grad_bf16", ctypes.c_int32), ("fp8", ctypes.c_int32)]


# (bits, m kind, v kind) the kernel encodes — what storage._storage gives Adam's moments — and its
# fp8 mode: 0 the tree maps, 1 fp8's expanded e4m3 codes, 2 plain e4m3 codes (fp8_expansion=False).
FORMATS = {(8, "signed", "unsigned"): 0, (4, "signed", "linear"): 0,
           (8, "e4m3x", "e4m3x+"): 1, (8, "e4m3", "e4m3+"): 2}


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    text = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = "".join(line for line in f if line.startswith(("model name", "flags", "Features"))
                           )[:4096]
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{text}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(compiler: str, flags: list[str], out: Path) -> bool:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            return False
        os.replace(tmp, out)  # atomic: a concurrent process sees the old file or the new one
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("SLIMTRAIN_NATIVE", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    source = b"".join(path.read_bytes() for path in (SOURCE, *HEADERS))
    for flags in (NATIVE_FLAGS + FLAGS, FLAGS):
        digest = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                            _cpu_signature().encode()])).hexdigest()[:16]
        path = cache_dir("kernels") / f"lowbit_cpu-{digest}.so"
        try:
            if not path.exists() and not _build(compiler, flags, path):
                continue
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        if lib.slimtrain_abi_version() != _ABI:
            continue
        lib.slimtrain_adam_lowbit.argtypes = [ctypes.POINTER(_Args), ctypes.c_int64, ctypes.c_int64,
                                              ctypes.c_int]
        lib.slimtrain_adam_lowbit.restype = ctypes.c_int
        return lib
    warn(f"could not build the C kernel of low-bit optimizer states with {compiler}; using the "
         "torch.compile kernel (same results, slower on CPU). Set SLIMTRAIN_NATIVE=0 to silence")
    return None


def available() -> bool:
    return _library() is not None


@functools.cache
def _table(kind: str, bits: int) -> Tensor:
    """code → map value; for fp8 (18, 256): the expanded values, a row per exponent, then the
    plain e4m3 values (row 17, ``fp8_expansion=False``)."""
    if kind in fp8.KINDS:
        return torch.cat([fp8.expanded_table(), fp8.e4m3_values(torch.arange(256))[None]]).contiguous()
    return code_table(kind, bits).contiguous()


@functools.cache
def _tree(kind: str, bits: int) -> _Tree:
    tree = _Tree()
    if kind not in ("signed", "unsigned"):  # linear and e4m3 encode without a tree
        return tree
    t = TREES[kind, bits]
    for e in t["R"]:
        tree.R[e], tree.K[e], tree.low[e] = t["R"][e], t["K"][e], 2.0**e
    for e, threshold in t["between"].items():
        tree.between[e] = threshold
    tree.zero, tree.one = t["zero"], t["one"]
    return tree


def supports(device: torch.device, compute: torch.dtype, bits_kinds: tuple, param_dtype,
             grad_dtype: torch.dtype) -> bool:
    """Whether the kernel runs this configuration: float32 compute on a CPU, both moments quantized
    with Adam's maps at the same width (``FORMATS``), float32/bfloat16 parameters and gradients."""
    (m_bits, m_kind), (v_bits, v_kind) = bits_kinds
    return (device.type == "cpu" and compute == torch.float32 and m_bits == v_bits
            and (m_bits, m_kind, v_kind) in FORMATS
            and param_dtype in (None, torch.float32, torch.bfloat16)
            and grad_dtype in (torch.float32, torch.bfloat16) and available())


def simd_width() -> int:
    """16 when the built kernel has its AVX-512 path, else 0 (plain C, auto-vectorized)."""
    lib = _library()
    return 0 if lib is None else lib.slimtrain_simd_width()


def fp8_simd_width() -> int:
    """8 when the built kernel has fp8's AVX2 path, else 0 (plain C, auto-vectorized)."""
    lib = _library()
    return 0 if lib is None else lib.slimtrain_fp8_simd_width()


@functools.cache
def _pool() -> ThreadPoolExecutor:
    # One pool for the process; it starts threads only as shares are submitted.
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="slimtrain-lowbit")


def _run(lib, args: _Args, blocks: int) -> None:
    """Blocks [0, blocks) in ``threads`` equal shares: the calling thread runs the first."""
    threads = max(1, min(torch.get_num_threads(), blocks // _MIN_BLOCKS_PER_THREAD))
    edges = [blocks * k // threads for k in range(threads + 1)]
    shares = list(zip(edges[:-1], edges[1:]))
    portable = int(os.environ.get("SLIMTRAIN_NATIVE") == "portable")
    futures = [_pool().submit(lib.slimtrain_adam_lowbit, ctypes.byref(args), lo, hi, portable)
               for lo, hi in shares[1:]]
    lib.slimtrain_adam_lowbit(ctypes.byref(args), *shares[0], portable)
    for f in futures:
        f.result()


def adam_step(bits: int, blocks: int, target: Tensor | None, direction: Tensor | None,
              grad: Tensor, m: tuple[Tensor, Tensor], v: tuple[Tensor, Tensor], hp: Tensor,
              key: int, stochastic: bool, kinds: tuple[str, str] | None = None) -> None:
    """The first ``blocks`` whole blocks of one tensor, in place: moments (codes, absmax[, expand]) and the
    target (flat parameter) or ``direction`` (flat float32). All tensors contiguous; ``hp``: the
    eight float32 hyperparameters of ``kernel._block_step``; ``kinds``: the (m, v) maps, by default
    the tree maps of ``bits`` (a key of ``FORMATS``)."""
    lib = _library()
    m_kind, v_kind = kinds or next(k[1:] for k, mode in FORMATS.items() if k[0] == bits and not mode)
    args = _Args()
    args.target = None if target is None else target.data_ptr()
    args.direction = None if direction is None else direction.data_ptr()
    args.grad = grad.data_ptr()
    args.m_codes, args.m_absmax = m[0].data_ptr(), m[1].data_ptr()
    args.v_codes, args.v_absmax = v[0].data_ptr(), v[1].data_ptr()
    if len(m) == 3:  # expanded fp8: the expansion index per block
        args.m_expand, args.v_expand = m[2].data_ptr(), v[2].data_ptr()
    args.m_table, args.v_table = _table(m_kind, bits).data_ptr(), _table(v_kind, bits).data_ptr()
    args.m_tree, args.v_tree = _tree(m_kind, bits), _tree(v_kind, bits)
    args.hp[:] = hp.tolist()
    args.index0, args.key, args.bits = 0, key, bits
    args.param_mode = (0 if target is None else 1 if target.dtype == torch.float32
                       else 3 if stochastic else 2)
    args.grad_bf16 = int(grad.dtype == torch.bfloat16)
    args.fp8 = int(FORMATS[bits, m_kind, v_kind])
    _run(lib, args, blocks)
