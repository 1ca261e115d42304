"""Q-GaLore (Zhang et al., "Q-GaLore: Quantized GaLore with INT4 Projection and Layer-Adaptive
Low-Rank Gradients", arXiv 2407.08296).

| part | where |
|---|---|
| projector packed in 4 (or 8) bits, min–max groups | ``subspace/basis_store.py``, ``lowbit/codec.quantize_minmax`` |
| lazy refresh (similarity queue, growing / shrinking gap) | ``subspace/refresh.py`` |
| rule: Adam on R = PᵀG, back-map α·P·D | ``rules/adam.py``, ``subspace/backmap.py`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..groups import PipelineOptions
from ..rules.adam import AdamHyper
from .base import Base, Projection, ProjectedRecipe, Runtime, Subspace, like


@dataclass
class QGaLoreConfig(Runtime, Subspace, Projection, AdamHyper, Base):
    lr: float = like(Base, "lr", 0.01)
    projector_bits: int | None = like(PipelineOptions, "projector_bits", 4)
    projector_group: int = like(PipelineOptions, "projector_group")
    lazy_threshold: float = like(PipelineOptions, "lazy_threshold")
    lazy_queue: int = like(PipelineOptions, "lazy_queue")
    lazy_growth: float = like(PipelineOptions, "lazy_growth")


class QGaLore(ProjectedRecipe):
    r"""Q-GaLore (Zhang et al., "Q-GaLore: Quantized GaLore with INT4 Projection and Layer-Adaptive
    Low-Rank Gradients", arXiv 2407.08296, §3.2–3.3).

    GaLore (``W ← W·(1 − lr·λ) − lr·α·P·Adam(PᵀG)``) whose projector is stored in 4 bits —
    min–max codes in groups of 256, **two codes per byte** (Q-GaLore's code keeps one 4-bit code
    per byte, so its INT4 projector takes as much memory as INT8) — and refreshed lazily: after
    each refresh the |cos| between the new and previous leading basis vector joins a queue of 5;
    a full queue with mean ≥ 0.4 doubles the gap, below it halves the gap again (never below T;
    Q-GaLore only grows it, and compares signed vectors).

    Not here: Q-GaLore's INT8 weights with stochastic rounding (a model-side change) and its
    8-bit Adam states (the low-bit ``state_bits`` option adds those to every rule).
    """

    Config = QGaLoreConfig
    state_formula = ("projected m×n: 2·r·max(m,n) moments + ⌈r·min(m,n)·bits/8⌉ code bytes + 8 bytes per "
                     "group of 256 (scale, min) + 2 fp32 counters + (2 + queue) fp32 refresh "
                     "counters; others: as the rest rule")

    def parts(self, config):
        return dict(basis=config.basis, switch=config.switch, refresh="lazy",
                    projector_bits=config.projector_bits, projector_group=config.projector_group,
                    lazy_threshold=config.lazy_threshold, lazy_queue=config.lazy_queue,
                    lazy_growth=config.lazy_growth)
