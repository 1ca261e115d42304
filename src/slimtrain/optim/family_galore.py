"""GaLore variants that change the subspace's storage or the inner rule: Q-GaLore, Natural GaLore,
GaLore-Adafactor, GaLore-Lion. ``**options``: see ``recipes.runtime_options``."""

from __future__ import annotations

from .recipes import ProjectedRecipe


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

    state_formula = ("projected m×n: 2·r·max(m,n) moments + ⌈r·min(m,n)·bits/8⌉ code bytes + 8 bytes per "
                     "group of 256 (scale, min) + 2 fp32 counters + (2 + queue) fp32 refresh "
                     "counters; others: as the rest rule")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, refresh_every: int = 200,
                 scale: float = 0.25, projector_bits: int = 4, projector_group: int = 256,
                 lazy_threshold: float = 0.4, lazy_queue: int = 5, lazy_growth: float = 2,
                 basis: str = "randomized", switch: str = "keep", targets=None, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, rest: str = "adamw", **options):
        self._setup(model_or_params, targets=targets, rest=rest, options=options,
                    rank=rank, refresh_every=refresh_every, scale=scale,
                    rule="adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                    basis=basis, switch=switch, refresh="lazy", projector_bits=projector_bits,
                    projector_group=projector_group, lazy_threshold=lazy_threshold,
                    lazy_queue=lazy_queue, lazy_growth=lazy_growth)


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

    state_formula = ("projected m×n: (2 + s)·r·max(m,n) moments and history + r·min(m,n) fp32 basis + "
                     "2 fp32 counters; unprojected matrices of the group: AdamW; others: as the rest rule")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, refresh_every: int = 200,
                 scale: float = 0.25, history: int = 20, damping: float = 1e-3,
                 basis: str = "randomized", switch: str = "keep", targets=None, betas=(0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, rest: str = "adamw", **options):
        self._setup(model_or_params, targets=targets, rest=rest, options=options,
                    rank=rank, refresh_every=refresh_every, scale=scale,
                    rule="natural", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                    basis=basis, switch=switch, natural_history=history, natural_damping=damping)


class GaLoreAdafactor(ProjectedRecipe):
    r"""GaLore with Adafactor (Zhao et al. 2024, §4.3; galore-torch's ``GaLoreAdafactor`` as its
    scripts and the HF Trainer run it: ``relative_step=False, scale_parameter=False``).

    The factored second moment is kept for the projected gradient R = PᵀG: r + max(m, n) numbers
    per matrix. ``U = clip(R/√V̂)`` with V̂ from the row and column means of R² + ε₁,
    β₂ₜ = 1 − t^decay_rate; with ``beta1`` a first moment averages U;
    ``W ← W·(1 − lr·λ) − lr·α·P·U``. See ``rules.AdafactorRule`` for the one difference from
    galore-torch (lr applied after the first moment).
    """

    state_formula = ("projected m×n: r + max(m,n) factored moments (+ r·max(m,n) with beta1) + "
                     "r·min(m,n) fp32 basis + 2 fp32 counters; others: as the rest rule")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, refresh_every: int = 200,
                 scale: float = 0.25, beta1: float | None = None, decay_rate: float = -0.8,
                 clip_threshold: float = 1.0, eps: float = 1e-30, basis: str = "randomized",
                 switch: str = "keep", targets=None, weight_decay: float = 0.0, rest: str = "adamw",
                 **options):
        if beta1 is not None and not 0 <= beta1 < 1:
            raise ValueError(f"beta1 must lie in [0, 1) or be None (no first moment), got {beta1!r}")
        self._setup(model_or_params, targets=targets, rest=rest, options=options,
                    rank=rank, refresh_every=refresh_every, scale=scale,
                    rule="adafactor", lr=lr, weight_decay=weight_decay, basis=basis, switch=switch,
                    adafactor_beta1=beta1, decay_rate=decay_rate, clip_threshold=clip_threshold,
                    factored_eps=eps)


class GaLoreLion(ProjectedRecipe):
    r"""GaLore with Lion (Chen et al. 2023, Alg. 2, run in GaLore's subspace; FRUGAL's ``lion``
    state-full rule without the residual).

    ``D = sign(β₁M + (1−β₁)R)``, ``M ← β₂M + (1−β₂)R`` on R = PᵀG (one r × max(m, n) moment);
    ``W ← W·(1 − lr·λ) − lr·α·P·D``. Lion's lr is typically 3–10× below Adam's; the default
    (1e-3 with α = 0.25) follows that from GaLore's 0.01.
    """

    state_formula = ("projected m×n: r·max(m,n) moment + r·min(m,n) fp32 basis + 2 fp32 counters; "
                     "others: as the rest rule")

    def __init__(self, model_or_params, lr: float = 1e-3, rank: int = 128, refresh_every: int = 200,
                 scale: float = 0.25, basis: str = "randomized", switch: str = "keep", targets=None,
                 betas=(0.9, 0.99), weight_decay: float = 0.0, rest: str = "adamw", **options):
        self._setup(model_or_params, targets=targets, rest=rest, options=options,
                    rank=rank, refresh_every=refresh_every, scale=scale,
                    rule="lion", lr=lr, betas=betas, weight_decay=weight_decay, basis=basis,
                    switch=switch)
