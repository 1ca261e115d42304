"""FRUGAL (Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for
Scalable Training", ICML 2025).

| part | where |
|---|---|
| selector: SVD / randomized / orthogonal / columns / blocks, rank or density | ``subspace/selectors.py`` |
| switch: reset the moments | ``subspace/lifecycle.py`` |
| rule: Adam or Lion in the subspace | ``rules/adam.py``, ``rules/lion.py`` |
| state-free residual sign((I − PPᵀ)G) or (I − PPᵀ)G | ``subspace/backmap.py`` (``sign``, ``sgd``) |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..groups import PipelineOptions
from ..rules.adam import AdamHyper
from .base import Base, Projection, ProjectedRecipe, Runtime, Subspace, like


@dataclass
class FRUGALConfig(Runtime, Subspace, Projection, AdamHyper, Base):
    density: float | None = like(PipelineOptions, "density", 0.25)
    rank: int | None = like(Projection, "rank", None)
    scale: float = like(Projection, "scale", 1.0)
    switch: str = like(Subspace, "switch", "reset")
    residual: str = option("sign", "the state-free step outside the subspace: sign (signSGD) or "
                           "sgd", choices=("sign", "sgd"))
    residual_scale: float = like(PipelineOptions, "residual_scale")
    rule: str = option("adam", "the state-full rule in the subspace", choices=("adam", "lion"))


class FRUGAL(ProjectedRecipe):
    r"""FRUGAL (Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead
    for Scalable Training", ICML 2025, Alg. 1).

    Splits each target's gradient into a state-full part in a subspace and a state-free rest:
    ``W ← W·(1 − lr·λ) − lr·α·P·Rule(PᵀG) − lr·α·residual_scale·sign((I − PPᵀ)G)``
    (``residual="sgd"``: without the sign). The subspace (``rank``, or ``density`` × min(m, n)
    per matrix, 0.25 by default) is chosen every ``refresh_every`` steps by ``basis``: ``svd`` /
    ``randomized`` (top singular vectors), ``orthogonal`` (random), ``columns`` (random
    coordinates), ``blocks`` (consecutive coordinates, last block first); the rule's state is reset
    at every switch (``switch="reset"``). ``rule`` is ``"adam"`` or ``"lion"``.

    Difference from FRUGAL's code: its ``BlockOptimizer`` activates whole parameters (BAdam-like),
    so its state size changes with the active set; our ``blocks`` selects a block of coordinates
    within every matrix, which keeps every matrix's state fixed (and the memory plan exact).
    """

    Config = FRUGALConfig
    state_formula = ("projected m×n (r = rank or round(density·min(m,n))): rule moments of r×max(m,n) "
                     "+ r·min(m,n) fp32 basis + 2 fp32 counters, nothing for the residual; others: "
                     "as the rest rule")

    def check(self, config):
        if config.rank is None and config.density is None:
            raise ValueError("FRUGAL needs rank= or density= for its state-full subspace")

    def rule_of(self, config):
        return config.rule

    def parts(self, config):
        return dict(basis=config.basis, switch=config.switch, residual=config.residual,
                    residual_scale=config.residual_scale)
