"""APOLLO and APOLLO-Mini (Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance",
MLSys 2025).

| part | where |
|---|---|
| selector: Gaussian sketch regenerated from a seed | ``subspace/selectors.gaussian_basis``, ``basis_store.py`` (seed) |
| R = PᵀG | ``subspace/geometry.py`` |
| rule: Adam | ``rules/adam.py`` |
| back-map: G scaled per channel / per tensor by ‖D‖/‖R‖, √scale | ``subspace/backmap.py`` (``channel``, ``tensor``) |
| norm-growth limiter γ | ``subspace/backmap._limit`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..groups import PipelineOptions
from ..rules.adam import AdamHyper
from .base import Base, Projection, ProjectedRecipe, Runtime, Subspace, like


@dataclass
class APOLLOConfig(Runtime, Projection, AdamHyper, Base):
    lr: float = like(Base, "lr", 0.01)
    eps: float = like(AdamHyper, "eps", 1e-6)
    scale: float = like(Projection, "scale", 1.0)
    limiter: float | None = like(PipelineOptions, "limiter", 1.01)
    switch: str = like(Subspace, "switch")


class APOLLO(ProjectedRecipe):
    r"""APOLLO (Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025, Alg. 1).

    Per target matrix, with a random Gaussian sketch P (N(0, 1/r) entries, a new one every
    ``refresh_every`` steps, **stored as a seed**: derived from the parameter's name and the step,
    regenerated each step): R = PᵀG (or G Qᵀ); Adam on R gives D; per channel of the larger side
    s_j = ‖D_j‖/(‖R_j‖ + 1e-8); the update is the *full-rank gradient* rescaled,
    ``W ← W·(1 − lr·λ) − lr·√scale · NL(G ⊙ s)`` where NL is the norm-growth limiter (γ = 1.01).
    ``scale`` is apollo-torch's (paper α = √scale).

    Equals apollo-torch's ``APOLLOAdamW`` (``proj="random"``, ``scale_type="channel"``) on the same
    random matrices, with these differences: the matrix is never stored (apollo-torch keeps it,
    r·min(m, n) floats per matrix); seeds come from names, not from the parameter order; weight decay
    is applied before the update (apollo-torch: after); eps goes after bias correction unless
    ``eps_mode="hf"``. Moments are kept across refreshes (``switch="keep"``), as the authors do.
    """

    Config = APOLLOConfig
    state_formula = ("projected m×n: 2·r·max(m,n) moments + one int64 seed + limiter norm + 2 fp32 "
                     "counters (no stored projection); others: as the rest rule")
    scaling = "channel"

    def parts(self, config):
        return dict(basis="gaussian", backmap=self.scaling, limiter=config.limiter,
                    switch=config.switch)


@dataclass
class APOLLOMiniConfig(APOLLOConfig):
    rank: int = like(Projection, "rank", 1)
    scale: float = like(Projection, "scale", 128.0)


class APOLLOMini(APOLLO):
    r"""APOLLO-Mini (Zhu et al. 2025, §4.2): APOLLO with rank 1 and one *tensor-wise* scale
    s = ‖D‖/(‖R‖ + 1e-8), ``scale=128`` (paper α = √128): SGD-sized state (2·max(m, n) moments
    per matrix) with AdamW-level results in the paper. Update:
    ``W ← W·(1 − lr·λ) − lr·√scale · NL(s·G)``. Same differences from apollo-torch as ``APOLLO``.
    """

    Config = APOLLOMiniConfig
    state_formula = ("projected m×n: 2·max(m,n) moments + one int64 seed + limiter norm + 2 fp32 "
                     "counters; others: as the rest rule")
    scaling = "tensor"
