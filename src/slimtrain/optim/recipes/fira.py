"""Fira (Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank
Constraint?", arXiv 2410.01623).

| part | where |
|---|---|
| selector, refresh, switch | ``subspace/selectors.py``, ``refresh.py``, ``lifecycle.py`` |
| rule: Adam on R = PᵀG | ``rules/adam.py`` |
| back-map α·P·D | ``subspace/backmap.py`` (``project``) |
| residual φ ⊙ (I − PPᵀ)G, φ = ‖D_j‖/‖R_j‖ | ``subspace/backmap.py`` (``fira``), ``geometry.minus_back`` |
| norm-growth limiter γ on the residual | ``subspace/backmap._limit`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..groups import PipelineOptions
from ..rules.adam import AdamHyper
from .base import Base, Projection, ProjectedRecipe, Runtime, Subspace, like


@dataclass
class FiraConfig(Runtime, Subspace, Projection, AdamHyper, Base):
    lr: float = like(Base, "lr", 0.01)
    eps: float = like(AdamHyper, "eps", 1e-6)
    limiter: float | None = like(PipelineOptions, "limiter", 1.01)


class Fira(ProjectedRecipe):
    r"""Fira (Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank
    Constraint?", arXiv 2410.01623, Alg. 1).

    GaLore plus a norm-scaled residual: with R = PᵀG, D = Adam(R) and
    φ_j = ‖D_j‖/(‖R_j‖ + 1e-8) per channel of the larger side,
    ``W ← W·(1 − lr·λ) − lr·(α·P·D + NL(φ ⊙ (I − PPᵀ)G))``, NL the norm-growth limiter (γ = 1.01).

    Difference from the ``fira`` package (deliberate): it computes the residual as
    ``G − α·PPᵀG``, so with α = 0.25 three quarters of the in-subspace gradient leak into the
    residual (57.6% of the residual's norm lies inside the subspace on LLaMA-60M); we use the
    paper's (I − PPᵀ)G. For α = 1 the two agree. Also: randomized SVD by default
    (``basis="svd"`` for the package's exact SVD), weight decay before the update.
    """

    Config = FiraConfig
    state_formula = ("projected m×n: 2·r·max(m,n) moments + r·min(m,n) fp32 basis + limiter norm + "
                     "2 fp32 counters; others: as the rest rule")

    def parts(self, config):
        return dict(basis=config.basis, switch=config.switch, residual="fira",
                    limiter=config.limiter)
