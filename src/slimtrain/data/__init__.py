"""Corpora, tokenizers and packing: from ``--data`` to batches of fixed-length blocks.

``sources`` reads documents (text, JSONL, saved datasets; streaming), ``corpus`` builds the embedded
default (the Python standard library's sources), ``tokenizer`` loads or trains tokenizers, ``tokens``
tokenizes to disk with a content-hash train/validation split, ``blocks`` packs and orders batches.
"""

from .blocks import IGNORE_INDEX, Blocks, EpochOrder
from .corpus import Corpus, default_corpus
from .sources import data_format, fingerprint, iter_records
from .tokenizer import EOS, cached_bpe, load_tokenizer, train_bpe
from .tokens import TokenFiles, is_validation, tokenized

__all__ = ["IGNORE_INDEX", "Blocks", "EpochOrder", "Corpus", "default_corpus", "data_format",
           "fingerprint", "iter_records", "EOS", "cached_bpe", "load_tokenizer", "train_bpe",
           "TokenFiles", "is_validation", "tokenized"]
