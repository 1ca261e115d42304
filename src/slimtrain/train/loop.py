"""The training loop: micro-batches → loss → clip → optimizer step → schedule, with evaluation,
metrics, checkpoints, a progress bar, and a clean stop on Ctrl-C (checkpoint, then exit)."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import UserError, first_line
from ..memory.planner import adamw_state_bytes, local_nbytes
from . import checkpoint
from .metrics import MetricsLog, peak_memory_bytes, perplexity, plot_losses
from .setup import Run, trainer_state
from .step import _autocast, predicted_tokens, train_step
from .watch import Diverged, Watch


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C / SIGTERM) after saving a checkpoint."""

    def __init__(self, step: int, ckpt):
        super().__init__(f"stopped at step {step}")
        self.step, self.ckpt = step, ckpt


class _StopOnSignal:
    """First Ctrl-C (or SIGTERM): finish the current step, save, stop. Second Ctrl-C: abort now."""

    def __init__(self, console: Console):
        self.console, self.requested, self._old = console, False, {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.console.print("[yellow]stopping: finishing this step and writing a checkpoint "
                           "(Ctrl-C again to abort without one)[/]")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. some test runners)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _is_oom(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("not enough memory" in text or "can't allocate memory" in text
                                           or "DefaultCPUAllocator" in text))


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    if hasattr(opt, "state_bytes"):
        return sum(opt.state_bytes().values())
    return sum(v.nbytes for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))


def _gradient_bytes(run: Run) -> int:
    """The gradients a step holds: every trainable parameter's, or with layer-wise updates what
    the handle keeps alive at most (the planner's count)."""
    if getattr(run.optimizer, "zeroth_order", False):  # forward passes only
        return 0
    if run.fused is None:
        return sum(local_nbytes(p) for p in run.model.parameters() if p.requires_grad)
    from ..optim.layerwise import planned_gradient_bytes

    return planned_gradient_bytes(run.optimizer, grad_accum=run.config.grad_accum,
                                  refresh_from=run.config.fused_refresh_from)


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean loss per predicted token over the first ``eval_batches`` validation batches (the same
    blocks at every evaluation, so values are comparable along the run and across runs)."""
    cfg = run.config
    world = 1 if run.dist is None else run.dist.world  # one process's batches of world × batch
    n = min(len(run.val), cfg.eval_batches * cfg.batch_size * world)
    run.model.eval()
    loss_sum, count = 0.0, 0
    for start in range(0, n, cfg.batch_size):
        ids, labels = run.val.batch(range(start, min(n, start + cfg.batch_size)))
        ids, labels = ids.to(run.device), labels.to(run.device)
        with _autocast(run):
            loss = run.model(input_ids=ids, labels=labels).loss
        predicted = predicted_tokens(labels)
        if predicted:
            loss_sum += loss.item() * predicted
            count += predicted
    run.model.train()
    if run.dist is not None and run.dist.parallel == "fsdp":
        _reshard(run.model)  # FSDP2 keeps the root gathered after a forward without backward
    return loss_sum / count if count else float("nan")


def _reshard(model: torch.nn.Module) -> None:
    """Back to the sharded parameters the optimizer holds (FSDP2's ``reshard``)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _save(run: Run, state: dict | None = None, step: int | None = None) -> Any:
    if run.dist is not None:  # every rank takes part (dist_checkpoint.py)
        from . import dist_checkpoint

        return dist_checkpoint.save(run, trainer_state(run) if state is None else state)
    return checkpoint.save(run.run_dir, run.step if step is None else step, run.model, run.tokenizer,
                           trainer_state(run) if state is None else state, run.config.keep_last)


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _good_state(run: Run) -> dict:
    """The trainer state after a step that updated the weights (kept for ``_save_good``)."""
    return trainer_state(run, with_optimizer=False)


def _save_good(run: Run, good: dict | None) -> str:
    """Divergence by skipped updates: the weights and the optimizer state are still those of the
    last good step; save them under that step (unless a checkpoint of it exists)."""
    if good is None:
        return "no step updated the weights, so there is no checkpoint to keep"
    existing = {p.name for p in checkpoint.list_checkpoints(run.run_dir)}
    path = checkpoint.checkpoints_dir(run.run_dir) / f"step-{good['step']:08d}"
    if path.name not in existing:
        path = _save(run, {**good, "optimizer": run.optimizer.state_dict()}, step=good["step"])
    return f"the weights of the last good step ({good['step']}) are in {path}"


def _after_error(run: Run, err: BaseException, saved_at: int | None) -> BaseException:
    """A run that ends in an error keeps its last completed step: saved when its weights are whole
    (not caught between two steps) and finite. Returns the exception to raise."""
    if run.updating or saved_at == run.step or run.step == 0 or run.dist is not None or \
            not _finite(run.model):  # several ranks: an error of one cannot be agreed on, so no save
        return err
    try:
        ckpt = _save(run)
    except Exception:  # the error may be the disk itself
        return err
    note = f" (step {run.step} was saved in {ckpt}: continue with --resume {run.run_dir})"
    if isinstance(err, UserError):
        return UserError(str(err) + note)
    if hasattr(err, "add_note"):
        err.add_note(note.strip(" ()"))
    return err


def train(run: Run, console: Console) -> dict[str, Any]:
    """Train until ``config.steps``; returns the summary (also written to ``summary.json``)."""
    cfg = run.config
    d = run.dist
    main = d is None or d.main
    world = 1 if d is None else d.world  # session_tokens: the global batch, like run.tokens
    log = MetricsLog(run.run_dir, run.step if run.resumed_from else None) if main else None
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    watch = Watch(getattr(run.model.config, "vocab_size", 2),
                  reduce=None if d is None else d.all_reduce_)  # every rank reads the same losses
    val_loss = math.nan
    session_tokens, session_time, session_steps = 0, 0.0, 0
    saved_at = run.step if run.resumed_from else None
    good = _good_state(run) if run.resumed_from else None  # the last step that updated weights
    stop = _StopOnSignal(console)
    try:
        with stop, progress:
            task = progress.add_task(run.kind, total=cfg.steps, completed=run.step, stats="")
            while run.step < cfg.steps:
                t0 = time.perf_counter()
                try:
                    loss, grad_norm = train_step(run)
                except RuntimeError as err:
                    if _is_oom(err):
                        oom = UserError(
                            f"a batch of {cfg.batch_size} × {cfg.seq_len} tokens does not fit in memory "
                            f"({first_line(err, 100)}); lower --batch-size (raise --grad-accum "
                            "to keep the tokens per step) or pass --activation-checkpointing all")
                        oom.every_rank = False  # this rank's own: it says so itself
                        raise oom from None
                    raise
                watch.add(run.step, loss, grad_norm)
                if loss is not None:  # a step without predicted tokens did not step the optimizer
                    watch.updates(run.step, run.optimizer)
                if loss is not None and not watch.skipped:
                    good = _good_state(run)
                dt = time.perf_counter() - t0
                run.elapsed_s += dt
                session_time += dt
                session_tokens += cfg.grad_accum * cfg.batch_size * cfg.seq_len * world
                session_steps += 1
                progress.update(task, completed=run.step)
                evaluated = run.step % cfg.eval_every == 0 or run.step == cfg.steps
                logged = evaluated or run.step % cfg.log_every == 0
                saving = run.step % cfg.save_every == 0 or run.step == cfg.steps
                stopping = stop.requested if d is None else d.any(stop.requested, run.device)
                if not (logged or saving or stopping):
                    continue
                last_loss = watch.read()  # the one host sync of these steps
                tokens_per_s = session_tokens / session_time
                if logged:
                    # float(): torchao's optimizers keep lr as a tensor
                    record = dict(step=run.step, loss=None if loss is None else last_loss,
                                  lr=float(run.scheduler.get_last_lr()[0]), tokens=run.tokens,
                                  grad_norm=None if grad_norm is None else float(grad_norm),
                                  tokens_per_s=round(tokens_per_s, 1))
                    if run.fused is not None and not run.fused.grad_norm_exact:
                        record["grad_norm_exact"] = False  # projected matrices: in-subspace norm
                    if evaluated:
                        val_loss = evaluate(run)
                        record.update(val_loss=val_loss, val_ppl=perplexity(val_loss))
                        console.print(f"step {run.step:>6}/{cfg.steps} | loss {last_loss:.3f} | val "
                                      f"loss {val_loss:.3f} | val ppl {perplexity(val_loss):8.1f} | "
                                      f"{tokens_per_s:,.0f} tokens/s")
                    record.update(optimizer_state_bytes=_state_bytes(run.optimizer),
                                  peak_memory_bytes=peak_memory_bytes(run.device))
                    if log is not None:
                        log.write(record)
                progress.update(task, stats=(f"loss {last_loss:.3f} ppl "
                                             f"{perplexity(min(last_loss, 50)):.1f} "
                                             f"{tokens_per_s:,.0f} tok/s"))
                if saving:
                    _save(run)
                    saved_at = run.step
                if stopping:
                    ckpt = _save(run) if saved_at != run.step else checkpoint.list_checkpoints(run.run_dir)[-1]
                    raise Interrupted(run.step, ckpt)
    except Diverged as err:
        if err.weights_good:
            raise Diverged(f"{err}; {_save_good(run, good)}") from None
        kept = checkpoint.list_checkpoints(run.run_dir)
        where = f"the last checkpoint is {kept[-1]}" if kept else "no checkpoint was written"
        raise Diverged(f"{err} ({where})") from None
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as err:
        raise _after_error(run, err, saved_at) from err.__cause__
    finally:
        if log is not None:
            log.close()
            plot_losses(run.run_dir, f"{run.kind} {run.describe['model']} · {cfg.optimizer}")
    state = _state_bytes(run.optimizer)
    return dict(steps=run.step, tokens=run.tokens, seconds=run.elapsed_s,
                tokens_per_s=run.tokens / run.elapsed_s if run.elapsed_s else 0.0,
                # optimizer.step() alone (this session), the part of a step the optimizer decides
                optimizer_ms_per_step=1e3 * run.optimizer_s / session_steps if session_steps else 0.0,
                train_loss=watch.read(), val_loss=val_loss, val_ppl=perplexity(val_loss),
                params=run.describe["params"],
                # memory: what one rank holds (an FSDP2 rank its shards; a DDP rank everything)
                weight_bytes=sum(local_nbytes(p) for p in run.model.parameters()),
                gradient_bytes=_gradient_bytes(run), optimizer_state_bytes=state,
                adamw_state_bytes=adamw_state_bytes(run.model),
                peak_memory_bytes=_peak_per_rank(run), device=str(run.device))


def _peak_per_rank(run: Run) -> int:
    """The peak memory of the rank that used most (each rank's own on one process)."""
    peak = peak_memory_bytes(run.device)
    if run.dist is None:
        return peak
    return int(run.dist.all_reduce_(torch.tensor([float(peak)], device=run.device),
                                    torch.distributed.ReduceOp.MAX).item())
