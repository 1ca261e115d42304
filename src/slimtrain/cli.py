"""The ``slimtrain`` command."""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .peer_logs import quiet_peer_logs

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Memory-efficient full-parameter LLM training.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")
# soft_wrap: log lines stay whole when output goes to a file or a pipe.
console = Console(soft_wrap=True, highlight=False)


def _cli_warning(message, category, filename, lineno, line=None) -> str:
    """On the command line a warning is one line about what the user asked for: the source line of
    slimtrain (or of typer, whose frame is the last outside it) means nothing to them."""
    if issubclass(category, UserWarning):
        return f"warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


def _guarded(action: Callable[[], object]) -> None:
    """Run ``action``; user errors become one line on stderr and exit code 2 (no traceback,
    unless SLIMTRAIN_DEBUG is set); Ctrl-C exits with 130; warnings print as ``warning: …``;
    the peer libraries' known start-up logs are hidden (``peer_logs``)."""
    from .train import Interrupted
    from .train.session import JobFailed

    previous, warnings.formatwarning = warnings.formatwarning, _cli_warning
    try:
        with quiet_peer_logs():
            action()
    except Interrupted as stop:
        if os.environ.get("RANK", "0") != "0":
            raise typer.Exit(130) from None
        typer.echo(f"stopped at step {stop.step}; checkpoint saved in {stop.ckpt}. Continue with "
                   f"--resume {stop.ckpt.parent.parent}", err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; no checkpoint was written", err=True)
        raise typer.Exit(130) from None
    except UserError as err:
        if os.environ.get("SLIMTRAIN_DEBUG"):
            raise
        if getattr(err, "every_rank", True) and os.environ.get("RANK", "0") != "0":
            raise typer.Exit(2) from None  # rank 0 says what every rank found (a rank's own: it)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except JobFailed as failed:  # the worker printed why
        raise typer.Exit(failed.code) from None
    finally:
        warnings.formatwarning = previous


def _quiet(command: Callable) -> Callable:
    """``command`` with the peers' known start-up logs hidden (commands that report their errors
    themselves, so not through ``_guarded``)."""
    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args, **kwargs):
        with quiet_peer_logs():
            return command(*args, **kwargs)
    return run


from .memory.cli import plan_command  # noqa: E402  (the planner's command lives with the planner)

app.command("plan")(_quiet(plan_command))

from .bench.cli import bench_command  # noqa: E402

app.command("bench")(_quiet(bench_command))


@app.command()
def optimizers(name: Optional[str] = typer.Argument(
        None, help="A recipe: list its options (defaults and help), as --optim-arg takes them.")) -> None:
    """List the registered optimizer recipes with their optimizer-state formula, or one recipe's
    options."""
    from . import optim

    def go():
        if name is None:
            table = Table("name", "what it is", "optimizer state")
            for recipe_name in optim.available():
                r = optim.recipe(recipe_name)
                table.add_row(recipe_name, r.summary, r.state_formula)
            console.print(table)
            return
        try:
            r = optim.recipe(name)
        except ValueError as err:
            raise UserError(str(err)) from None
        console.print(f"[bold]{r.name}[/]: {r.summary}\noptimizer state: {r.state_formula}")
        options = r.options()
        if options is None:
            console.print("(a factory without a declared Config: its options are not listed)")
            return
        table = Table("option", "default", "what it is")
        for o in options:
            table.add_row(o.name, repr(o.default), o.help)
        console.print(table)
        console.print("pass any of them with --optim-arg KEY=VALUE (lr, rank and weight_decay "
                      "also have their own flags)")

    _guarded(go)


def _parse_optim_args(items: list[str] | None) -> dict | None:
    from .userinput import key_values

    try:
        return key_values(items) or None
    except ValueError as err:
        raise UserError(str(err)) from None


def _train_command(kind: str, doc: str):
    """A command with one option per ``TrainConfig`` field (help texts live with the fields)."""
    from .train.config import TrainConfig

    def command(**kwargs) -> None:
        config_file, resume = kwargs.pop("config"), kwargs.pop("resume")
        allow_data_change = kwargs.pop("allow_data_change")

        def go():
            from .train import session

            kwargs["optim_args"] = _parse_optim_args(kwargs.pop("optim_arg"))
            session.run(kind, kwargs, config_file, resume, console,
                        allow_data_change=bool(allow_data_change))

        _guarded(go)

    types = {"str": str, "int": int, "float": float, "bool": bool}
    params = []
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if "Default" not in help_text and f.default not in (None, False):
            help_text += f" [default: {f.default}]"
        if f.name == "optim_args":
            params.append(("optim_arg", Optional[list[str]], typer.Option(None, "--optim-arg", help=help_text)))
            continue
        typ = types[f.type.split(" ")[0]]
        if typ is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        params.append((f.name, Optional[typ], typer.Option(None, flag, help=help_text, show_default=False)))
    params.append(("config", Optional[str], typer.Option(
        None, "--config", help="YAML or TOML file of options (keys as the flags); flags override it.")))
    params.append(("resume", Optional[str], typer.Option(
        None, "--resume", help="Run directory to continue from its latest checkpoint, exactly.")))
    params.append(("allow_data_change", bool, typer.Option(
        False, "--allow-data-change", help="With --resume: continue although the data changed "
        "since the checkpoint (refused otherwise; the checkpoint's tokenizer is kept).")))
    command.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, t, d in params])
    command.__annotations__ = {n: t for n, t, _ in params}
    command.__doc__ = doc
    command.__name__ = kind
    return command


app.command("pretrain")(_train_command("pretrain", """Pretrain a language model (default: the tiny
LLaMA preset on the embedded corpus, the Python standard library's sources).

Writes a run directory with config.yaml, metrics.jsonl, loss.png, summary.json and checkpoints/.
Ctrl-C saves a checkpoint and stops; --resume RUN_DIR continues exactly where it stopped."""))

app.command("finetune")(_train_command("finetune", """Fine-tune every parameter of a pretrained local
model (--model DIR, Hugging Face layout) on text or JSONL; --prompt-field masks prompts out of the loss.

Same optimizers, checkpoints and run directory as pretrain."""))


@tokenizer_app.command("train")
def tokenizer_train(
    out: str = typer.Option(..., "--out", help="Directory to write the tokenizer to (Hugging Face layout)."),
    data: Optional[str] = typer.Option(None, "--data", help="Text, JSONL, a directory of them, or a saved "
                                       "dataset. Default: the embedded corpus."),
    vocab_size: int = typer.Option(8192, "--vocab-size", help="Tokens in the vocabulary (≥ 258)."),
    text_field: str = typer.Option("text", "--text-field", help="JSONL field / dataset column with the text."),
) -> None:
    """Train a byte-level BPE tokenizer on a corpus; load it with --tokenizer or AutoTokenizer."""

    def go():
        from pathlib import Path

        from .data import default_corpus, iter_records, train_bpe

        target = Path(out)
        if target.exists() and not target.is_dir():
            raise UserError(f"--out {out} is a file; pass a directory for the tokenizer")
        if target.exists() and any(target.iterdir()):
            raise UserError(f"--out {out} is not empty; choose a new directory (nothing is overwritten)")
        if data is None:
            corpus = default_corpus()
            console.print(f"corpus: {corpus.describe()}")
            source, field = corpus.path, "text"
        else:
            source, field = Path(data), text_field
        texts = (t for _, t in iter_records(source, field))
        first = next(texts, None)
        if first is None:
            raise UserError(f"the corpus {source} holds no text; point --data at files with text in them")
        import itertools

        tok = train_bpe(itertools.chain([first], texts), vocab_size, target)
        console.print(f"wrote a byte-level BPE tokenizer with {len(tok):,} tokens to {target}")

    _guarded(go)


if __name__ == "__main__":
    app()
