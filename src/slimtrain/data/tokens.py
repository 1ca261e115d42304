"""Tokenized corpora on disk: documents → token ids (+ loss mask) in flat binary files, split into
train and validation by a hash of each document's content.

The split is per document and decided by its content alone, so it is reproducible, needs no
shuffling buffer (corpora stream through), and identical documents always land on the same side:
no validation text is ever trained on. Each document is followed by the end-of-sequence token.
Files are written to a temporary directory and published atomically; training reads them with
``numpy.memmap``, so corpora larger than RAM work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._warnings import warn
from ..errors import UserError
from ..paths import cache_dir
from .cache import new_temp_dir, publish
from .sources import Record

FORMAT = 1
_BATCH_DOCS = 512


def is_validation(text: str, fraction: float) -> bool:
    """Whether a document is held out: a fixed share of the 64-bit hash space of its content."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little")
    return h < fraction * 2.0 ** 64


@dataclass
class TokenFiles:
    """One tokenized corpus: ``train.bin`` / ``val.bin`` (and ``*.mask.bin`` when prompts are masked)."""

    root: Path
    meta: dict

    def tokens(self, split: str) -> np.ndarray:
        return _map(self.root / f"{split}.bin", self.meta["dtype"])

    def mask(self, split: str) -> np.ndarray | None:
        path = self.root / f"{split}.mask.bin"
        return _map(path, "uint8") if path.exists() else None


def _map(path: Path, dtype: str) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _whole(root: Path) -> bool:
    """Whether a cached entry is complete: meta.json readable, every file the size it says."""
    try:
        meta = json.loads((root / "meta.json").read_text())
        item = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            expected = meta[f"{split}_tokens"]
            if (root / f"{split}.bin").stat().st_size != expected * item:
                return False
            if meta["masked"] and (root / f"{split}.mask.bin").stat().st_size != expected:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def tokenize(records: Iterable[Record], tokenizer, out: Path, val_fraction: float,
             masked: bool) -> dict:
    """Stream ``records`` into ``out``/{train,val}.bin; returns the metadata written to meta.json."""
    backend = tokenizer.backend_tokenizer
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    files = {s: open(out / f"{s}.bin", "wb") for s in ("train", "val")}
    masks = {s: open(out / f"{s}.mask.bin", "wb") for s in ("train", "val")} if masked else {}
    counts = {"train_tokens": 0, "val_tokens": 0, "train_documents": 0, "val_documents": 0}

    def flush(batch: list[Record]) -> None:
        texts = backend.encode_batch([t for _, t in batch], add_special_tokens=False)
        prompts = (backend.encode_batch([p for p, _ in batch], add_special_tokens=False)
                   if masked else [None] * len(batch))
        for (prompt, text), enc, penc in zip(batch, texts, prompts):
            split = "val" if is_validation(prompt + text, val_fraction) else "train"
            ids = (penc.ids if masked else []) + enc.ids + [eos]
            files[split].write(np.asarray(ids, dtype=dtype).tobytes())
            if masked:  # loss on the response and the EOS that ends it, not on the prompt
                loss = np.ones(len(ids), dtype=np.uint8)
                loss[:len(penc.ids)] = 0
                masks[split].write(loss.tobytes())
            counts[f"{split}_tokens"] += len(ids)
            counts[f"{split}_documents"] += 1

    try:
        batch: list[Record] = []
        for prompt, text in records:
            if text.strip():
                batch.append((prompt, text))
            if len(batch) == _BATCH_DOCS:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        for f in (*files.values(), *masks.values()):
            f.close()
    return dict(format=FORMAT, dtype=np.dtype(dtype).name, val_fraction=val_fraction,
                masked=masked, vocab=len(tokenizer), eos=eos, **counts)


def tokenized(records_factory: Callable[[], Iterable[Record]], data_key: str, tokenizer,
              val_fraction: float, masked: bool, describe: str,
              say: Callable[[str], None] = lambda msg: None) -> TokenFiles:
    """The token files for (data, tokenizer, split, masking), tokenizing on first use; cached."""
    tok_key = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    key = hashlib.sha256(f"{FORMAT}\0{data_key}\0{tok_key}\0{val_fraction}\0{masked}".encode())
    final = cache_dir("tokens") / key.hexdigest()[:16]
    if final.exists() and not _whole(final):
        warn(f"the cached token files in {final} are damaged (a size does not match meta.json); "
             "tokenizing again")
        shutil.rmtree(final, ignore_errors=True)
    if not final.exists():
        say(f"tokenizing {describe} (once; cached at {final}) ...")
        tmp = new_temp_dir(final)
        try:
            meta = tokenize(records_factory(), tokenizer, tmp, val_fraction, masked)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if meta["train_documents"] + meta["val_documents"] == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"the corpus {describe} holds no text (no non-empty documents); "
                            "point --data at files with text in them")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            publish(tmp, final)
        except OSError:  # a concurrent run published the same files first
            shutil.rmtree(tmp, ignore_errors=True)
    return TokenFiles(final, json.loads((final / "meta.json").read_text()))
