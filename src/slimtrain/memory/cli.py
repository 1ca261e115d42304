"""``slimtrain plan``: print what a run needs, or which settings fit a budget."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .units import parse_bytes

console = Console()

_LABELS = {"weights": "weights", "gradients": "gradients", "optimizer_states": "optimizer states",
           "projectors": "projectors", "activations": "activations", "temporaries": "temporaries (peak)"}


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)  # one line, whatever the terminal's width
    raise typer.Exit(code=2)


def plan_command(
    model: str = typer.Option("60m", help="Preset (tiny, small, 60m, 130m, 350m, 1b, 7b; 'llama-7b' works "
                                          "too) or a local directory / config.json in Hugging Face layout."),
    recipe: str = typer.Option("adamw", "--recipe", "--optimizer",
                               help="Optimizer recipe (see `slimtrain optimizers`)."),
    rank: Optional[int] = typer.Option(None, help="Rank for projected recipes (default: the recipe's; "
                                      "with --budget: the ranks h/2, h/4, h/8 are searched)."),
    state_bits: Optional[str] = typer.Option(None, help="Optimizer-state precision, for recipes that take "
                                             "it: 32, 16, 8, 4 or fp8 (with --budget: 32, 8 and fp8 "
                                             "are searched; fp8 is listed only where it plans "
                                             "otherwise than 8)."),
    optim_arg: Optional[list[str]] = typer.Option(None, "--optim-arg", help="Any other recipe option "
                                                  "as KEY=VALUE (repeatable), e.g. layers_active=2 "
                                                  "for lisa."),
    batch_size: int = typer.Option(1, help="Micro-batch size (sequences)."),
    seq_len: int = typer.Option(256, help="Sequence length (tokens)."),
    param_dtype: str = typer.Option("float32", help="Parameter dtype: float32 or bfloat16 (the papers use "
                                                    "pure bfloat16)."),
    autocast: bool = typer.Option(False, help="bf16 autocast over float32 parameters."),
    fused_backward: Optional[bool] = typer.Option(
        None, "--fused-backward/--no-fused-backward", help="Layer-wise updates: one gradient alive at "
        "a time (default: off; with --budget both are searched)."),
    grad_accum: int = typer.Option(1, help="Gradient-accumulation micro-batches (matters with --fused-backward)."),
    fused_refresh_from: str = typer.Option("accumulated", help="With --fused-backward and --grad-accum > 1: a "
                                           "refreshing basis comes from the 'accumulated' gradient (the first "
                                           "step holds every gradient in full) or the 'first' micro-batch."),
    activation_checkpointing: Optional[str] = typer.Option(
        None, "--activation-checkpointing", metavar="POLICY",
        help="Recompute in backward: none, all (each layer keeps its input), every:K (layers 0, K, "
             "2K, …), attn or mlp (that block of every layer). Default none; with --budget none, "
             "attn, every:2, mlp and all are searched unless one is given."),
    loss: Optional[str] = typer.Option(None, "--loss", help="naive (transformers' loss on the logits; "
                                       "the default) or chunked (the logits never held whole; what "
                                       "the trainer's --loss auto uses on CPU, naive on GPUs). With "
                                       "--budget both are searched unless one is given."),
    activation_bits: Optional[str] = typer.Option(None, "--activation-bits", help="none, 8 or fp8: the "
                                                  "decoder layers' saved activations in 8-bit blocks "
                                                  "(default none; with --budget all three are searched "
                                                  "unless one is given)."),
    offload_activations: Optional[bool] = typer.Option(
        None, "--offload-activations/--no-offload-activations", help="GPU runs: the decoder layers' "
        "saved activations in pinned host memory (default off; with --budget searched for a cuda "
        "--device unless one is given; not with --activation-bits, as the trainer refuses)."),
    device: str = typer.Option("cuda", "--device", help="The device planned: cuda (or cuda:N) or cpu. "
                               "Activation offload needs cuda (the trainer refuses it elsewhere)."),
    budget: Optional[str] = typer.Option(None, help="A memory budget such as 24GiB or 80GB: search the recipes, "
                                                    "ranks, state bits, fused backward and the activation "
                                                    "levers (loss, checkpointing, activation bits, offload) "
                                                    "and list the settings that fit, best first, with their "
                                                    "largest batch; a value given for any of them restricts "
                                                    "the search to it."),
    top: int = typer.Option(15, help="With --budget: how many settings to list."),
    world_size: int = typer.Option(1, "--world-size", help="Data-parallel ranks (with --parallel): "
                                   "the plan is one rank's, --batch-size per rank."),
    parallel: Optional[str] = typer.Option(None, "--parallel", help="ddp or fsdp (FSDP2 sharding by "
                                           "rows): weights, gradients, states and communication "
                                           "per rank."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (integer bytes)."),
    paper: bool = typer.Option(False, "--paper", help="Recompute the GaLore paper's memory tables (weights + "
                                                      "BF16 states) and show them beside the paper's figures."),
) -> None:
    """What a training run needs in memory, part by part (GiB = 2^30 bytes) — or, with --budget,
    which recipes and settings fit: for each optimizer setting the activation levers are tried
    cheapest first, and one is listed only where it fits a larger batch than the cheaper ones."""
    from ..userinput import key_values
    from .budget import fitting_settings
    from .planner import PARTS, plan

    if paper:
        from .paper import reconcile, render, render_seven_b, seven_b

        typer.echo(render(reconcile()))
        typer.echo("")
        typer.echo(render_seven_b(seven_b()))
        return
    if top < 1:
        _fail(f"--top must be at least 1, got {top}")
    if parallel is None and world_size != 1:
        _fail("--world-size needs --parallel ddp or --parallel fsdp")
    if budget is not None and parallel is not None:
        _fail("--budget plans one process; drop --parallel (or plan each setting with it)")
    if budget is not None and (batch_size != 1 or grad_accum != 1 or optim_arg):
        _fail("--budget searches the largest batch, without gradient accumulation or --optim-arg; "
              "drop --batch-size, --grad-accum and --optim-arg (or plan one setting with them)")
    if state_bits is not None and state_bits != "fp8":
        if not state_bits.isdigit():
            _fail(f"--state-bits must be 32, 16, 8, 4 or fp8, got {state_bits!r}")
            return
        state_bits = int(state_bits)
    if not (device in ("cpu", "cuda") or device.startswith("cuda:") and device[5:].isdigit()):
        _fail(f"--device must be cuda, cuda:N or cpu, got {device!r}")
    try:
        if budget is not None:
            from .budget import ACTIVATION_BITS, CHECKPOINTING, FUSED, LOSSES, OFFLOAD, STATE_BITS

            limit = parse_bytes(budget)
            given = lambda value, default: default if value is None else value  # noqa: E731
            fits = fitting_settings(
                limit, model, seq_len=seq_len, param_dtype=param_dtype, autocast=autocast,
                recipes=[recipe] if recipe != "adamw" or rank or state_bits else None,
                ranks=None if rank is None else [rank], state_bits=given(state_bits, STATE_BITS),
                fused_backward=given(fused_backward, FUSED),
                checkpointing=given(activation_checkpointing, CHECKPOINTING), loss=given(loss, LOSSES),
                activation_bits=given(activation_bits, ACTIVATION_BITS),
                offload_activations=given(offload_activations, OFFLOAD), device=device)
            _print_fits(fits[:top], limit, model, seq_len, as_json)
            return
        if offload_activations and device == "cpu":
            _fail("--offload-activations moves saved activations from GPU to host memory; on cpu "
                  "they are already in host memory (drop the flag)")
        kwargs = {**key_values(optim_arg),
                  **{k: v for k, v in (("rank", rank), ("state_bits", state_bits)) if v is not None}}
        result = plan(model, recipe, batch_size=batch_size, seq_len=seq_len, param_dtype=param_dtype,
                      autocast=autocast, fused_backward=bool(fused_backward), grad_accum=grad_accum,
                      activation_checkpointing=activation_checkpointing or False,
                      fused_refresh_from=fused_refresh_from, world_size=world_size,
                      parallel=parallel, loss=loss or "naive", activation_bits=activation_bits,
                      offload_activations=bool(offload_activations), **kwargs)
    except (ValueError, OSError) as error:  # the planner's and the config's complaints
        _fail(str(error))
        return
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{model} · {recipe} · batch {batch_size} × {seq_len} · {result.settings['param_dtype']}")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("GB", justify="right")
    for part in PARTS:
        value = getattr(result, part)
        table.add_row(_LABELS[part], f"{value / 2**30:.3f}", f"{value / 1e9:.3f}")
    table.add_row("[bold]total[/bold]", f"[bold]{result.total / 2**30:.3f}[/bold]",
                  f"[bold]{result.total / 1e9:.3f}[/bold]")
    console.print(table)
    if parallel is not None:
        d = result.details
        if parallel == "fsdp":
            console.print(f"Per rank of {world_size} (FSDP2, rank 0's shards). Each step: FSDP2 "
                          f"moves {d['fsdp_comm_bytes_per_step'] / 2**30:.3f} GiB (weights gathered "
                          f"twice, gradients reduce-scattered); the optimizer "
                          f"{d['optimizer_comm_bytes_per_step'] / 2**20:.2f} MiB on an ordinary step "
                          f"(gathering the projected gradients would move "
                          f"{d['naive_projected_comm_bytes_per_step'] / 2**20:.2f} MiB). Temporaries "
                          f"include {d['unsharded'] / 2**30:.3f} GiB of layers gathered whole.")
        else:
            console.print(f"Per rank of {world_size} (DDP: everything replicated); each step "
                          f"all-reduces {d['comm_bytes_per_step'] / 2**30:.3f} GiB of gradients.")
    if result.settings.get("zeroth_order"):
        console.print(f"{result.details['parameters'] / 1e6:.1f}M parameters. Zeroth-order: weights "
                      "+ state + one forward pass — no gradients, nothing saved for backward; "
                      "activations: the logits and one decoder layer at a time; temporaries: the "
                      "loss's fp32 log-softmax of the logits.")
        return
    levers = [text for on, text in (
        (loss == "chunked", "chunked loss (no logits kept; two fp32 chunks of them in backward)"),
        (activation_checkpointing not in (None, False, "none"),
         f"activation checkpointing {activation_checkpointing}"),
        (activation_bits not in (None, "none"), f"saved activations in {activation_bits}-bit codes"
         if activation_bits != "fp8" else "saved activations in fp8 codes"),
        (offload_activations, "saved activations offloaded to host memory")) if on]
    console.print(f"{result.details['parameters'] / 1e6:.1f}M parameters. Activations: the tensors "
                  "transformers' LLaMA saves for backward + logits"
                  + (f", with {'; '.join(levers)}" if levers else "")
                  + "; temporaries: an upper bound on the peak of the backward's loss head or of "
                  "the optimizer step and subspace refresh.")


def _print_fits(fits, limit: int, model: str, seq_len: int, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"budget": limit, "fits": [f.to_dict() for f in fits]}))
        return
    if not fits:
        console.print(f"Nothing fits {limit / 2**30:.2f} GiB for {model} at sequence length {seq_len}, "
                      "even at batch 1. Try bfloat16 parameters, a shorter sequence, or a smaller model.")
        return
    table = Table(title=f"{model}, seq {seq_len}: settings that fit {limit / 2**30:.2f} GiB (best first)")
    for col in ("recipe", "rank", "state bits", "fused backward", "activation levers", "max batch",
                "total GiB", "optimizer GiB"):
        table.add_column(col)
    for f in fits:
        s = f.settings
        table.add_row(f.recipe, str(s.get("rank", "–")), str(s.get("state_bits", "–")),
                      "yes" if s["fused_backward"] else "no", ", ".join(f.levers) or "none",
                      str(f.max_batch), f"{f.total / 2**30:.2f}", f"{f.state_bytes / 2**30:.2f}")
    console.print(table)
    if any(f.host_bytes for f in fits):
        console.print("Offloaded activations are held in pinned host memory besides the budget "
                      "(--json: host_bytes).")
