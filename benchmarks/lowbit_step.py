"""Low-bit optimizer states: state bytes and step time, side by side in one process, on the GaLore
paper's LLaMA-60M shapes (``slimtrain.models.preset_config("60m")``).

    python benchmarks/lowbit_step.py [--rounds 8] [--threads 1] [--rank 128] [--skip "torchao AdamW4bit" ...]
                                     [--device cuda]

Every optimizer gets its own copy of the parameters and the same pre-filled gradients (shared, read
only). Optimizers take turns step by step, so machine noise hits all alike; the first two steps of
each (state allocation, torch.compile) are not timed. Printed per optimizer: state MiB and its ratio
to torch AdamW's fp32 state, median step time as ratios to torch AdamW (fused) and (foreach), and,
for the elementwise optimizers, the achieved memory bandwidth of the step — the bytes it must move
(read and write) over its median time — as a fraction of a plain large-tensor copy timed in the same
run (the machine's practical limit).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings

import torch

BYTES_PER_ELEMENT = {  # bytes moved per parameter element by one step (read + write)
    "fp32": 4 + 4 + 4 + 2 * 4 + 2 * 4,        # grad; param r/w; m r/w; v r/w
    "8bit": 4 + 4 + 4 + 2 * 2 * 1,            # grad; param r/w; two codes r/w (+ scales, 1/64)
    "4bit": 4 + 4 + 4 + 2 * 2 * 0.5,
    "fp8": 4 + 4 + 4 + 2 * 2 * 1,             # as 8-bit: e4m3 codes
}


def named_parameters(model):
    return [(n, p) for n, p in model.named_parameters()]


def copy_params(named):
    return [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]


def sync(device: str) -> None:
    """Wait for the device: a CUDA step is asynchronous, and its time is when its kernels end."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def state_bytes(opt) -> int:
    total = 0
    for st in opt.state.values():
        for value in st.values():
            if not torch.is_tensor(value):
                continue
            if hasattr(value, "__tensor_flatten__") and type(value) is not torch.Tensor:
                names, _ = value.__tensor_flatten__()  # torchao's quantized-state subclass
                total += sum(getattr(value, n).nbytes for n in names)
            else:
                total += value.nbytes
    return total


def build(args, named):
    import slimtrain.optim as so

    entries = {}  # name → (optimizer, bytes-per-element kind or None, its parameters)

    def add(name, factory, kind):
        if name in args.skip:
            return
        params = copy_params(named)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entries[name] = (factory(params), kind, [p for _, p in params])

    plain = lambda params: [p for _, p in params]  # noqa: E731
    add("torch AdamW (foreach)", lambda ps: torch.optim.AdamW(plain(ps), foreach=True), "fp32")
    add("torch AdamW (fused)", lambda ps: torch.optim.AdamW(plain(ps), fused=True), "fp32")
    add("slimtrain AdamW8bit", lambda ps: so.AdamW8bit(ps), "8bit")
    add("slimtrain AdamW4bit", lambda ps: so.AdamW4bit(ps), "4bit")
    add("slimtrain AdamW fp8", lambda ps: so.AdamW(ps, state_bits="fp8"), "fp8")
    # without the pipeline's gradient-norm pass (NaN/Inf skip, opt.grad_norm): the kernel alone
    add("slimtrain AdamW fp8 (check_finite=False)",
        lambda ps: so.AdamW(ps, state_bits="fp8", check_finite=False), "fp8")
    # plain e4m3 codes (torchao's), no dynamic range expansion: its square roots not paid
    add("slimtrain AdamW fp8 (fp8_expansion=False)",
        lambda ps: so.AdamW(ps, state_bits="fp8", fp8_expansion=False), "fp8")
    add("slimtrain GaLoreAdamW8bit", lambda ps: so.GaLoreAdamW8bit(
        ps, rank=args.rank, refresh_every=10**6), None)
    if importlib.util.find_spec("torchao"):
        from torchao.optim import AdamW4bit, AdamW8bit, AdamWFp8

        add("torchao AdamW8bit", lambda ps: AdamW8bit(plain(ps)), "8bit")
        add("torchao AdamW4bit", lambda ps: AdamW4bit(plain(ps)), "4bit")
        add("torchao AdamWFp8", lambda ps: AdamWFp8(plain(ps)), "fp8")
    if importlib.util.find_spec("bitsandbytes"):
        import bitsandbytes as bnb

        add("bitsandbytes AdamW8bit", lambda ps: bnb.optim.AdamW8bit(plain(ps)), "8bit")
    return entries


def copy_bandwidth(numel: int, device: str, repeats: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` on float32 tensors of ``numel`` elements."""
    src, dst = torch.randn(numel, device=device), torch.empty(numel, device=device)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per optimizer")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 gives the steadiest timings)")
    parser.add_argument("--rank", type=int, default=128, help="GaLore rank (no refresh during the run)")
    parser.add_argument("--skip", nargs="*", default=[], help="optimizer names to leave out")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import LlamaForCausalLM

    from slimtrain.models import preset_config

    torch.manual_seed(0)
    named = named_parameters(LlamaForCausalLM(preset_config("60m")).to(args.device))
    numel = sum(p.numel() for _, p in named)
    gen = torch.Generator().manual_seed(0)
    grads = [(torch.randn(p.shape, generator=gen) * 1e-3).to(args.device) for _, p in named]
    entries = build(args, named)
    for _, _, params in entries.values():
        for p, g in zip(params, grads):
            p.grad = g  # shared: optimizers only read gradients

    warmup = 2
    times = {name: [] for name in entries}
    bandwidth = []
    for k in range(warmup + args.rounds):
        for name, (opt, _, _) in entries.items():
            sync(args.device)
            start = time.perf_counter()
            opt.step()
            sync(args.device)
            if k >= warmup:
                times[name].append(time.perf_counter() - start)
        if k >= warmup:
            bandwidth.append(copy_bandwidth(numel // 4, args.device))  # 58 MB each way, past the caches

    med = {name: statistics.median(t) for name, t in times.items()}
    copy_bw = statistics.median(bandwidth)
    fused, foreach = "torch AdamW (fused)", "torch AdamW (foreach)"
    ref_bytes = state_bytes(entries[fused][0])
    from slimtrain.optim.lowbit import native as lowbit_native

    kernel = ("C, AVX-512" if lowbit_native.simd_width() == 16 else "C, auto-vectorized"
              ) if lowbit_native.available() and args.device == "cpu" else "torch.compile"
    if kernel.startswith("C"):
        kernel += "; fp8: " + ("AVX2" if lowbit_native.fp8_simd_width() == 8 else "auto-vectorized")
    where = (f"{args.threads} thread(s)" if args.device == "cpu"
             else torch.cuda.get_device_name(args.device))
    print(f"LLaMA-60M shapes: {numel / 1e6:.2f}M parameters, {where}, {args.rounds} "
          f"timed steps per optimizer, torch {torch.__version__}; plain copy: {copy_bw / 1e9:.1f} GB/s; "
          f"slimtrain's low-bit kernel: {kernel}")
    print("| optimizer | state MiB | state × AdamW | step × AdamW (fused) | step × AdamW (foreach) "
          "| step ms | bandwidth GB/s | × copy |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (opt, kind, _) in entries.items():
        b = state_bytes(opt)
        bw = "" if kind is None else f"{BYTES_PER_ELEMENT[kind] * numel / med[name] / 1e9:.1f}"
        frac = "" if kind is None else f"{BYTES_PER_ELEMENT[kind] * numel / med[name] / copy_bw:.2f}"
        print(f"| {name} | {b / 2**20:.1f} | {b / ref_bytes:.3f} | {med[name] / med[fused]:.2f} | "
              f"{med[name] / med[foreach]:.2f} | {med[name] * 1e3:.0f} | {bw} | {frac} |")
    print("Targets: 8-bit and fp8 state ≤ 0.26× AdamW's; 8-bit and fp8 step ≤ 1.0× torch fused AdamW's.")


if __name__ == "__main__":
    main()
