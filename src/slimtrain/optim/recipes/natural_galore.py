"""Natural GaLore (Das, "Natural GaLore: Accelerating GaLore for memory-efficient LLM Training and
Fine-tuning", arXiv 2410.16029).

| part | where |
|---|---|
| selector, refresh, switch | ``subspace/`` |
| rule: Woodbury natural gradient over the last s low-rank gradients, then Adam | ``rules/natural.py`` (→ ``rules/adam.py``) |
| back-map α·P·D | ``subspace/backmap.py`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.natural import NaturalHyper
from .base import Base, Projection, ProjectedRecipe, Runtime, Subspace, like


@dataclass
class NaturalGaLoreConfig(Runtime, Subspace, Projection, NaturalHyper, Base):
    lr: float = like(Base, "lr", 0.01)
    eps: float = like(NaturalHyper, "eps", 1e-6)


class NaturalGaLore(ProjectedRecipe):
    r"""Natural GaLore (Das, "Natural GaLore: Accelerating GaLore for memory-efficient LLM Training
    and Fine-tuning", arXiv 2410.16029, Alg. 1).

    GaLore whose low-rank gradient g = PᵀG is first preconditioned by the inverse empirical Fisher
    of the last ``history`` (s = 20) low-rank gradients, F = λI + Σ gᵢgᵢᵀ, by Woodbury (an s×s
    Cholesky solve, see ``rules.NaturalRule``), then fed to Adam:
    ``W ← W·(1 − lr·λ_wd) − lr·α·P·Adam(F⁻¹g)``. The history is a ring buffer in state
    (s·r·max(m, n) numbers per matrix), emptied with the moments on ``switch="reset"``.

    Difference from the authors' code: one-sided projection (state r × max(m, n), as GaLore) rather
    than their two-sided Tucker-style projection.
    """

    Config = NaturalGaLoreConfig
    rule = "natural"
    state_formula = ("projected m×n: (2 + s)·r·max(m,n) moments and history + r·min(m,n) fp32 basis + "
                     "2 fp32 counters; unprojected matrices of the group: AdamW; others: as the rest rule")
