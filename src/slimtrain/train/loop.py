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

from .. import optim
from ..errors import UserError
from . import checkpoint
from .metrics import MetricsLog, peak_memory_bytes, plot_losses
from .setup import Run, trainer_state


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C / SIGTERM) after saving a checkpoint."""

    def __init__(self, step: int, ckpt):
        super().__init__(f"stopped at step {step}")
        self.step, self.ckpt = step, ckpt


class Diverged(UserError):
    """The training loss became NaN or infinite (a learning rate too high, usually)."""


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


def _autocast(run: Run):
    if run.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=run.autocast)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    if hasattr(opt, "state_bytes"):
        return sum(opt.state_bytes().values())
    return sum(v.nbytes for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))


def _gradient_bytes(run: Run) -> int:
    """The gradients a step holds: every trainable parameter's, or with layer-wise updates what
    the handle keeps alive at most (the planner's count)."""
    if run.fused is None:
        return sum(p.nbytes for p in run.model.parameters() if p.requires_grad)
    from ..optim.fused_backward import planned_gradient_bytes

    return planned_gradient_bytes(run.optimizer, grad_accum=run.config.grad_accum,
                                  refresh_from=run.config.fused_refresh_from)


def train_step(run: Run) -> tuple[float, float | None]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean micro-batch loss and
    the gradient norm (before clipping). With layer-wise updates (``run.fused``) the parameters
    are updated inside the last micro-batch's backward pass, clipped by the previous step's norm;
    ``optimizer.step()`` then only finishes the step."""
    cfg = run.config
    total = 0.0
    for _ in range(cfg.grad_accum):
        ids, labels = run.train.batch(run.order.take(run.position, cfg.batch_size))
        ids, labels = ids.to(run.device), labels.to(run.device)
        with _autocast(run):
            loss = run.model(input_ids=ids, labels=labels).loss
        (loss / cfg.grad_accum).backward()
        total += loss.item()
        run.position += cfg.batch_size
    # The norm before clipping: what the log should show.
    clip_here = cfg.grad_clip > 0 and run.fused is None  # the layer-wise handle clips by itself
    grad_norm = (float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
                 if clip_here else None)
    started = time.perf_counter()
    run.optimizer.step()
    run.optimizer_s += time.perf_counter() - started
    if grad_norm is None:
        grad_norm = getattr(run.optimizer, "grad_norm", None)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.tokens += cfg.grad_accum * cfg.batch_size * cfg.seq_len
    return total / cfg.grad_accum, grad_norm


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean loss per predicted token over the first ``eval_batches`` validation batches (the same
    blocks at every evaluation, so values are comparable along the run and across runs)."""
    cfg = run.config
    n = min(len(run.val), cfg.eval_batches * cfg.batch_size)
    run.model.eval()
    loss_sum, count = 0.0, 0
    for start in range(0, n, cfg.batch_size):
        ids, labels = run.val.batch(range(start, min(n, start + cfg.batch_size)))
        ids, labels = ids.to(run.device), labels.to(run.device)
        with _autocast(run):
            loss = run.model(input_ids=ids, labels=labels).loss
        predicted = int((labels[:, 1:] != -100).sum())
        if predicted:
            loss_sum += loss.item() * predicted
            count += predicted
    run.model.train()
    return loss_sum / count if count else float("nan")


def _save(run: Run) -> Any:
    return checkpoint.save(run.run_dir, run.step, run.model, run.tokenizer, trainer_state(run),
                           run.config.keep_last)


def train(run: Run, console: Console) -> dict[str, Any]:
    """Train until ``config.steps``; returns the summary (also written to ``summary.json``)."""
    cfg = run.config
    log = MetricsLog(run.run_dir, run.step if run.resumed_from else None)
    adamw_bytes = sum(optim.create("adamw", run.model).planned_state_bytes().values())
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    last_loss = val_loss = float("nan")
    session_tokens, session_time, session_steps = 0, 0.0, 0
    saved_at = run.step if run.resumed_from else None
    stop = _StopOnSignal(console)
    try:
        with stop, progress:
            task = progress.add_task(run.kind, total=cfg.steps, completed=run.step, stats="")
            while run.step < cfg.steps:
                t0 = time.perf_counter()
                try:
                    last_loss, grad_norm = train_step(run)
                except RuntimeError as err:
                    if _is_oom(err):
                        raise UserError(
                            f"a batch of {cfg.batch_size} × {cfg.seq_len} tokens does not fit in memory "
                            f"({str(err).splitlines()[0][:100]}); lower --batch-size (raise --grad-accum "
                            "to keep the tokens per step) or pass --activation-checkpointing") from None
                    raise
                if not math.isfinite(last_loss):
                    raise Diverged(f"the training loss became {last_loss} at step {run.step}; lower "
                                   "--lr (or raise --warmup-steps) and start a new run")
                dt = time.perf_counter() - t0
                run.elapsed_s += dt
                session_time += dt
                session_tokens += cfg.grad_accum * cfg.batch_size * cfg.seq_len
                session_steps += 1
                tokens_per_s = session_tokens / session_time
                # float(): torchao's optimizers keep lr as a tensor
                record = dict(step=run.step, loss=last_loss, lr=float(run.scheduler.get_last_lr()[0]),
                              tokens=run.tokens, grad_norm=grad_norm,
                              tokens_per_s=round(tokens_per_s, 1))
                if run.fused is not None and not run.fused.grad_norm_exact:
                    record["grad_norm_exact"] = False  # projected matrices: their in-subspace norm
                evaluated = run.step % cfg.eval_every == 0 or run.step == cfg.steps
                if evaluated:
                    val_loss = evaluate(run)
                    record.update(val_loss=val_loss, val_ppl=math.exp(val_loss))
                    console.print(f"step {run.step:>6}/{cfg.steps} | loss {last_loss:.3f} | val loss "
                                  f"{val_loss:.3f} | val ppl {math.exp(val_loss):8.1f} | "
                                  f"{tokens_per_s:,.0f} tokens/s")
                if evaluated or run.step % cfg.log_every == 0:
                    record.update(optimizer_state_bytes=_state_bytes(run.optimizer),
                                  peak_memory_bytes=peak_memory_bytes(run.device))
                    log.write(record)
                progress.update(task, completed=run.step, stats=(
                    f"loss {last_loss:.3f} ppl {math.exp(min(last_loss, 50)):.1f} "
                    f"{tokens_per_s:,.0f} tok/s"))
                if run.step % cfg.save_every == 0 or run.step == cfg.steps:
                    _save(run)
                    saved_at = run.step
                if stop.requested:
                    ckpt = _save(run) if saved_at != run.step else checkpoint.list_checkpoints(run.run_dir)[-1]
                    raise Interrupted(run.step, ckpt)
    finally:
        log.close()
        plot_losses(run.run_dir, f"{run.kind} {run.describe['model']} · {cfg.optimizer}")
    state = _state_bytes(run.optimizer)
    return dict(steps=run.step, tokens=run.tokens, seconds=run.elapsed_s,
                tokens_per_s=run.tokens / run.elapsed_s if run.elapsed_s else 0.0,
                # optimizer.step() alone (this session), the part of a step the optimizer decides
                optimizer_ms_per_step=1e3 * run.optimizer_s / session_steps if session_steps else 0.0,
                train_loss=last_loss, val_loss=val_loss, val_ppl=math.exp(val_loss),
                params=run.describe["params"],
                weight_bytes=sum(p.nbytes for p in run.model.parameters()),
                gradient_bytes=_gradient_bytes(run),
                optimizer_state_bytes=state, adamw_state_bytes=adamw_bytes,
                peak_memory_bytes=peak_memory_bytes(run.device), device=str(run.device))
