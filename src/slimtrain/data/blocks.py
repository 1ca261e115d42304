"""Packing into fixed-length blocks and the order in which training visits them.

The token stream of a split is cut into consecutive, non-overlapping blocks of ``seq_len`` tokens
(documents run across block boundaries, separated by EOS — the GaLore papers' packing). Training
visits the blocks in a fresh random order each epoch; the order of epoch e is a pure function of
(seed, e), so the whole data position is one integer — the number of blocks consumed — and resuming
from it replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = -100  # labels the loss skips (transformers' convention)


class Blocks:
    def __init__(self, tokens: np.ndarray, mask: np.ndarray | None, seq_len: int):
        self.tokens, self.mask, self.seq_len = tokens, mask, seq_len
        self.count = len(tokens) // seq_len

    def __len__(self) -> int:
        return self.count

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)`` of shape (len(indices), seq_len); the model shifts the labels."""
        rows = [np.asarray(self.tokens[i * self.seq_len:(i + 1) * self.seq_len], dtype=np.int64)
                for i in indices]
        ids = torch.from_numpy(np.stack(rows))
        labels = ids.clone()
        if self.mask is not None:
            keep = np.stack([self.mask[i * self.seq_len:(i + 1) * self.seq_len] for i in indices])
            labels[torch.from_numpy(keep == 0)] = IGNORE_INDEX
        return ids, labels


class EpochOrder:
    """Block indices for a global position: a seeded permutation per epoch, made on demand."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed
        self._epoch, self._perm = -1, None

    def take(self, position: int, n: int) -> list[int]:
        out = []
        for pos in range(position, position + n):
            epoch, index = divmod(pos, self.count)
            if epoch != self._epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.count, generator=gen)
            out.append(int(self._perm[index]))
        return out
