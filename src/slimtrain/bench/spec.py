"""What a benchmark is: its settings and the methods it compares (``name:key=value:…``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError
from ..userinput import key_value


@dataclass(frozen=True)
class MethodSpec:
    """One method of a benchmark: a name from ``methods.available()`` plus options
    (``apollo-mini:rest=adafactor`` → name ``apollo-mini``, options ``{"rest": "adafactor"}``).
    ``lr`` among the options moves the centre of the method's learning-rate sweep."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        return ":".join([self.name] + [f"{k}={_show(v)}" for k, v in self.options])

    @property
    def slug(self) -> str:
        """A directory name: ``apollo-mini:rest=adafactor`` → ``apollo-mini_rest-adafactor``."""
        return "_".join([self.name] + [f"{k}-{_show(v)}" for k, v in self.options]).replace("/", "-")

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_method(text: str) -> MethodSpec:
    name, *pairs = [part.strip() for part in text.strip().split(":")]
    if not name:
        raise UserError(f"--methods: empty method name in {text!r}")
    options = {}
    for pair in pairs:
        parsed = key_value(pair)
        if parsed is None:
            raise UserError(f"--methods: {pair!r} in {text!r} must look like KEY=VALUE, e.g. "
                            "apollo-mini:rest=adafactor")
        options[parsed[0]] = parsed[1]
    return MethodSpec(name.lower(), tuple(sorted(options.items())))


# Where a method's sweep starts (methods.center_lr): "bench", its authors' lr with AdamW and the
# AdamW-like packages at 2e-3 (models as small as the CPU presets take larger steps); "papers", the
# lr of the papers' LLaMA runs for every method (AdamW 1e-3), for the papers' model sizes.
CENTERS = ("bench", "papers")


@dataclass
class BenchSettings:
    """Everything that shapes the numbers of a benchmark (``jobs`` only changes how fast it runs)."""

    methods: list[str] = field(default_factory=list)
    model: str = "tiny"
    data: str | None = None
    tokenizer: str | None = None
    text_field: str = "text"
    prompt_field: str | None = None  # fine-tuning data: a prompt masked out of the loss
    val_fraction: float = 0.05
    tokens: int = 600_000
    seq_len: int = 128
    batch_size: int = 16
    precision: str = "fp32"
    # The most trials a method spends on choosing its lr (sweep.py). 10 holds the case the protocol
    # was made for: a first seed that walks two rungs the wrong way (3 trials), the noise rule's two
    # reruns, two two-seed steps back to the optimum and one past it (2 each): 9. A method that
    # brackets without noise uses 3–5.
    trials: int = 10
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    centers: str = "bench"  # the sweeps' centres: "bench" (small-model AdamW at 2e-3) or "papers"
    rank: int | None = None
    refresh_every: int | None = None
    weight_decay: float = 0.0
    evals: int = 8
    eval_batches: int = 8
    threads: int = 1
    jobs: int = 1

    def validate(self) -> "BenchSettings":
        if not self.methods:
            raise UserError("--methods is empty; name at least one method (see `slimtrain bench --list`)")
        for name in ("tokens", "seq_len", "batch_size", "trials", "evals", "eval_batches", "threads", "jobs"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.tokens < self.seq_len * self.batch_size:
            raise UserError(f"--tokens {self.tokens:,} is less than one batch ({self.batch_size} × "
                            f"{self.seq_len} tokens); raise --tokens")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds must list distinct seeds, got {self.seeds}")
        for name in ("rank", "refresh_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if self.centers not in CENTERS:
            raise UserError(f"--centers must be {' or '.join(CENTERS)}, got {self.centers!r}")
        specs = [parse_method(m) for m in self.methods]
        dupes = {s.text for s in specs if [t.text for t in specs].count(s.text) > 1}
        if dupes:
            raise UserError(f"--methods names {', '.join(sorted(dupes))} twice")
        return self

    @property
    def steps(self) -> int:
        return max(1, round(self.tokens / (self.seq_len * self.batch_size)))

    @property
    def eval_every(self) -> int:
        return max(1, math.ceil(self.steps / self.evals))

    @property
    def mode(self) -> str:
        """"finetune" when the model is a directory with weights (trials start from them, as
        ``slimtrain finetune`` does), else "pretrain" (a preset, or a config without weights)."""
        from ..models.build import is_pretrained

        return "finetune" if is_pretrained(self.model) else "pretrain"

    def specs(self) -> list[MethodSpec]:
        return [parse_method(m) for m in self.methods]

    def outcome_fields(self) -> dict[str, Any]:
        """The settings that decide the numbers: finished runs are reused only when these match."""
        values = asdict(self)
        for name in ("methods", "jobs"):
            values.pop(name)
        if values["prompt_field"] is None:  # (results written before the field existed still match)
            values.pop("prompt_field")
        return values

    def command(self) -> str:
        """The command that reproduces this benchmark, every setting spelled out."""
        parts = ["slimtrain bench", f"--methods {','.join(self.methods)}", f"--model {self.model}"]
        for name in ("data", "tokenizer"):
            if getattr(self, name) is not None:
                parts.append(f"--{name} {getattr(self, name)}")
        if self.data is not None:
            parts.append(f"--text-field {self.text_field}")
        if self.prompt_field is not None:
            parts.append(f"--prompt-field {self.prompt_field}")
        parts += [f"--val-fraction {self.val_fraction:g}", f"--tokens {self.tokens}",
                  f"--seq-len {self.seq_len}", f"--batch-size {self.batch_size}",
                  f"--precision {self.precision}", f"--trials {self.trials}",
                  f"--seeds {','.join(map(str, self.seeds))}", f"--centers {self.centers}"]
        for name in ("rank", "refresh_every"):
            if getattr(self, name) is not None:
                parts.append(f"--{name.replace('_', '-')} {getattr(self, name)}")
        parts += [f"--weight-decay {self.weight_decay:g}", f"--evals {self.evals}",
                  f"--eval-batches {self.eval_batches}", f"--threads {self.threads}", f"--jobs {self.jobs}"]
        return " ".join(parts)
