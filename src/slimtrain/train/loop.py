"""The training loop: micro-batches → loss → clip → optimizer step → schedule, with evaluation,
metrics, checkpoints, a progress bar, and a clean stop on Ctrl-C (checkpoint, then exit)."""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .._warnings import warn
from ..data.blocks import IGNORE_INDEX
from ..errors import UserError, first_line
from ..memory.planner import adamw_state_bytes
from . import checkpoint
from .metrics import MetricsLog, peak_memory_bytes, perplexity, plot_losses
from .setup import Run, trainer_state
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
    from ..optim.layerwise import planned_gradient_bytes

    return planned_gradient_bytes(run.optimizer, grad_accum=run.config.grad_accum,
                                  refresh_from=run.config.fused_refresh_from)


def _sync(device: torch.device) -> None:
    """Wait for the device, so that a host timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predicted_tokens(labels: torch.Tensor) -> int:
    """Tokens whose next token the loss predicts: labels shifted by one, prompts (-100) left out."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def step_inputs(run: Run, loss: torch.Tensor) -> dict:
    """The extra ``step()`` inputs the optimizer's rules declared that the trainer provides:
    ``loss`` (the step's mean loss per predicted token, detached, on the device)."""
    needs = getattr(run.optimizer, "step_inputs", frozenset())
    provided = {"loss": loss}
    missing = sorted(set(needs) - set(provided) - {"closure"})
    if missing:
        raise UserError(f"optimizer {run.config.optimizer} needs the step input(s) "
                        f"{', '.join(missing)}, which the trainer does not provide; train it with "
                        "your own loop (optimizer.step(**inputs))")
    return {k: v for k, v in provided.items() if k in needs}


def train_step(run: Run) -> tuple[torch.Tensor | None, torch.Tensor | float | None]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the step's loss per predicted
    token (a device tensor: no host sync here) and the gradient norm before clipping.

    The loss is normalised by the predicted tokens of the whole step (as torchtitan and torchtune
    do), so a prompt-masked fine-tune weights tokens, not micro-batches, and a micro-batch with no
    predicted token contributes nothing. A step whose batch predicts no token at all changes no
    weight (the schedule and data position still advance) and returns a None loss. With
    layer-wise updates (``run.fused``) the parameters are updated inside the last micro-batch's
    backward pass, clipped by the previous step's norm; ``optimizer.step()`` then only finishes
    the step."""
    cfg = run.config
    batches = [run.train.batch(run.order.take(run.position + k * cfg.batch_size, cfg.batch_size))
               for k in range(cfg.grad_accum)]
    count = sum(predicted_tokens(labels) for _, labels in batches)
    if count == 0:
        warn(f"step {run.step + 1}: no token of its batch is predicted (every label is a masked "
             "prompt), so the step changed no weight")
        with warnings.catch_warnings():  # torch's "scheduler before optimizer" note: on purpose
            warnings.simplefilter("ignore", UserWarning)
            run.scheduler.step()
        _advance(run)
        return None, None
    total = torch.zeros((), device=run.device)
    for k, (ids, labels) in enumerate(batches):
        ids, labels = ids.to(run.device), labels.to(run.device)
        with _autocast(run):
            loss = run.model(input_ids=ids, labels=labels, num_items_in_batch=count).loss
        # from here on the weights change (layer-wise updates: inside the last backward), so an
        # error leaves them between two steps: no checkpoint is written of that state
        run.updating = run.updating or (run.fused is not None and k == len(batches) - 1)
        loss.backward()
        total += loss.detach()
    # The norm before clipping: what the log should show.
    clip_here = cfg.grad_clip > 0 and run.fused is None  # the layer-wise handle clips by itself
    grad_norm = (torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
                 if clip_here else None)
    inputs = step_inputs(run, total)
    _sync(run.device)
    started = time.perf_counter()
    run.updating = True
    run.optimizer.step(**inputs)
    _sync(run.device)
    run.optimizer_s += time.perf_counter() - started
    if grad_norm is None:
        grad_norm = getattr(run.optimizer, "grad_norm", None)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    _advance(run)
    run.updating = False
    return total, grad_norm


def _advance(run: Run) -> None:
    """Count a finished step: the data position, the tokens, the step."""
    cfg = run.config
    run.position += cfg.grad_accum * cfg.batch_size
    run.tokens += cfg.grad_accum * cfg.batch_size * cfg.seq_len
    run.step += 1


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
        predicted = predicted_tokens(labels)
        if predicted:
            loss_sum += loss.item() * predicted
            count += predicted
    run.model.train()
    return loss_sum / count if count else float("nan")


def _save(run: Run, state: dict | None = None, step: int | None = None) -> Any:
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
    if run.updating or saved_at == run.step or run.step == 0 or not _finite(run.model):
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
    log = MetricsLog(run.run_dir, run.step if run.resumed_from else None)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    watch, val_loss = Watch(getattr(run.model.config, "vocab_size", 2)), math.nan
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
                        raise UserError(
                            f"a batch of {cfg.batch_size} × {cfg.seq_len} tokens does not fit in memory "
                            f"({first_line(err, 100)}); lower --batch-size (raise --grad-accum "
                            "to keep the tokens per step) or pass --activation-checkpointing") from None
                    raise
                watch.add(run.step, loss, grad_norm)
                if loss is not None:  # a step without predicted tokens did not step the optimizer
                    watch.updates(run.step, run.optimizer)
                if loss is not None and not watch.skipped:
                    good = _good_state(run)
                dt = time.perf_counter() - t0
                run.elapsed_s += dt
                session_time += dt
                session_tokens += cfg.grad_accum * cfg.batch_size * cfg.seq_len
                session_steps += 1
                progress.update(task, completed=run.step)
                evaluated = run.step % cfg.eval_every == 0 or run.step == cfg.steps
                logged = evaluated or run.step % cfg.log_every == 0
                saving = run.step % cfg.save_every == 0 or run.step == cfg.steps
                if not (logged or saving or stop.requested):
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
                    log.write(record)
                progress.update(task, stats=(f"loss {last_loss:.3f} ppl "
                                             f"{perplexity(min(last_loss, 50)):.1f} "
                                             f"{tokens_per_s:,.0f} tok/s"))
                if saving:
                    _save(run)
                    saved_at = run.step
                if stop.requested:
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
        log.close()
        plot_losses(run.run_dir, f"{run.kind} {run.describe['model']} · {cfg.optimizer}")
    state = _state_bytes(run.optimizer)
    return dict(steps=run.step, tokens=run.tokens, seconds=run.elapsed_s,
                tokens_per_s=run.tokens / run.elapsed_s if run.elapsed_s else 0.0,
                # optimizer.step() alone (this session), the part of a step the optimizer decides
                optimizer_ms_per_step=1e3 * run.optimizer_s / session_steps if session_steps else 0.0,
                train_loss=watch.read(), val_loss=val_loss, val_ppl=perplexity(val_loss),
                params=run.describe["params"],
                weight_bytes=sum(p.nbytes for p in run.model.parameters()),
                gradient_bytes=_gradient_bytes(run), optimizer_state_bytes=state,
                adamw_state_bytes=adamw_state_bytes(run.model),
                peak_memory_bytes=peak_memory_bytes(run.device), device=str(run.device))
