"""Optimizer step time and state bytes, side by side in one process, on the GaLore paper's LLaMA-60M.

    python benchmarks/optimizer_step.py [--rank 128] [--rounds 4] [--threads 1]

Every optimizer gets its own copy of the same model (hidden 512, intermediate 1376, 8 layers,
vocab 32000: 58.07M parameters) and the same pre-filled gradients. Optimizers take turns step by
step (interleaved, so machine noise hits all of them alike). Refreshes happen every
``--refresh-every`` steps; those steps are timed separately. Printed: state MiB, median step and
refresh-step time as ratios to torch AdamW (foreach) and to galore-torch where it is installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import time
import warnings

import torch


def llama_60m():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                         rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def galore_groups(model, rank, refresh_every):
    """The param groups of galore-torch's README / torchrun_main.py (attn and mlp Linear weights)."""
    target = [p for n, p in model.named_parameters() if ("attn" in n or "mlp" in n) and p.dim() == 2]
    ids = {id(p) for p in target}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest},
            {"params": target, "rank": rank, "update_proj_gap": refresh_every, "scale": 0.25, "proj_type": "std"}]


def state_bytes(opt) -> int:
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                total += v.nbytes
            elif hasattr(v, "ortho_matrix") and torch.is_tensor(v.ortho_matrix):  # galore-torch projector
                total += v.ortho_matrix.nbytes
    return total


def build(args, base):
    import slimtrain.optim as so

    def fresh():
        return copy.deepcopy(base)

    entries = {}
    m = fresh()
    entries["torch AdamW (foreach)"] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True))
    m = fresh()
    entries["torch AdamW (fused)"] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True))
    m = fresh()
    entries["slimtrain AdamW"] = (m, so.AdamW(m, lr=1e-3))
    m = fresh()
    entries["slimtrain GaLoreAdamW (randomized)"] = (m, so.GaLoreAdamW(
        m, lr=1e-2, rank=args.rank, refresh_every=args.refresh_every, basis="randomized"))
    m = fresh()
    entries["slimtrain GaLoreAdamW (svd)"] = (m, so.GaLoreAdamW(
        m, lr=1e-2, rank=args.rank, refresh_every=args.refresh_every, basis="svd"))
    if importlib.util.find_spec("galore_torch"):
        from galore_torch import GaLoreAdamW

        m = fresh()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entries["galore-torch GaLoreAdamW"] = (m, GaLoreAdamW(galore_groups(m, args.rank, args.refresh_every), lr=1e-2))
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--refresh-every", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4, help="refresh periods to time (steps = rounds × refresh-every)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 gives the steadiest timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = llama_60m()
    n_params = sum(p.numel() for p in base.parameters())
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in base.parameters()]
    entries = build(args, base)
    for model, _ in entries.values():
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()

    times = {name: {"step": [], "refresh": []} for name in entries}
    total_steps = args.rounds * args.refresh_every + 1
    for k in range(total_steps):
        for name, (_, opt) in entries.items():
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if k == 0:
                continue  # first step allocates state
            times[name]["refresh" if k % args.refresh_every == 0 else "step"].append(elapsed)

    ref = "torch AdamW (foreach)"
    galore = "galore-torch GaLoreAdamW" if "galore-torch GaLoreAdamW" in entries else None
    med = {n: {k: statistics.median(v) if v else float("nan") for k, v in t.items()} for n, t in times.items()}
    ref_bytes = state_bytes(entries[ref][1])
    print(f"LLaMA-60M: {n_params / 1e6:.2f}M parameters, rank {args.rank}, {args.threads} thread(s), "
          f"{len(times[ref]['step'])} steps and {len(times[ref]['refresh'])} refreshes timed per optimizer, "
          f"torch {torch.__version__}")
    header = f"| optimizer | state MiB | × AdamW | step × AdamW(foreach) | refresh × AdamW(foreach) |"
    if galore:
        header += " step × galore-torch | refresh × galore-torch |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name, (_, opt) in entries.items():
        b = state_bytes(opt)
        row = (f"| {name} | {b / 2**20:.1f} | {b / ref_bytes:.3f} | {med[name]['step'] / med[ref]['step']:.2f} "
               f"| {med[name]['refresh'] / med[ref]['step']:.2f} |")
        if galore:
            row += (f" {med[name]['step'] / med[galore]['step']:.2f} | "
                    f"{med[name]['refresh'] / med[galore]['refresh']:.2f} |")
        print(row)
    print(f"(median torch AdamW foreach step: {med[ref]['step'] * 1e3:.0f} ms; ratios are what to compare)")


if __name__ == "__main__":
    main()
