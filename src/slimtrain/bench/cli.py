"""``slimtrain bench``: run methods side by side and write the report, table and plots."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError

console = Console(soft_wrap=True, highlight=False)

# Method sets. "default" (the committed run in benchmarks/side_by_side) is every recipe with an
# installable reference implementation next to it, the AdamW baselines and the candidates for the
# memory target (≤ 1/3 of AdamW's state); "family" is the rest of the family, LoRA and 4-bit states.
DEFAULT_METHODS = (
    "adamw", "torch-adamw", "adamw-pergroup", "galore-adamw", "galore-torch-adamw",
    "galore-adafactor:rest=adafactor", "galore-torch-adafactor", "apollo", "apollo-torch", "apollo-mini",
    "apollo-torch-mini", "apollo-mini:rest=adafactor", "fira", "fira-adamw", "adamw8bit",
    "torchao-adamw8bit", "bnb-adamw8bit", "galore-adamw8bit", "galore-torch-adamw8bit")
FAMILY_METHODS = (
    "adamw", "adamw-pergroup", "frugal", "q-galore", "natural-galore", "galore-lion", "galore-adafactor",
    "lora", "adamw4bit", "torchao-adamw4bit")
# "seeds": the seeds' optimizers (issue 18), each next to its authors' package.
SEED_METHODS = (
    "adamw", "adamw-pergroup", "lion", "lion-pytorch", "adafactor", "hf-adafactor", "adabelief",
    "adabelief-pytorch", "adan", "po-adan", "adam-mini", "adam-mini-pkg", "sgd-sai", "sgd-sai-pkg",
    "sophia", "sophia-opt", "spam", "po-spam", "stable-spam", "po-stable-spam")
# "matrix": the matrix-aware optimizers and layer sampling (issue 19); torch's Muon beside ours.
MATRIX_METHODS = ("adamw", "adamw-pergroup", "muon", "torch-muon", "cosmos", "scale", "gradnorm-lorp",
                  "galore-adamw", "lisa", "owlore")
# --quick: the whole pipeline (sweep, second seed, a peer adapter, report, plots) in about a minute.
QUICK = dict(methods="adamw,galore-adamw,galore-torch-adamw", tokens=10_240, seq_len=64, batch_size=8,
             trials=2, seeds="0,1", evals=4, eval_batches=2, jobs=2)
# --gpu-protocol: the papers' setting on one GPU in about 10 minutes, under the same protocol as any
# run (10 trials to choose an lr, 3 seeds): LLaMA-60M (58M parameters), sequences of 256 tokens, bf16
# autocast, the papers' lrs as centres; the case (apollo-mini next to the authors' APOLLO-Mini)
# and the AdamW baseline, one worker each, side by side on the GPU.
# The token budget is an estimate, not a measurement (no GPU has run it yet: compare the first run's
# wall time with it and scale --tokens). A training token of LLaMA-60M costs ~6 × 42M (its matrices
# and head) + attention ≈ 0.26 GFLOP; a model this small is bound by kernel launches, so assume 8% of
# an H200's 990 bf16 TFLOP/s for three trials at once: ~100k tokens/s each. A method runs at most
# 10 + 3 − 1 = 12 trials, one after another: 12 × (1.57M tokens / 100k tokens/s + ~15 s to start,
# evaluate and write) ≈ 370 s, plus ~90 s on a first run for the 32k-token BPE and the token cache:
# ~8 min at worst (a noisy method's 12 trials), ~4 min for one that brackets in 3–4 without noise.
GPU_PROTOCOL = dict(methods="adamw,apollo-mini,apollo-torch-mini", model="60m", seq_len=256, batch_size=32,
                    tokens=1_572_864, precision="bf16", centers="papers", trials=10, seeds="0,1,2", evals=8,
                    eval_batches=8, jobs=3)


def expand_methods(text: str) -> list[str]:
    """Method specs, with the keywords ``default``, ``family``, ``seeds``, ``matrix`` (the committed
    benchmarks),
    ``slimtrain`` (every recipe), ``peers`` (every other library and baseline) and ``all``."""
    from .. import optim
    from .methods import available

    keywords = {"default": list(DEFAULT_METHODS), "family": list(FAMILY_METHODS),
                "seeds": list(SEED_METHODS), "matrix": list(MATRIX_METHODS),
                "slimtrain": optim.available(), "all": available(),
                "peers": [m for m in available() if m not in optim.available()]}
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        for spec in keywords.get(item.lower(), [item] if item else []):
            if spec not in out:
                out.append(spec)
    return out


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be a comma-separated list of integers, got {text!r}") from None


def bench_settings(given: dict, quick: bool = False, gpu_protocol: bool = False):
    """The settings of a ``slimtrain bench`` call: a preset's values, the flags given over them."""
    from .spec import BenchSettings

    if quick and gpu_protocol:
        raise UserError("--quick and --gpu-protocol are two presets; pass one of them")
    if gpu_protocol:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--gpu-protocol needs a CUDA GPU and none is visible here; run it on a GPU "
                            "machine, or drop it (the CPU defaults)")
    preset = QUICK if quick else GPU_PROTOCOL if gpu_protocol else {}
    values = {**preset, **{k: v for k, v in given.items() if v is not None}}
    values["methods"] = expand_methods(values.get("methods", "default"))
    if "seeds" in values:
        values["seeds"] = _seeds(values["seeds"])
    return BenchSettings(**values).validate()


def _list_methods() -> None:
    from .methods import available, get

    table = Table("method", "kind", "what it is", "centre lr", "papers' lr", "here")
    for name in available():
        m = get(name)
        table.add_row(name, m.kind, m.summary, f"{m.center_lr:g}", f"{m.paper_lr or m.center_lr:g}",
                      m.unavailable() or "ready")
    console.print(table)


def bench_command(
    methods: Optional[str] = typer.Option(
        None, help="Comma-separated methods (see --list), each NAME or NAME:KEY=VALUE:… (e.g. "
        "apollo-mini:rest=adafactor; lr=X moves the centre of its sweep); keywords: default, family, seeds, matrix, "
        "slimtrain, peers, all. [default: default]"),
    model: Optional[str] = typer.Option(None, help="Preset or local model directory; a directory with "
                                        "weights is fine-tuned from them (as by finetune). [default: tiny]"),
    data: Optional[str] = typer.Option(None, help="Corpus (as for pretrain). Default: the embedded corpus."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer directory (as for pretrain)."),
    text_field: Optional[str] = typer.Option(None, help="JSONL field with the text. [default: text]"),
    prompt_field: Optional[str] = typer.Option(None, help="JSONL field with a prompt masked out of the "
                                               "loss (fine-tuning data, as for finetune)."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of documents held out for validation. "
                                                 "[default: 0.05]"),
    tokens: Optional[int] = typer.Option(None, help="Training tokens per trial. [default: 600000]"),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence. [default: 128]"),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step. [default: 16]"),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (autocast). [default: fp32]"),
    trials: Optional[int] = typer.Option(None, help="The most trials a method spends on choosing its lr, "
                                         "the same for every method: a walk at the first seed until a worse lr "
                                         "is tried on each side of the best, reruns at the second seed where "
                                         "seed noise decides (see slimtrain/bench/sweep.py). [default: 10]"),
    seeds: Optional[str] = typer.Option(None, help="Seeds: the first for the walk, the second for the "
                                        "noise check; the chosen lr runs at all. [default: 0,1,2]"),
    centers: Optional[str] = typer.Option(None, help="Where sweeps start: bench (the authors' lrs, AdamW "
                                          "at 2e-3 for small models) or papers (the papers' LLaMA lrs, AdamW "
                                          "1e-3). [default: bench]"),
    rank: Optional[int] = typer.Option(None, help="Rank of every projecting method and of LoRA. Default: "
                                       "each method's own, capped at hidden/4."),
    refresh_every: Optional[int] = typer.Option(None, help="Subspace refresh period of every projecting "
                                                "method (ours and the packages). Default: each one's (200)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay of every method. [default: 0]"),
    evals: Optional[int] = typer.Option(None, help="Validation evaluations per trial. [default: 8]"),
    eval_batches: Optional[int] = typer.Option(None, help="Validation batches per evaluation. [default: 8]"),
    threads: Optional[int] = typer.Option(None, help="Torch threads per trial. [default: 1]"),
    jobs: Optional[int] = typer.Option(None, help="Trials at a time (one process each). [default: 1]"),
    out: Optional[str] = typer.Option(None, help="Output directory; finished trials in it are reused. "
                                      "Default: runs/bench-<time>."),
    quick: bool = typer.Option(False, "--quick", help="A pipeline check in about a minute: 3 methods, "
                               "2 lrs, 2 seeds, 20 steps of 8 × 64 tokens (flags given still apply)."),
    gpu_protocol: bool = typer.Option(False, "--gpu-protocol", help="The papers' setting on one GPU in "
                                      "about 10 minutes: LLaMA-60M, seq 256, bf16, the papers' lrs as centres, "
                                      "1,572,864 tokens per trial (estimated: ~100k tokens/s for each of 3 "
                                      "trials sharing an H200, at most 12 trials per method), adamw, "
                                      "apollo-mini, apollo-torch-mini, 3 jobs; the same protocol (flags given "
                                      "still apply). Needs CUDA."),
    list_methods: bool = typer.Option(False, "--list", help="List the methods and whether they run here."),
) -> None:
    """Train methods side by side on the same work (model, data, seeds, token budget, number of
    learning rates tried) and write results.jsonl, results.md and plots."""
    from ..cli import _guarded

    def go():
        from . import benchmark

        if list_methods:
            _list_methods()
            return
        given = dict(methods=methods, model=model, data=data, tokenizer=tokenizer, text_field=text_field,
                     prompt_field=prompt_field, val_fraction=val_fraction, tokens=tokens, seq_len=seq_len, batch_size=batch_size,
                     precision=precision, trials=trials, seeds=seeds, centers=centers, rank=rank,
                     refresh_every=refresh_every, weight_decay=weight_decay, evals=evals,
                     eval_batches=eval_batches, threads=threads, jobs=jobs)
        settings = bench_settings(given, quick=quick, gpu_protocol=gpu_protocol)
        target = Path(out) if out else Path("runs") / f"bench-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        report = benchmark(settings, target, console)
        console.print(report.read_text().split("## Targets")[0].split("## Results", 1)[1].strip())
        console.print(f"\nreport: {report}  (plots and results.jsonl beside it)")

    _guarded(go)
