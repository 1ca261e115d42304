"""The ``slimtrain`` command."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Memory-efficient full-parameter LLM training.")
console = Console()

from .memory.cli import plan_command  # noqa: E402  (the planner's command lives with the planner)

app.command("plan")(plan_command)


@app.command()
def optimizers() -> None:
    """List the registered optimizer recipes with their optimizer-state formula."""
    from . import optim

    table = Table("name", "what it is", "optimizer state")
    for name in optim.available():
        r = optim.recipe(name)
        table.add_row(name, r.summary, r.state_formula)
    console.print(table)


@app.command()
def demo(
    steps: int = typer.Option(150, help="Optimizer steps per method (batch 16 × 128 bytes)."),
    seed: int = typer.Option(0, help="Seed for the model initialisation and the data order."),
    rank: int = typer.Option(32, help="GaLore rank."),
) -> None:
    """Train a small LLaMA with AdamW and GaLore-AdamW side by side on stdlib text; print the results."""
    import torch

    from .demo import run

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for recipe, kwargs in (("adamw", dict(lr=3e-3, weight_decay=0.0)),
                           ("galore-adamw", dict(lr=1e-2, rank=rank, refresh_every=50))):
        console.print(f"training with {recipe} for {steps} steps ...")
        rows.append(run(recipe, steps, seed, **kwargs))
    base = rows[0]
    table = Table("optimizer", "val loss", "optimizer state (MiB)", "× AdamW", "of which projectors (MiB)", "s")
    for r in rows:
        table.add_row(r["recipe"], f"{r['val_loss']:.3f}", f"{r['state_bytes'] / 2**20:.2f}",
                      f"{r['state_bytes'] / base['state_bytes']:.2f}", f"{r['projector_bytes'] / 2**20:.2f}",
                      f"{r['seconds']:.0f}")
    console.print(f"LLaMA-style model, {base['params'] / 1e6:.2f}M parameters, byte-level stdlib text")
    console.print(table)


if __name__ == "__main__":
    app()
