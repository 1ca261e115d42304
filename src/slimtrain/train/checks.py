"""What a run checks before it trains: a resumed run's settings against its checkpoint's, and the
train/validation split of its data."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..data import Blocks
from ..errors import UserError
from .config import RESUMABLE_CHANGES, TrainConfig


def settings_record(config: TrainConfig) -> dict:
    """The settings that shape a run's results, as plain values (saved in every checkpoint). The
    batch is the global one (per-rank batch × ranks): a run may resume on another number of ranks,
    each then taking its share of the same global batch."""
    record = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    record["global_batch"] = record.pop("batch_size") * config.nproc
    return record


def per_rank_batch(config: TrainConfig, state: dict, world: int) -> None:
    """On resume, the per-rank batch that keeps the checkpoint's global batch on ``world`` ranks."""
    saved = state.get("config", {}).get("global_batch")
    if saved is None or saved == config.batch_size * world:
        return
    if saved % world:
        raise UserError(f"the run's global batch of {saved} sequences cannot be split over {world} "
                        f"ranks; resume with --nproc dividing {saved}")
    config.batch_size = saved // world


def check_same_settings(config: TrainConfig, state: dict, ckpt: Path, run_dir: Path) -> None:
    """config.yaml (what this resume would run) against the settings the checkpoint was trained
    with: a hand edit must not switch the recipe, the lr or the schedule in the middle of a run."""
    saved = state.get("config")
    if saved is None:  # written before checkpoints kept their settings (trainer state version 1)
        return
    now = settings_record(config)
    for name in now:
        if name in saved and saved[name] != now[name]:
            raise UserError(f"{run_dir / 'config.yaml'} says {name}: {now[name]!r}, but {ckpt} was "
                            f"trained with {name}: {saved[name]!r}; restore that setting (a resumed "
                            "run keeps what shapes its results), or start a new run with --out")


def check_split(meta: dict, train: Blocks, val: Blocks, config: TrainConfig, say) -> None:
    """Enough of each split, predicted tokens to train on, and a validation share near the one
    asked for — each failure said as what it is."""
    docs = meta["train_documents"] + meta["val_documents"]
    few = (f"the corpus holds {docs} document{'s' if docs != 1 else ''} and --val-fraction "
           f"{config.val_fraction} holds out whole documents (by content hash)")
    split_more = ("split the text into more documents (one JSON record each, or blank lines "
                  "between the parts of a text file)")
    if meta["val_documents"] == 0:
        raise UserError(f"no document was held out for validation: {few}; {split_more}, or raise "
                        "--val-fraction")
    if meta["train_documents"] == 0:
        raise UserError(f"every document went to validation: {few}; {split_more}, or lower "
                        "--val-fraction")
    if len(train) < config.batch_size:
        raise UserError(f"the training split holds {len(train)} blocks of {config.seq_len} tokens, fewer "
                        f"than one batch of {config.batch_size}; add data or lower --batch-size / --seq-len")
    if len(val) == 0:
        raise UserError(f"the validation split holds {meta['val_tokens']} tokens, less than one "
                        f"sequence of {config.seq_len}; raise --val-fraction, add data, or lower --seq-len")
    if train.mask is not None and not train.mask.any():
        raise UserError("no token of the training split is predicted: every token belongs to a "
                        f"prompt (--prompt-field {config.prompt_field!r}); check --prompt-field and "
                        "--text-field")
    share = meta["val_tokens"] / (meta["train_tokens"] + meta["val_tokens"])
    if not config.val_fraction / 2 <= share <= 2 * config.val_fraction:
        say(f"warning: validation holds {share:.1%} of the tokens, not the {config.val_fraction:.0%} "
            f"asked: whole documents are held out and {docs} documents make the share coarse")
