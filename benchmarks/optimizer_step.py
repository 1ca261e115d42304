"""Optimizer step time and state bytes, side by side in one process, on the GaLore paper's LLaMA-60M.

    python benchmarks/optimizer_step.py [--sets galore,apollo,fira,more,sign,adam-like,sgd-like,spike,matrix]
                                        [--rank 128] [--rounds 3]

Every optimizer gets its own copy of the same model (hidden 512, intermediate 1376, 8 layers,
vocab 32000: 58.07M parameters) and the same pre-filled gradients. The recipes are run in *sets*,
each a slimtrain recipe next to its authors' package (where it installs) and torch's AdamW;
the members of a set take turns step by step (interleaved, so machine noise hits them alike), and
one set's models are freed before the next (memory: ~1 GiB per optimizer). Refreshes happen every
``--refresh-every`` steps; those steps are timed separately. Printed per set: state MiB (with the
projectors' share), and median step / refresh-step time as ratios to torch AdamW (foreach) and to
the set's reference package.
"""

from __future__ import annotations

import argparse
import copy
import gc
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


def reference_groups(model, **projection):
    """The param groups of the authors' scripts: attn and mlp Linear weights projected, the rest plain."""
    target = [p for n, p in model.named_parameters() if ("attn" in n or "mlp" in n) and p.dim() == 2]
    ids = {id(p) for p in target}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": target, **projection}]


def state_bytes(opt) -> tuple[int, int]:
    """(total, projectors) bytes of all tensors in the optimizer state; the reference packages'
    projector objects are counted by their matrix."""
    total = projectors = 0
    for st in opt.state.values():
        if not isinstance(st, dict):  # pytorch-optimizer's SPAM keeps its step counts here
            continue
        for key, v in st.items():
            if torch.is_tensor(v):
                total += v.nbytes
                if key in ("basis", "seed", "basis_codes", "basis_scale", "basis_min"):
                    projectors += v.nbytes
            elif torch.is_tensor(getattr(v, "ortho_matrix", None)):
                total += v.ortho_matrix.nbytes
                projectors += v.ortho_matrix.nbytes
    return total, projectors


def _have(module):
    return importlib.util.find_spec(module) is not None


def recipe_sets(args):
    """{set: [(label, factory(model) → optimizer, is_reference)]}"""
    import slimtrain.optim as so

    r, T = args.rank, args.refresh_every
    galore = dict(rank=r, update_proj_gap=T, scale=0.25, proj_type="std")
    sets = {
        "galore": [
            ("slimtrain galore-adamw (randomized)", lambda m: so.GaLoreAdamW(m, rank=r, refresh_every=T), False),
            ("slimtrain galore-adamw (svd)", lambda m: so.GaLoreAdamW(m, rank=r, refresh_every=T, basis="svd"), False),
            ("slimtrain galore-adafactor", lambda m: so.GaLoreAdafactor(m, rank=r, refresh_every=T), False),
            ("slimtrain galore-adafactor rest=adafactor", lambda m: so.GaLoreAdafactor(
                m, rank=r, refresh_every=T, rest="adafactor"), False),
            ("slimtrain galore-lion", lambda m: so.GaLoreLion(m, rank=r, refresh_every=T), False),
        ],
        "apollo": [
            ("slimtrain apollo", lambda m: so.APOLLO(m, rank=r, refresh_every=T), False),
            ("slimtrain apollo-mini", lambda m: so.APOLLOMini(m, refresh_every=T), False),
            ("slimtrain apollo-mini rest=adafactor", lambda m: so.APOLLOMini(m, refresh_every=T, rest="adafactor"), False),
        ],
        "fira": [
            ("slimtrain fira (randomized)", lambda m: so.Fira(m, rank=r, refresh_every=T), False),
            ("slimtrain fira (svd)", lambda m: so.Fira(m, rank=r, refresh_every=T, basis="svd"), False),
            ("slimtrain frugal", lambda m: so.FRUGAL(m, refresh_every=T), False),
        ],
        "more": [
            ("slimtrain q-galore", lambda m: so.QGaLore(m, rank=r, refresh_every=T), False),
            ("slimtrain natural-galore", lambda m: so.NaturalGaLore(m, rank=r, refresh_every=T), False),
        ],
        # the seeds' optimizers (no subspace: their "refresh" steps are ordinary steps)
        # "check_finite=False": without the NaN/Inf guard (one read of the gradients per step),
        # which the packages do not have
        "sign": [("slimtrain lion", lambda m: so.Lion(m), False),
                 ("slimtrain lion check_finite=False", lambda m: so.Lion(m, check_finite=False), False),
                 ("slimtrain sophia", lambda m: so.Sophia(m), False)],
        "adam-like": [("slimtrain adabelief", lambda m: so.AdaBelief(m), False),
                      ("slimtrain adan", lambda m: so.Adan(m), False),
                      ("slimtrain adan check_finite=False", lambda m: so.Adan(m, check_finite=False),
                       False),
                      ("slimtrain adam-mini", lambda m: so.AdamMini(m), False)],
        "sgd-like": [("slimtrain sgd-sai", lambda m: so.SGDSaI(m), False),
                     ("slimtrain sgd-sai check_finite=False", lambda m: so.SGDSaI(m, check_finite=False),
                      False),
                     ("slimtrain adafactor", lambda m: so.Adafactor(m), False)],
        "spike": [("slimtrain spam", lambda m: so.SPAM(m), False),
                  ("slimtrain stable-spam", lambda m: so.StableSPAM(m), False)],
        # issue 19: Muon (bf16 Newton–Schulz on the matrices, AdamW on the rest), MuonQ's 8-bit
        # momentum, GaLore-Muon, SCALE, COSMOS (rank 64), GradNormLoRP beside the GaLore it extends,
        # and LISA with 2 of the 8 blocks active
        "matrix": [("slimtrain muon", lambda m: so.Muon(m), False),
                   ("slimtrain muon ns_dtype=float32", lambda m: so.Muon(m, ns_dtype="float32"), False),
                   ("slimtrain muon state_bits=8", lambda m: so.Muon(m, state_bits=8), False),
                   ("slimtrain muon rank=128", lambda m: so.Muon(m, rank=r, refresh_every=T), False),
                   ("slimtrain scale", lambda m: so.SCALE(m), False),
                   ("slimtrain cosmos", lambda m: so.COSMOS(m), False),
                   ("slimtrain gradnorm-lorp", lambda m: so.GradNormLoRP(m, rank=r, refresh_every=T),
                    False),
                   ("slimtrain galore-adamw", lambda m: so.GaLoreAdamW(m, rank=r, refresh_every=T),
                    False),
                   ("slimtrain lisa layers_active=2", lambda m: so.LISA(m, layers_active=2), False),
                   ("torch Muon + AdamW", _torch_muon, True)],
    }
    _add_seed_references(sets)
    if _have("galore_torch"):
        from galore_torch import GaLoreAdafactor, GaLoreAdamW

        sets["galore"] += [
            ("galore-torch GaLoreAdamW", lambda m: GaLoreAdamW(reference_groups(m, **galore), lr=1e-2), True),
            ("galore-torch GaLoreAdafactor", lambda m: GaLoreAdafactor(
                reference_groups(m, **galore), lr=1e-2, relative_step=False, scale_parameter=False,
                warmup_init=False), True)]
        sets["more"].append(("galore-torch GaLoreAdamW", lambda m: GaLoreAdamW(reference_groups(m, **galore), lr=1e-2), True))
    if _have("apollo_torch"):
        from apollo_torch import APOLLOAdamW

        apollo = dict(rank=r, proj="random", scale_type="channel", scale=1.0, update_proj_gap=T, proj_type="std")
        mini = dict(apollo, rank=1, scale_type="tensor", scale=128.0)
        sets["apollo"] += [
            ("apollo-torch APOLLO", lambda m: APOLLOAdamW(reference_groups(m, **apollo), lr=1e-2), True),
            ("apollo-torch APOLLO-Mini", lambda m: APOLLOAdamW(reference_groups(m, **mini), lr=1e-2), True)]
    if _have("fira"):
        from fira import FiraAdamW

        fira = dict(rank=r, update_proj_gap=T, alpha=0.25, proj_type="std")
        sets["fira"].append(("fira FiraAdamW", lambda m: FiraAdamW(reference_groups(m, **fira), lr=1e-2), True))
    return sets


def _torch_muon(m):
    from slimtrain.bench.peers import PEERS

    return next(p for p in PEERS if p.name == "torch-muon").build(m, 1e-3, 0.1, None, {})


def _add_seed_references(sets):
    """The seeds' packages, as a user would build them (their defaults)."""
    if _have("lion_pytorch"):
        from lion_pytorch import Lion

        sets["sign"].append(("lion-pytorch Lion", lambda m: Lion(m.parameters()), True))
    if _have("sophia_opt"):
        from sophia_opt import SophiaG

        sets["sign"].append(("sophia-opt SophiaG", lambda m: SophiaG(m.parameters()), True))
    if _have("adabelief_pytorch"):
        from adabelief_pytorch import AdaBelief

        sets["adam-like"].append(("adabelief-pytorch AdaBelief", lambda m: AdaBelief(
            m.parameters(), print_change_log=False), True))
    if _have("pytorch_optimizer"):
        import pytorch_optimizer as po

        sets["adam-like"].append(("pytorch-optimizer Adan", lambda m: po.Adan(m.parameters()), True))
        sets["spike"] += [("pytorch-optimizer SPAM", lambda m: po.SPAM(m.parameters()), True),
                          ("pytorch-optimizer StableSPAM", lambda m: po.StableSPAM(m.parameters()), True)]
    if _have("adam_mini"):
        from adam_mini import Adam_mini

        def adam_mini(m):
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                return Adam_mini(m.named_parameters(), dim=512, n_heads=8, verbose=False)
        sets["adam-like"].append(("adam-mini Adam_mini", adam_mini, True))
    if _have("sgd_sai"):
        from sgd_sai import SGD_sai

        sets["sgd-like"].append(("sgd-sai SGD_sai", lambda m: _Quiet(SGD_sai(m.parameters())), True))
    from transformers.optimization import Adafactor

    sets["sgd-like"].append(("transformers Adafactor", lambda m: Adafactor(
        m.parameters(), lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False), True))


class _Quiet:
    """An optimizer whose step prints (sgd-sai's first step), silenced."""

    def __init__(self, opt):
        self.opt, self.state = opt, opt.state

    def step(self):
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            return self.opt.step()


def time_set(members, base, grads, args):
    entries = {"torch AdamW (foreach)": (copy.deepcopy(base), None)}
    entries["torch AdamW (foreach)"] = (entries["torch AdamW (foreach)"][0],
                                        torch.optim.AdamW(entries["torch AdamW (foreach)"][0].parameters(), foreach=True))
    m = copy.deepcopy(base)
    entries["torch AdamW (fused)"] = (m, torch.optim.AdamW(m.parameters(), fused=True))
    for label, factory, _ in members:
        m = copy.deepcopy(base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entries[label] = (m, factory(m))
    for model, _ in entries.values():
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
    times = {name: {"step": [], "refresh": []} for name in entries}
    for k in range(args.rounds * args.refresh_every + 1):
        for name, (_, opt) in entries.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.step()
            elapsed = time.perf_counter() - start
            if k:  # the first step allocates state
                times[name]["refresh" if k % args.refresh_every == 0 else "step"].append(elapsed)
    medians = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    sizes = {n: state_bytes(opt) for n, (_, opt) in entries.items()}
    return medians, sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="galore,apollo,fira,more,sign,adam-like,sgd-like,spike,matrix")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--refresh-every", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="refresh periods to time (steps = rounds × refresh-every)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 gives the steadiest timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = llama_60m()
    n_params = sum(p.numel() for p in base.parameters())
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in base.parameters()]
    sets = recipe_sets(args)
    print(f"LLaMA-60M: {n_params / 1e6:.2f}M parameters, rank {args.rank}, refresh every {args.refresh_every}, "
          f"{args.threads} thread(s), {args.rounds * (args.refresh_every - 1)} steps and {args.rounds} refreshes "
          f"timed per optimizer, torch {torch.__version__}")
    header = ("| set | optimizer | state MiB (projectors) | × AdamW | step × AdamW(foreach) | refresh × AdamW(foreach) "
              "| step × ref | refresh × ref |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for set_name in args.sets.split(","):
        members = sets[set_name]
        medians, sizes = time_set(members, base, grads, args)
        refs = [label for label, _, is_ref in members if is_ref]
        ref = "torch AdamW (foreach)"
        adamw_bytes = sizes[ref][0]
        for name in medians:
            total, proj = sizes[name]
            row = (f"| {set_name} | {name} | {total / 2**20:.1f} ({proj / 2**20:.2f}) | {total / adamw_bytes:.3f} "
                   f"| {medians[name]['step'] / medians[ref]['step']:.2f} "
                   f"| {medians[name]['refresh'] / medians[ref]['step']:.2f} |")
            match = _reference_for(name, refs)
            if match:
                row += (f" {medians[name]['step'] / medians[match]['step']:.2f} "
                        f"| {medians[name]['refresh'] / medians[match]['refresh']:.2f} |")
            else:
                row += " – | – |"
            print(row, flush=True)
        print(f"| {set_name} | (median torch AdamW foreach step: {medians[ref]['step'] * 1e3:.0f} ms) | | | | | | |",
              flush=True)
        gc.collect()


REFERENCE_OF = {  # slimtrain recipe → the authors' package it is compared with
    "galore-adamw": "galore-torch GaLoreAdamW", "galore-adafactor": "galore-torch GaLoreAdafactor",
    "apollo-mini": "apollo-torch APOLLO-Mini", "apollo": "apollo-torch APOLLO", "fira": "fira FiraAdamW",
    # no installable package of their own: compared with the GaLore they extend
    "q-galore": "galore-torch GaLoreAdamW", "natural-galore": "galore-torch GaLoreAdamW",
    "galore-lion": "galore-torch GaLoreAdamW",
    "lion": "lion-pytorch Lion", "sophia": "sophia-opt SophiaG",
    "adabelief": "adabelief-pytorch AdaBelief", "adan": "pytorch-optimizer Adan",
    "adam-mini": "adam-mini Adam_mini", "sgd-sai": "sgd-sai SGD_sai",
    "adafactor": "transformers Adafactor", "spam": "pytorch-optimizer SPAM",
    "stable-spam": "pytorch-optimizer StableSPAM", "muon": "torch Muon + AdamW",
}


def _reference_for(name, refs):
    if not name.startswith("slimtrain "):
        return None
    recipe = name.split()[1]
    target = REFERENCE_OF.get(recipe)
    return target if target in refs else None


if __name__ == "__main__":
    main()
