"""From settings to a ready run: data, tokenizer, model, optimizer, schedule — and, on resume, the
checkpoint's state. Every user mistake is caught here, before anything is written."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import optim
from ..data import (Blocks, EpochOrder, cached_bpe, default_corpus, fingerprint, iter_records,
                    load_tokenizer, tokenized)
from .._warnings import warn
from ..activations import (apply_activation_checkpointing, check_offload_device,
                           compressed_activations, offload_activations, parse_bits,
                           supports_chunked_loss, use_chunked_loss)
from ..errors import UserError, first_line
from ..userinput import did_you_mean
from ..models import build_model, check_pretrained, config_for, is_preset
from . import checkpoint, distributed
from .checks import check_same_settings, check_split, per_rank_batch, settings_record
from .config import TrainConfig


@dataclass
class Run:
    kind: str                       # "pretrain" or "finetune"
    config: TrainConfig
    run_dir: Path
    device: torch.device
    autocast: torch.dtype | None    # bf16 autocast, or None for fp32
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train: Blocks
    val: Blocks
    order: EpochOrder
    describe: dict = field(default_factory=dict)  # what the run is, for the log and the summary
    step: int = 0                   # optimizer steps done
    tokens: int = 0                 # training tokens consumed
    position: int = 0               # training blocks consumed (the data position)
    elapsed_s: float = 0.0          # training time so far, over all sessions of the run
    optimizer_s: float = 0.0        # time inside optimizer.step() in this session
    resumed_from: Path | None = None
    fused: optim.FusedBackward | None = None  # the layer-wise handle with --fused-backward
    updating: bool = False          # the weights are being changed (a step is between two states)
    data_key: str = ""              # the data's fingerprint (with the fields read), kept in checkpoints
    dist: object = None             # the process group's view (train/distributed.py), None: one process
    train_module: torch.nn.Module | None = None  # what the training forward runs (DDP's wrapper)
    saved_hooks: object = None      # --activation-bits / --offload-activations: saved-tensor hooks


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU, but torch sees none; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def _threads(requested: int | None, resumed: bool) -> int:
    """Oversubscribed OpenMP threads on a shared machine are slower than one (4× here), so by
    default use only the cores that are idle; more threads than cores is refused (kept, with a
    warning, when a run resumes on a smaller machine: its results depend on the count)."""
    cores = os.cpu_count() or 1
    if requested is not None:
        if requested > cores and not resumed:
            raise UserError(f"--threads {requested} exceeds the {cores} CPU cores of this machine; "
                            f"use at most {cores}")
        if requested > cores:
            warn(f"this run uses {requested} threads (kept so that it resumes exactly), more than "
                 f"the {cores} cores of this machine: expect it to be slow")
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    idle = (os.cpu_count() or 1) - round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 1 << 30
    return max(1, min(torch.get_num_threads(), idle))


def _autocast(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    supported = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                 else device.type in ("cpu", "mps"))
    if precision == "bf16":
        if not supported:
            raise UserError(f"--precision bf16 is not supported on {device}; use --precision fp32")
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and supported else None  # auto


def _records(config: TrainConfig, say: Callable[[str], None]):
    """(records factory, cache key, description) for the corpus."""
    if config.data is None:
        corpus = default_corpus()
        say(f"corpus: {corpus.describe()}")
        return (lambda: iter_records(corpus.path)), corpus.sha256, "the embedded corpus"
    path = Path(config.data)
    key = f"{fingerprint(path)}\0{config.text_field}\0{config.prompt_field}"
    say(f"corpus: {path}")
    return (lambda: iter_records(path, config.text_field, config.prompt_field)), key, repr(str(path))


def _tokenizer(config: TrainConfig, records, corpus_key: str, vocab_size: int, say):
    if config.tokenizer:
        return load_tokenizer(config.tokenizer), Path(config.tokenizer)
    if not is_preset(config.model):
        if not (Path(config.model) / "tokenizer_config.json").exists() and not (
                Path(config.model) / "tokenizer.json").exists():
            raise UserError(f"the model directory {config.model!r} has no tokenizer; pass --tokenizer")
        return load_tokenizer(config.model), Path(config.model)
    texts = lambda: (prompt + text for prompt, text in records())  # noqa: E731
    return cached_bpe(texts, corpus_key, vocab_size, say)


def default_rank(recipe_rank: int, hidden_size: int) -> int:
    """The authors' ranks (128…) are sized for 60M+ models; capped at hidden/4 (the papers' 60M
    ratio) a small model still projects instead of falling back to full rank."""
    return max(1, min(recipe_rank, hidden_size // 4))


def optimizer_kwargs(config: TrainConfig, hidden_size: int) -> dict:
    """Recipe arguments from the flags: only those the recipe's ``Config`` declares (a flag it
    ignores is an error)."""
    recipe = optim.recipe(config.optimizer)
    kwargs = dict(config.optim_args)
    for name in ("lr", "weight_decay"):
        if getattr(config, name) is not None:
            kwargs[name] = getattr(config, name)
    if recipe.accepts("rank") and recipe.options() is not None:
        default = recipe.default("rank")
        if config.rank is not None:
            kwargs["rank"] = config.rank
        elif isinstance(default, int):
            kwargs["rank"] = default_rank(default, hidden_size)
    elif config.rank is not None:
        raise UserError(f"--rank does not apply to {recipe.name}, which does not project gradients; "
                        "drop --rank or choose a projecting optimizer")
    if recipe.default("bs") is not None and "bs" not in kwargs:  # SophiaG: tokens per step
        kwargs["bs"] = config.batch_size * config.seq_len * config.grad_accum * config.nproc
    unknown = [k for k in kwargs if not recipe.accepts(k)]
    if unknown:
        options = [o.name for o in recipe.options()]
        raise UserError(f"optimizer {recipe.name} takes no argument {unknown[0]!r}.{did_you_mean(unknown[0], options)} "
                        f"It takes {', '.join(options)} (see `slimtrain optimizers {recipe.name}`)")
    return kwargs


def default_run_dir(kind: str, config: TrainConfig) -> Path:
    model = config.model if is_preset(config.model) else Path(config.model).name
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{model}-{config.optimizer}-{stamp}"


OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]


def prepare(kind: str, config: TrainConfig, run_dir: Path, resume: Path | None,
            say: Callable[[str], None] = print, optimizer_factory: OptimizerFactory | None = None,
            allow_data_change: bool = False, dist=None) -> Run:
    """``optimizer_factory`` replaces the recipe registry: it gets the model (on its device, before
    any checkpoint state is restored) and returns the optimizer — an optimizer from another library,
    or one with its own param groups; it may change the model in place first (add adapters, freeze
    weights). ``config.optimizer`` then only names the run.

    On resume the checkpoint is the source of truth: its settings must match the run's
    (``config.yaml``), its data fingerprint the data's (unless ``allow_data_change``), its
    tokenizer is the one used, and its weights must be the ones its state was written with."""
    device = _device(config.device)
    if dist is not None and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # one GPU per local rank
    autocast = _autocast(config.precision, device)
    config.threads = _threads(config.threads, resume is not None)  # resolved once, saved with the run, kept on resume
    torch.set_num_threads(config.threads)
    if optimizer_factory is None:
        try:
            optim.recipe(config.optimizer)  # unknown names fail now, before any data work
        except ValueError as err:
            raise UserError(str(err)) from None
    mconfig = config_for(config.model)
    if kind == "finetune" and resume is None:
        check_pretrained(config.model)
    max_len = getattr(mconfig, "max_position_embeddings", None)
    if max_len is not None and config.seq_len > max_len:
        raise UserError(f"--seq-len {config.seq_len} is longer than the model's maximum of {max_len} "
                        f"positions; use --seq-len {max_len} or less")
    ckpt = state = None
    if resume is not None:
        ckpts = checkpoint.list_checkpoints(resume)
        if not ckpts:
            raise UserError(f"{resume} holds no checkpoint to resume from")
        ckpt = ckpts[-1]
        state = checkpoint.load_trainer_state(ckpt)  # a damaged checkpoint fails before data work
        per_rank_batch(config, state, 1 if dist is None else dist.world)
        check_same_settings(config, state, ckpt, resume)

    if dist is not None and not dist.main:
        dist.barrier()  # rank 0 builds the caches (corpus, tokenizer, token files) first
    records, corpus_key, corpus_name = _records(config, say)
    if state is not None and state.get("data", corpus_key) != corpus_key:
        if not allow_data_change:
            raise UserError(f"the data changed since {ckpt} was written ({corpus_name}: its files' "
                            "sizes or times differ); resume on the data the run was trained on, or "
                            "pass --allow-data-change to continue on the new data (the checkpoint's "
                            "tokenizer and data position are kept)")
        say(f"warning: the data changed since {ckpt}; continuing on the new data as asked")
    if ckpt is not None:  # the tokenizer the run trained with, whatever the corpus is now
        tokenizer, tok_path = load_tokenizer(ckpt), ckpt
    else:
        tokenizer, tok_path = _tokenizer(config, records, corpus_key, mconfig.vocab_size, say)
    if len(tokenizer) > mconfig.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer):,} tokens but the model's vocabulary holds "
                        f"{mconfig.vocab_size:,}; use the model's own tokenizer, or one with at most "
                        f"{mconfig.vocab_size:,} tokens")
    say(f"tokenizer: {len(tokenizer):,} tokens ({tok_path})")
    files = tokenized(records, corpus_key, tokenizer, config.val_fraction, bool(config.prompt_field),
                      corpus_name, say)
    meta = files.meta
    train = Blocks(files.tokens("train"), files.mask("train"), config.seq_len)
    val = Blocks(files.tokens("val"), files.mask("val"), config.seq_len)
    say(f"tokens: {meta['train_tokens']:,} train ({meta['train_documents']:,} documents), "
        f"{meta['val_tokens']:,} validation ({meta['val_documents']:,} documents, held out by "
        f"content hash)")
    if dist is not None and dist.main:
        dist.barrier()
    check_split(meta, train, val, config, say)
    if dist is not None and len(train) < dist.world * config.batch_size:
        raise UserError(f"the training split holds {len(train)} blocks of {config.seq_len} tokens, "
                        f"fewer than one step of {dist.world} ranks × {config.batch_size}; add data or "
                        "lower --batch-size / --nproc")

    model = build_model(config.model, config.seed)
    if ckpt is not None:
        checkpoint.load_weights(ckpt, model)
        checkpoint.check_weights_belong(ckpt, model, state)  # the whole model, before any sharding
    model.to(device)
    saved_hooks = _activation_levers(config, model, device)
    if loss_kind(config, device, model) == "chunked":
        try:
            use_chunked_loss(model)
        except ValueError as err:
            raise UserError(str(err)) from None
        say("loss: chunked linear cross-entropy (the logits are never held whole; --loss naive "
            "for transformers' own)")
    model.train()
    zeroth_order = optimizer_factory is None and optim.recipe(config.optimizer).zeroth_order
    if zeroth_order:
        _check_zeroth_order(config, dist)
    # a zeroth-order step reduces one number (its loss) over the ranks and no gradient: DDP's
    # buckets would only hold memory
    train_module = model if dist is None or zeroth_order else distributed.wrap(model, dist, device)
    hidden = getattr(model.config, "hidden_size", 256)
    try:
        optimizer = (optimizer_factory(model) if optimizer_factory is not None else
                     optim.create(config.optimizer, model, **optimizer_kwargs(config, hidden)))
    except (ValueError, TypeError) as err:  # the recipes' checks of their arguments
        raise UserError(f"optimizer {config.optimizer}: {err}") from None
    if dist is not None and getattr(optimizer, "sampling", None) is not None:
        raise UserError(f"optimizer {config.optimizer} samples the blocks that train, which DDP's "
                        "and FSDP's gradient reduction do not follow yet: run it on one process "
                        "(drop --nproc)")
    if zeroth_order and optimizer.lr_warning():
        say(f"warning: {optimizer.lr_warning()}")
    scheduler = _scheduler(config, optimizer, zeroth_order)

    params = sum(p.numel() for p in model.parameters())
    run = Run(kind, config, run_dir, device, autocast, model, tokenizer, optimizer, scheduler, train,
              val, EpochOrder(len(train), config.seed), data_key=corpus_key, dist=dist,
              train_module=train_module, saved_hooks=saved_hooks)
    if config.fused_backward:  # before the checkpoint's optimizer state is loaded into it
        try:
            run.fused = optim.fuse_backward(train_module, optimizer, grad_accum=config.grad_accum,
                                            max_grad_norm=config.grad_clip or None,
                                            refresh_from=config.fused_refresh_from)
        except ValueError as err:  # the optimizer or model cannot take layer-wise updates
            raise UserError(f"--fused-backward with optimizer {config.optimizer}: {first_line(err)} "
                            "(drop --fused-backward)") from None
    run.describe = dict(model=config.model, params=params, optimizer=config.optimizer,
                        lr=scheduler.base_lrs[0], device=str(device),
                        precision="bf16 autocast" if autocast else "fp32",
                        train_tokens=meta["train_tokens"], val_tokens=meta["val_tokens"])
    if ckpt is not None:
        _restore(run, ckpt, state)
    return run


def _activation_levers(config: TrainConfig, model, device: torch.device):
    """Selective activation checkpointing (in place, on the model's decoder layers), and the
    saved-tensor hooks of --activation-bits / --offload-activations (entered around each
    micro-batch's forward and backward), or None."""
    try:
        apply_activation_checkpointing(model, config.activation_checkpointing)
        bits = parse_bits(config.activation_bits)
        if config.offload_activations:
            check_offload_device(device)
            if bits is not None:
                raise ValueError("--offload-activations and --activation-bits both store the saved "
                                 "activations: pick one")
            return offload_activations(model, device)
        return None if bits is None else compressed_activations(model, bits)
    except ValueError as err:
        raise UserError(first_line(err)) from None


def loss_kind(config: TrainConfig, device: torch.device, model) -> str:
    """--loss auto: chunked on CPU (equal to 1e-6, measured as fast or faster there:
    benchmarks/README.md), naive elsewhere until it is measured on a GPU; naive for a model the
    chunked loss does not apply to (its logits are not ``lm_head(hidden)``)."""
    if config.loss != "auto":
        return config.loss
    return "chunked" if device.type == "cpu" and supports_chunked_loss(model) is None else "naive"


def _check_zeroth_order(config: TrainConfig, dist) -> None:
    """What a forward-only optimizer cannot combine with, each said in one line."""
    name = config.optimizer
    if config.fused_backward:
        raise UserError(f"optimizer {name} is zeroth-order: it runs no backward pass, so there is "
                        "nothing to fuse; drop --fused-backward")
    if dist is not None and dist.parallel == "fsdp":
        raise UserError(f"optimizer {name} is zeroth-order: it holds no gradient or state to shard; "
                        "use --parallel ddp (each rank perturbs its full replica alike)")


def _scheduler(config: TrainConfig, optimizer, zeroth_order: bool):
    from transformers import (get_constant_schedule_with_warmup,
                              get_cosine_with_min_lr_schedule_with_warmup)

    warmup = config.warmup_steps if config.warmup_steps is not None else config.steps // 10
    constant = config.schedule == "constant" or (config.schedule == "auto" and zeroth_order)
    if constant:
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, config.steps,
                                                       min_lr_rate=config.min_lr_ratio)


def _restore(run: Run, ckpt: Path, state: dict) -> None:
    try:
        if "sharded_optimizer" in state:  # an FSDP run's: resharded onto this job's ranks
            if run.dist is None or run.dist.parallel != "fsdp":
                raise UserError(f"{ckpt} was written by an FSDP run; resume it with --parallel fsdp "
                                "(any --nproc)")
            from .dist_checkpoint import load_optimizer

            load_optimizer(ckpt, run.model, run.optimizer)
            checkpoint.check_finite_state(ckpt, run.optimizer.state_dict())
        else:
            checkpoint.check_finite_state(ckpt, state["optimizer"])
            run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.step, run.tokens, run.position = state["step"], state["tokens"], state["position"]
        run.elapsed_s = float(state["elapsed_s"])
        ranks = state.get("rng_ranks") or [state["rng"]]
        world = 1 if run.dist is None else run.dist.world
        checkpoint.set_rng_state(ranks[run.dist.rank] if len(ranks) == world and run.dist else
                                 ranks[0])
    except UserError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise UserError(f"checkpoint {ckpt} does not match this run ({first_line(err)}); "
                        "resume it with the settings it was written with") from None
    run.resumed_from = ckpt


def trainer_state(run: Run, with_optimizer: bool = True) -> dict:
    import copy

    from .checkpoint import rng_state

    state = dict(step=run.step, tokens=run.tokens, position=run.position, elapsed_s=run.elapsed_s,
                 scheduler=copy.deepcopy(run.scheduler.state_dict()), rng=rng_state(),
                 run_kind=run.kind, config=settings_record(run.config), data=run.data_key)
    if with_optimizer:
        state["optimizer"] = run.optimizer.state_dict()
    return state

