"""GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
ICML 2024) with Adam, 8-bit Adam, Adafactor or Lion in the subspace.

| part | where |
|---|---|
| selector: randomized / exact SVD, refresh every T, switch keep/reset/reproject | ``subspace/selectors.py``, ``refresh.py``, ``lifecycle.py`` |
| R = PᵀG, back-map α·P·D with weight decay folded in | ``subspace/geometry.py``, ``backmap.py`` |
| rule: Adam / Adafactor / Lion | ``rules/adam.py``, ``adafactor.py``, ``lion.py`` |
| 8-bit moments (GaLoreAdamW8bit) | ``lowbit/`` |
| the parameters outside targets | ``recipes/rest.py`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.adafactor import AdafactorHyper
from ..rules.adam import AdamHyper
from ..rules.lion import LionHyper
from .base import Base, Projection, ProjectedRecipe, Runtime, Subspace, like


@dataclass
class GaLoreConfig(Runtime, Subspace, Projection, AdamHyper, Base):
    lr: float = like(Base, "lr", 0.01)
    eps: float = like(AdamHyper, "eps", 1e-6)


class GaLoreAdamW(ProjectedRecipe):
    r"""GaLore with Adam (Alg. 2).

    For each target matrix W (m×n), every ``refresh_every`` steps the basis P (the top-``rank``
    singular vectors of the current gradient on the smaller side) is recomputed; every step
    ``R = PᵀG`` (or ``G Qᵀ``), Adam runs on R (state r × max(m, n)), and
    ``W ← W·(1 − lr·λ) − lr·α·P·Adam(R)``. Parameters outside ``targets`` train with the ``rest``
    rule (AdamW by default, ``"adafactor"`` for a factored second moment).

    Differences from galore-torch 1.0, all deliberate: the default basis is a warm-started
    randomized SVD (``basis="svd"`` gives galore-torch's exact SVD); eps is added after bias
    correction as in torch's AdamW (``eps_mode="hf"`` reproduces galore-torch's placement);
    weight decay is applied before the update, as torch does (galore-torch applies it after).
    Matrices with ``rank >= min(m, n)`` fall back to AdamW with a warning instead of keeping a
    full-size "low-rank" state.

    Param groups written for ``galore_torch.GaLoreAdamW`` (``rank``, ``update_proj_gap``,
    ``scale``, ``proj_type``) are accepted unchanged.
    """

    Config = GaLoreConfig
    state_formula = ("projected m×n: 2·r·max(m,n) moments + r·min(m,n) fp32 basis + 2 fp32 "
                     "counters; others: as the rest rule")


@dataclass
class GaLore8bitConfig(GaLoreConfig):
    rest: str = like(Projection, "rest", "adamw8bit")
    state_bits: int | str | None = like(Runtime, "state_bits", 8)


class GaLoreAdamW8bit(GaLoreAdamW):
    r"""GaLore with 8-bit Adam states (the GaLore paper's "8-bit GaLore"): the low-rank moments
    (r × max(m, n)) and, with the default ``rest="adamw8bit"``, the moments of the parameters
    outside ``targets`` are block-wise 8-bit (``rest="adamw"`` keeps those in the parameter dtype).
    Unlike galore-torch's GaLoreAdamW8bit it runs on CPU, leaves ``p.grad`` untouched and clones
    no weights."""

    Config = GaLore8bitConfig
    state_formula = ("projected m×n: 2·(r·max(m,n) + 4·⌈r·max(m,n)/256⌉) bytes + r·min(m,n) fp32 "
                     "basis + 2 fp32 counters; others: as the rest rule (AdamW8bit)")


@dataclass
class GaLoreAdafactorConfig(Runtime, Subspace, Projection, AdafactorHyper, Base):
    lr: float = like(Base, "lr", 0.01)


class GaLoreAdafactor(ProjectedRecipe):
    r"""GaLore with Adafactor (§4.3; galore-torch's ``GaLoreAdafactor`` as its scripts and the HF
    Trainer run it: ``relative_step=False, scale_parameter=False``).

    The factored second moment is kept for the projected gradient R = PᵀG: r + max(m, n) numbers
    per matrix. ``U = clip(R/√V̂)`` with V̂ from the row and column means of R² + ε₁,
    β₂ₜ = 1 − t^decay_rate; with ``beta1`` a first moment averages U;
    ``W ← W·(1 − lr·λ) − lr·α·P·U``. See ``rules.adafactor.AdafactorRule`` for the one difference
    from galore-torch (lr applied after the first moment).
    """

    Config = GaLoreAdafactorConfig
    rule = "adafactor"
    state_formula = ("projected m×n: r + max(m,n) factored moments (+ r·max(m,n) with beta1) + "
                     "r·min(m,n) fp32 basis + 2 fp32 counters; others: as the rest rule")


@dataclass
class GaLoreLionConfig(Runtime, Subspace, Projection, LionHyper, Base):
    pass


class GaLoreLion(ProjectedRecipe):
    r"""GaLore with Lion (Chen et al. 2023, Alg. 2, run in GaLore's subspace; FRUGAL's ``lion``
    state-full rule without the residual).

    ``D = sign(β₁M + (1−β₁)R)``, ``M ← β₂M + (1−β₂)R`` on R = PᵀG (one r × max(m, n) moment);
    ``W ← W·(1 − lr·λ) − lr·α·P·D``. Lion's lr is typically 3–10× below Adam's; the default
    (1e-3 with α = 0.25) follows that from GaLore's 0.01.
    """

    Config = GaLoreLionConfig
    rule = "lion"
    state_formula = ("projected m×n: r·max(m,n) moment + r·min(m,n) fp32 basis + 2 fp32 counters; "
                     "others: as the rest rule")
