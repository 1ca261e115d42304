"""Layer sampling (LISA: Pan et al. 2024, "Layerwise Importance Sampling for Memory-Efficient LLM
Fine-Tuning"; OwLore: Li et al. 2024, "Outlier-weighed Layerwise Sampled Low-Rank Projection"): of
the model's L blocks, γ train at a time — resampled every K steps from a generator seeded by
(seed, period), uniformly (LISA) or weighted by each block's outlier ratio (OwLore) —; every
parameter outside the blocks (embeddings, head, final norm) always trains.

An inactive block has ``requires_grad`` off (backward computes no gradient for it) and holds no
optimizer state: its state is dropped when it leaves, and starts from zero when it comes back
(LMFlow's LISA keeps it in memory; dropping it is what makes memory follow γ). A block chosen
again at a resampling keeps its state. The sampler's state — its step count, seed and weights —
is saved with the optimizer, so a resumed run draws the same active sets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .config import option

BLOCK_PATTERN = r"\.(?:layers|h|blocks|layer)\.(\d+)\."
KEY = "_layer_sampling"  # in each saved param group: [steps, seed, *weights]


@dataclass
class Sampling:
    """The options of a layer-sampling recipe."""

    layers_active: int = option(2, "γ: blocks that train at a time", low=1, integer=True)
    layers_every: int = option(20, "K: steps between resamplings of the active blocks", low=1,
                               integer=True)
    layers_seed: int = option(0, "seed of the sampling (with the period: the same sets on resume)",
                              low=0, integer=True)
    blocks: Any = option(None, "regex whose first group captures a parameter's block index; None: "
                         "'.layers.N.' / '.h.N.' / '.blocks.N.' (LLaMA, GPT-2, GPT-NeoX, …)")


def find_blocks(names: list[str], pattern: str | None) -> dict[int, list[int]]:
    """{block index: positions in ``names`` of its parameters}."""
    rx = re.compile(pattern or BLOCK_PATTERN)
    if rx.groups < 1:
        raise ValueError(f"blocks={pattern!r} must capture the block index in a group, e.g. "
                         r"r'\.layers\.(\d+)\.'")
    out: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        m = rx.search(name)
        if m:
            out.setdefault(int(m.group(1)), []).append(i)
    return dict(sorted(out.items()))


def outlier_ratios(blocks: list[list[Tensor]], threshold: float) -> list[float] | None:
    """OwLore's (OWL's) layer-wise outlier ratio per block: the fraction of its matrices' entries
    whose score exceeds ``threshold`` × the block's mean score. The score here is |W| (the papers
    multiply by the input's norm from calibration data, which an optimizer does not see). None
    (uniform) for a model without values (the planner's meta tensors)."""
    if any(p.is_meta for params in blocks for p in params):
        return None
    ratios = []
    for params in blocks:
        scores = torch.cat([p.detach().abs().float().reshape(-1) for p in params if p.dim() == 2])
        ratios.append(float((scores > threshold * scores.mean()).float().mean()))
    return ratios


class LayerSampler:
    """Which blocks train; ``optimizer`` (a PipelineOptimizer) allocates and drops their state."""

    def __init__(self, blocks: list[list[Tensor]], active: int, every: int, seed: int,
                 weights: list[float] | None = None):
        if not blocks:
            raise ValueError("layer sampling found no blocks in the parameter names; pass blocks= "
                             r"(a regex capturing the block index, e.g. r'\.layers\.(\d+)\.')")
        if active > len(blocks):
            raise ValueError(f"layers_active={active} is more than the model's {len(blocks)} "
                             "blocks; choose at most that many")
        self.blocks, self.count, self.every, self.seed = blocks, active, every, seed
        self.weights = self._normalised(weights or [1.0] * len(blocks))
        self.steps = 0
        self.active: tuple[int, ...] = ()
        self._block_of = {p: b for b, params in enumerate(blocks) for p in params}

    @staticmethod
    def _normalised(weights: list[float]) -> list[float]:
        total = sum(weights)
        if not total > 0:  # no block has an outlier: sample uniformly
            return [1.0 / len(weights)] * len(weights)
        return [w / total for w in weights]

    def choose(self, period: int) -> tuple[int, ...]:
        """The active blocks of ``period`` (a pure function of seed, period and weights)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + period)
        picked = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), self.count,
                                   replacement=False, generator=g)
        return tuple(sorted(picked.tolist()))

    def trains(self, p: Tensor) -> bool:
        return p not in self._block_of or self._block_of[p] in self.active

    def apply(self, optimizer, period: int) -> None:
        chosen = self.choose(period)
        groups = optimizer._group_of()
        for b, params in enumerate(self.blocks):
            on = b in chosen
            for p in params:
                if on and not optimizer.state.get(p):
                    optimizer._init_state(groups[p], p)
                elif not on:
                    optimizer.state.pop(p, None)
                    p.grad = None
                p.requires_grad_(on)
        self.active = chosen

    def after_step(self, optimizer) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self.apply(optimizer, self.steps // self.every)

    def seek(self, optimizer, steps: int) -> None:
        """Put the sampler where it was after ``steps`` optimizer steps (before loading a
        checkpoint into a template built from this optimizer, e.g. with
        torch.distributed.checkpoint)."""
        self.steps = int(steps)
        self.apply(optimizer, self.steps // self.every)

    def saved(self) -> list:
        return [self.steps, self.seed, *self.weights]

    def restore(self, optimizer, saved: list) -> None:
        if len(saved) != 2 + len(self.blocks):
            raise ValueError(f"this optimizer state samples {len(saved) - 2} blocks, this optimizer "
                             f"{len(self.blocks)}: it was saved for another model")
        self.seed, self.weights = int(saved[1]), [float(w) for w in saved[2:]]
        self.seek(optimizer, int(saved[0]))
