"""The settings of a run: defaults < config file (YAML or TOML) < command-line flags.

Every field's help text is shown by ``slimtrain pretrain --help``; the CLI builds one flag per
field (``batch_size`` → ``--batch-size``). A run directory keeps its resolved settings in
``config.yaml``, which ``--resume`` reads back and ``--config`` accepts.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError, first_line
from ..paths import write_text_atomic


def _f(default: Any, help: str, **kw):
    factory = kw.pop("factory", None)
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    model: str = _f("tiny", "Preset (tiny, small, 60m, 130m, 350m, 1b, 7b) or a local Hugging Face "
                    "model directory (config.json, plus weights to start from them).")
    data: str | None = _f(None, "Text file, JSONL file, directory of them, or a dataset saved with "
                          "save_to_disk. Default: the embedded corpus (Python standard library sources).")
    tokenizer: str | None = _f(None, "Tokenizer directory (Hugging Face layout). Default: the model "
                               "directory's own, or for presets a byte-level BPE trained on the corpus.")
    text_field: str = _f("text", "JSONL field / dataset column holding the text.")
    prompt_field: str | None = _f(None, "JSONL field / column holding a prompt that precedes the "
                                  "text and is masked out of the loss (fine-tuning).")
    optimizer: str = _f("galore-adamw", "Optimizer recipe (see `slimtrain optimizers`).")
    lr: float | None = _f(None, "Peak learning rate. Default: the recipe's (galore-adamw 0.01, "
                          "adamw 0.001); fine-tuning 3e-5.")
    rank: int | None = _f(None, "Projection rank for recipes that project. Default: the recipe's "
                          "(e.g. 128), capped at hidden size / 4 (the GaLore papers' 60M ratio).")
    weight_decay: float | None = _f(None, "Decoupled weight decay. Default: the recipe's.")
    optim_args: dict = _f(None, "Extra recipe argument KEY=VALUE (repeatable), e.g. "
                          "refresh_every=200, scale=0.25.", factory=dict)
    steps: int = _f(300, "Optimizer steps.")
    batch_size: int = _f(8, "Sequences per micro-batch.")
    seq_len: int = _f(256, "Tokens per sequence (packed blocks).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    warmup_steps: int | None = _f(None, "Linear warmup steps. Default: 10% of --steps.")
    schedule: str = _f("auto", "Learning-rate schedule: cosine (linear warmup, cosine decay to "
                       "--min-lr-ratio), constant (after the warmup), or auto: constant for "
                       "zeroth-order optimizers (MeZO's), cosine for the others.")
    min_lr_ratio: float = _f(0.1, "Cosine decay ends at this fraction of the peak lr (papers: 0.1).")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this (0: no clipping).")
    precision: str = _f("auto", "fp32, bf16 (autocast), or auto: bf16 on GPUs that support it, "
                        "fp32 on CPU (exact resume is guaranteed in fp32 on CPU).")
    loss: str = _f("auto", "How the LM head's cross-entropy is computed: naive (the full logits, as "
                   "transformers does), chunked (over chunks of tokens, never holding the logits: at "
                   "4,096 tokens × 32k vocabulary 109 MiB of extra memory instead of 1,510, the same "
                   "loss to 1e-6), or auto: chunked on CPU (measured as fast or faster), naive on GPUs "
                   "(not yet measured there).")
    activation_checkpointing: str = _f("none", "Recompute activations in the backward pass: all "
                                       "(every decoder layer keeps only its input; ~30% more "
                                       "compute), every:K (every K-th layer), attn or mlp (only "
                                       "that block of each layer), or none.")
    activation_bits: str = _f("none", "Keep the decoder layers' saved activations in 8-bit blocks "
                              "(8: the dynamic-tree code, fp8: e4m3 codes; one float32 scale per "
                              "256) instead of their dtype, decoded in backward (gradients change "
                              "by the codes' rounding), or none.")
    offload_activations: bool = _f(False, "GPU runs: keep the decoder layers' saved activations "
                                   "in pinned host memory, copied on a side stream and back for "
                                   "backward (refused on CPU: there is no device memory to save).")
    fused_backward: bool = _f(False, "Layer-wise updates: update each parameter in the backward pass "
                              "as soon as its gradient is complete, then free it (one gradient alive "
                              "at a time). --grad-clip then scales each step by the previous step's "
                              "gradient norm.")
    fused_refresh_from: str = _f("accumulated", "With --fused-backward and --grad-accum > 1, where a "
                                 "refreshing subspace comes from: the step's 'accumulated' gradient "
                                 "(as without --fused-backward; that step holds full gradients) or "
                                 "its 'first' micro-batch (low-rank accumulation on every step).")
    eval_every: int = _f(50, "Evaluate validation loss/perplexity every N steps (and at the end).")
    eval_batches: int = _f(8, "Validation batches per evaluation (fixed, the same every time).")
    val_fraction: float = _f(0.05, "Share of documents held out for validation (by content hash).")
    log_every: int = _f(10, "Write a metrics.jsonl line every N steps.")
    save_every: int = _f(200, "Write a checkpoint every N steps (and at the end).")
    keep_last: int = _f(2, "Checkpoints to keep (older ones are deleted after a newer one is written).")
    seed: int = _f(0, "Seed for the initial weights and the data order.")
    device: str = _f("auto", "cpu, cuda, cuda:N, mps, or auto (a GPU when there is one).")
    threads: int | None = _f(None, "CPU threads for torch. Default: $OMP_NUM_THREADS if set, else the "
                             "idle cores (cores minus the load average, at least 1). Results depend on "
                             "it in the last bits, so a resumed run keeps its run's count.")
    out: str | None = _f(None, "Run directory. Default: runs/<command>-<model>-<optimizer>-<time>.")
    nproc: int = _f(1, "Processes (ranks) to train with, launched by torch.distributed.run (torchrun); "
                    "--batch-size is per rank. Under torchrun this is its world size.")
    parallel: str = _f("none", "How the ranks share the model: ddp (replicas, gradients all-reduced) or "
                       "fsdp (FSDP2: weights, gradients and optimizer state sharded by rows); none for "
                       "one process.")

    def validate(self) -> "TrainConfig":
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.parallel not in ("none", "ddp", "fsdp"):
            raise UserError(f"--parallel must be ddp, fsdp or none, got {self.parallel!r}")
        if self.nproc < 1:
            raise UserError(f"--nproc must be at least 1, got {self.nproc}")
        if self.nproc > 1 and self.parallel == "none":
            raise UserError(f"--nproc {self.nproc} needs --parallel ddp or --parallel fsdp (how the "
                            "ranks share the model)")
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches",
                     "log_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise UserError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise UserError(f"--warmup-steps must lie in [0, --steps={self.steps}], got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"--min-lr-ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise UserError(f"--grad-clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.fused_refresh_from not in ("accumulated", "first"):
            raise UserError(f"--fused-refresh-from must be accumulated or first, got "
                            f"{self.fused_refresh_from!r}")
        if self.schedule not in ("auto", "cosine", "constant"):
            raise UserError(f"--schedule must be auto, cosine or constant, got {self.schedule!r}")
        from ..activations import parse_bits, parse_policy
        for name, parse in (("activation_checkpointing", parse_policy), ("activation_bits", parse_bits)):
            try:
                parse(getattr(self, name))
            except ValueError as err:
                raise UserError(f"--{_flag(name)}: {err}") from None
        if self.loss not in ("auto", "naive", "chunked"):
            raise UserError(f"--loss must be auto, naive or chunked, got {self.loss!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        return self


# What fine-tuning changes: a pretrained model needs a far smaller step than training from scratch.
FINETUNE_DEFAULTS = dict(model=None, lr=3e-5, steps=200, eval_every=50, save_every=100)

# Zeroth-order recipes (MeZO's paper): the recipe's own lr (1e-6 for MeZO, not fine-tuning's
# 3e-5, at which it diverges), batch 16, a constant schedule without warmup.
ZEROTH_ORDER_DEFAULTS = dict(lr=None, batch_size=16, schedule="constant", warmup_steps=0)


def _zeroth_order(name) -> bool:
    from .. import optim

    try:
        return optim.recipe(str(name)).zeroth_order
    except ValueError:  # an unknown name fails later, with the list of names
        return False


# Settings that a resumed run may change: none of them alters what is computed.
# (activation checkpointing and offload change memory, not numbers: a run that ran out of memory
# may resume with them)
RESUMABLE_CHANGES = {"eval_every", "log_every", "save_every", "keep_last", "device", "out", "nproc",
                     "activation_checkpointing", "offload_activations"}


def _flag(name: str) -> str:
    return name.replace("_", "-").removesuffix("s") if name == "optim_args" else name.replace("_", "-")


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check a value from a config file against the field's type (YAML/TOML already typed it)."""
    kind = {f.name: f for f in fields(TrainConfig)}[name].type
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"{where}: {name} cannot be empty")
    if name == "activation_checkpointing" and isinstance(value, bool):  # written before policies
        return "all" if value else "none"
    if name == "activation_bits" and value == 8:  # YAML types a bare 8 as a number
        return "8"
    expected = (bool if kind.startswith("bool") else int if kind.startswith("int")
                else float if kind.startswith("float") else dict if kind.startswith("dict") else str)
    ok = (isinstance(value, expected) and not (expected is int and isinstance(value, bool))) or (
        expected is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise UserError(f"{where}: {name} must be {expected.__name__}, got {value!r}")
    return float(value) if expected is float else value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml) or TOML (.toml) file; keys may use - or _."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            raw = tomllib.loads(path.read_text())
        elif path.suffix.lower() in (".yaml", ".yml"):
            raw = yaml.safe_load(path.read_text()) or {}
        else:
            raise UserError(f"config file {str(path)!r} must end in .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"config file {str(path)!r} is not valid: {first_line(err)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of option: value")
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name == "kind":
            continue  # written into run directories; not an option
        if name not in names:
            raise UserError(f"config file {str(path)!r}: unknown option {key!r}; options are "
                            f"{', '.join(sorted(n.replace('_', '-') for n in names))}")
        out[name] = _coerce(name, value, str(path))
    return out


def resolve(kind: str, file_values: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """Defaults for ``kind`` ('pretrain' or 'finetune'), then the config file, then the flags given."""
    values = {f.name: (f.default_factory() if f.default is MISSING else f.default)
              for f in fields(TrainConfig)}
    if kind == "finetune":
        values.update(FINETUNE_DEFAULTS)
    flags = {k: v for k, v in flags.items() if v is not None}
    if _zeroth_order(flags.get("optimizer", file_values.get("optimizer", values["optimizer"]))):
        values.update(ZEROTH_ORDER_DEFAULTS)
    values.update(file_values)
    if "optim_args" in flags:  # recipe arguments merge, key by key
        flags["optim_args"] = {**values["optim_args"], **flags["optim_args"]}
    values.update(flags)
    if values["model"] is None:
        raise UserError("fine-tuning needs --model: a local directory with a pretrained model "
                        "(config.json, model.safetensors, tokenizer)")
    return TrainConfig(**values).validate()


def save_config(config: TrainConfig, kind: str, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump({"kind": kind, **asdict(config)}, sort_keys=False))


def load_run_config(path: Path) -> tuple[str, TrainConfig]:
    """The kind and settings of a run directory's ``config.yaml``, checked as a config file is."""
    raw = yaml.safe_load(path.read_text(errors="replace")) if path.stat().st_size else None
    if not isinstance(raw, dict) or raw.get("kind") not in ("pretrain", "finetune"):
        raise UserError(f"{path} is not a slimtrain run config (no 'kind: pretrain|finetune'); pass "
                        "the --out directory of an earlier run")
    return raw["kind"], TrainConfig(**read_config_file(path)).validate()


def merge_resume(saved: TrainConfig, flags: dict[str, Any]) -> TrainConfig:
    """The saved settings of a run, with only the harmless ones changed by flags given on --resume."""
    values = asdict(saved)
    for name, value in flags.items():
        if value is None or value == values[name]:
            continue
        if name not in RESUMABLE_CHANGES:
            raise UserError(f"--{_flag(name)} is {values[name]!r} in the run being resumed; a resumed "
                            "run keeps the settings that shape its results (to change them, start a "
                            "new run with --out)")
        values[name] = value
    return TrainConfig(**values).validate()
