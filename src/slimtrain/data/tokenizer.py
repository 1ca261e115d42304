"""Tokenizers: load one saved in Hugging Face layout, or train a byte-level BPE on the corpus.

A trained tokenizer is saved with ``transformers``' ``save_pretrained`` (``tokenizer.json`` plus its
config), so ``AutoTokenizer.from_pretrained(dir)`` and every checkpoint directory load it back.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from .._warnings import warn
from ..errors import UserError, first_line
from ..paths import cache_dir
from .cache import new_temp_dir, publish

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: Path | None = None):
    """A byte-level BPE (GPT-2 style: any UTF-8 text encodes, no unknown token) with ``vocab_size``
    entries, ``<|endoftext|>`` as end-of-sequence and padding token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise UserError(f"a byte-level BPE needs a vocabulary of at least 258 (256 bytes, "
                        f"<|endoftext|>, one merge), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   model_max_length=1 << 30)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(path: str | Path):
    """A fast tokenizer from a local directory (or ``tokenizer.json``) in Hugging Face layout."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer path {str(path)!r} does not exist; pass a directory saved by "
                        "save_pretrained or made by `slimtrain tokenizer train`")
    try:
        if path.is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
        else:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises many types for unreadable tokenizer dirs
        raise UserError(f"could not load a tokenizer from {str(path)!r} ({first_line(err)}); "
                        "pass a directory saved by save_pretrained or `slimtrain tokenizer train`") from None
    if not tok.is_fast:
        raise UserError(f"the tokenizer at {str(path)!r} is a slow (Python) tokenizer; slimtrain needs "
                        "a fast one (tokenizer.json)")
    if tok.eos_token_id is None:
        raise UserError(f"the tokenizer at {str(path)!r} has no end-of-sequence token, which slimtrain "
                        "puts between documents; set eos_token in its tokenizer_config.json")
    tok.model_max_length = 1 << 30  # we pack into blocks ourselves; silence length warnings
    return tok


def cached_bpe(texts_factory, corpus_key: str, vocab_size: int, say=print):
    """The BPE trained on a corpus (identified by ``corpus_key``), trained on first use and cached."""
    final = cache_dir("tokenizers") / hashlib.sha256(f"{corpus_key}\0{vocab_size}".encode()).hexdigest()[:16]
    if final.exists():
        try:
            return load_tokenizer(final), final
        except UserError:
            warn(f"the cached tokenizer in {final} is damaged; training it again")
            shutil.rmtree(final, ignore_errors=True)
    if not final.exists():
        say(f"training a byte-level BPE tokenizer ({vocab_size:,} tokens) on the corpus ...")
        tmp = new_temp_dir(final)
        train_bpe(texts_factory(), vocab_size, tmp)
        try:
            publish(tmp, final)
        except OSError:  # a concurrent run published it first
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(final), final
