"""The GaLore family with a full-rank term: APOLLO, APOLLO-Mini, Fira, FRUGAL.

Each is a configuration of the pipeline's parts (rule, selector, back-map, residual, limiter);
see ``backmap.py`` for the math of the back-maps, residuals and the limiter. ``**options`` are the
runtime options of ``recipes.runtime_options`` (side, stagger, power_iters, oversample, eps_mode,
foreach, fused, check_finite).
"""

from __future__ import annotations

from .recipes import ProjectedRecipe


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

    state_formula = ("projected m×n: 2·r·max(m,n) moments + one int64 seed + limiter norm + 2 fp32 "
                     "counters (no stored projection); others: as the rest rule")
    scaling = "channel"

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, refresh_every: int = 200,
                 scale: float = 1.0, limiter: float | None = 1.01, targets=None, betas=(0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, rest: str = "adamw", switch: str = "keep",
                 **options):
        self._setup(model_or_params, targets=targets, rest=rest, options=options,
                    rank=rank, refresh_every=refresh_every, scale=scale,
                    rule="adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                    basis="gaussian", backmap=self.scaling, limiter=limiter, switch=switch)


class APOLLOMini(APOLLO):
    r"""APOLLO-Mini (Zhu et al. 2025, §4.2): APOLLO with rank 1 and one *tensor-wise* scale
    s = ‖D‖/(‖R‖ + 1e-8), ``scale=128`` (paper α = √128): SGD-sized state (2·max(m, n) moments
    per matrix) with AdamW-level results in the paper. Update:
    ``W ← W·(1 − lr·λ) − lr·√scale · NL(s·G)``. Same differences from apollo-torch as ``APOLLO``.
    """

    state_formula = ("projected m×n: 2·max(m,n) moments + one int64 seed + limiter norm + 2 fp32 "
                     "counters; others: as the rest rule")
    scaling = "tensor"

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 1, scale: float = 128.0,
                 **kwargs):
        super().__init__(model_or_params, lr=lr, rank=rank, scale=scale, **kwargs)


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

    state_formula = ("projected m×n: 2·r·max(m,n) moments + r·min(m,n) fp32 basis + limiter norm + "
                     "2 fp32 counters; others: as the rest rule")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, refresh_every: int = 200,
                 scale: float = 0.25, limiter: float | None = 1.01, basis: str = "randomized",
                 switch: str = "keep", targets=None, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, rest: str = "adamw", **options):
        self._setup(model_or_params, targets=targets, rest=rest, options=options,
                    rank=rank, refresh_every=refresh_every, scale=scale,
                    rule="adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                    basis=basis, switch=switch, residual="fira", limiter=limiter)


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

    state_formula = ("projected m×n (r = rank or round(density·min(m,n))): rule moments of r×max(m,n) "
                     "+ r·min(m,n) fp32 basis + 2 fp32 counters, nothing for the residual; others: "
                     "as the rest rule")

    def __init__(self, model_or_params, lr: float = 1e-3, density: float | None = 0.25,
                 rank: int | None = None, refresh_every: int = 200, basis: str = "randomized",
                 residual: str = "sign", residual_scale: float = 1.0, scale: float = 1.0,
                 rule: str = "adam", switch: str = "reset", targets=None, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, rest: str = "adamw", **options):
        if rule not in ("adam", "lion"):
            raise ValueError(f"FRUGAL's state-full rule is 'adam' or 'lion', got {rule!r}")
        if rank is None and density is None:
            raise ValueError("FRUGAL needs rank= or density= for its state-full subspace")
        if residual not in ("sign", "sgd"):
            raise ValueError(f"FRUGAL's residual is 'sign' or 'sgd', got {residual!r}")
        self._setup(model_or_params, targets=targets, rest=rest, options=options,
                    rank=rank, density=None if rank is not None else density,
                    refresh_every=refresh_every, scale=scale,
                    rule=rule, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, basis=basis,
                    switch=switch, residual=residual, residual_scale=residual_scale)
