"""The recipes that the contract suite runs through. Later recipes add an entry here.

Each case builds an optimizer for a list of named parameters with small, test-friendly settings.
``projects`` says whether the recipe keeps a low-rank subspace (then rank-specific contracts apply).

``full_rank`` builds the reference optimizers that the recipe must equal when every target matrix
falls back to full rank (rank >= min(m, n)): by default ``torch.optim.AdamW(**adamw_equivalent)``
over all parameters; recipes whose inner rule is not Adam fall back to that rule unprojected, so
their reference is that rule's reference implementation for the targets plus AdamW for the rest.
``exact`` says whether the reference runs the same floating-point operations (bit-identical) or
only the same math (equal to float rounding). ``equals_reference=False`` declares that the recipe
cannot equal any full-precision reference in that limit: its states are quantized.

Low-bit cases lower ``quantize_min_numel`` so the suite's small tensors (96…320 elements) are
quantized, partial blocks included.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import slimtrain.optim as so

TARGETS = r"\.mlp\.\w+\.weight$"


def _split(named):
    targets = [p for n, p in named if re.search(TARGETS, n)]
    rest = [p for n, p in named if not re.search(TARGETS, n)]
    return targets, rest


def lion_reference(lr, weight_decay, betas=(0.9, 0.99)):
    def build(named, torch_kw):
        from pytorch_optimizer import Lion

        targets, rest = _split(named)
        return [Lion(targets, lr=lr, betas=betas, weight_decay=weight_decay, foreach=False),
                torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, **torch_kw)]
    return build


def adafactor_reference(lr, *, targets_rule, rest_rule, beta1=None, adamw=None):
    """transformers' Adafactor (relative_step=False, scale_parameter=False) for the parts whose rule
    is adafactor; torch AdamW(**adamw) for the others."""
    def build(named, torch_kw):
        from transformers.optimization import Adafactor

        def one(params, rule):
            if rule == "adafactor":
                return Adafactor(params, lr=lr, beta1=beta1, relative_step=False,
                                 scale_parameter=False, warmup_init=False)
            return torch.optim.AdamW(params, **torch_kw, **adamw)
        targets, rest = _split(named)
        return [one(targets, targets_rule), one(rest, rest_rule)]
    return build


def rule_reference(make, lr, weight_decay=0.0, projected=False):
    """``make(params)`` — the authors' optimizer — for every parameter (or, ``projected``, for
    the targets, with torch's AdamW for the rest, as a projected recipe falls back)."""
    def build(named, torch_kw):
        if not projected:
            return [make([p for _, p in named])]
        targets, rest = _split(named)
        return [make(targets), torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, **torch_kw)]
    return build


def _po(cls_name, **kw):
    def make(params):
        import pytorch_optimizer

        return getattr(pytorch_optimizer, cls_name)(params, foreach=False, **kw)
    return make


def _adabelief(**kw):
    def make(params):
        from adabelief_pytorch import AdaBelief

        return AdaBelief(params, print_change_log=False, **kw)
    return make


def _sgd_sai(**kw):
    def make(params):
        from sgd_sai import SGD_sai

        return SGD_sai(params, **kw)
    return make


def _sophia(**kw):
    def make(params):
        from sophia_opt import SophiaG

        return SophiaG(params, **kw)
    return make


def adam_mini_reference(lr):
    def build(named, torch_kw):
        import contextlib
        import io

        from adam_mini import Adam_mini

        with contextlib.redirect_stdout(io.StringIO()):
            return [Adam_mini(named, lr=lr, verbose=False)]
    return build


def muon_reference(lr, weight_decay=0.1, adamw_lr=1e-3, **kw):
    """torch.optim.Muon on the targets, torch's AdamW at AdamW's lr for the rest."""
    def build(named, torch_kw):
        targets, rest = _split(named)
        return [torch.optim.Muon(targets, lr=lr, weight_decay=weight_decay, **kw),
                torch.optim.AdamW(rest, lr=adamw_lr, weight_decay=weight_decay, **torch_kw)]
    return build


class ScaleReference(torch.optim.Optimizer):
    """SCALE's Algorithm 1 as the authors' code computes it, written out: column-normalised SGD
    (the RMS of each output row; each embedding feature over the vocabulary), momentum on the head
    only, Adam with eps before bias correction (at ``adam_lr``) on 1-D parameters."""

    def __init__(self, named, head, embed, lr, weight_decay=0.0, momentum=0.9, adam_lr=None):
        self.head, self.embed = head, embed
        self.kind = {id(p): ("head" if head(n) else "embed" if embed(n) else "matrix")
                     if p.dim() == 2 else "adam" for n, p in named}
        super().__init__([p for _, p in named], dict(lr=lr, weight_decay=weight_decay,
                                                      momentum=momentum, adam_lr=adam_lr or lr))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd, beta, adam_lr = (group[k] for k in ("lr", "weight_decay", "momentum", "adam_lr"))
            for p in group["params"]:
                g, s, kind = p.grad.clone(), self.state[p], self.kind[id(p)]
                if kind == "adam":
                    t = s["t"] = s.get("t", 0) + 1
                    s["m"] = s.get("m", torch.zeros_like(g)).lerp_(g, 0.1)
                    s["v"] = s.get("v", torch.zeros_like(g)).lerp_(g.square(), 0.001)
                    bc = (1 - 0.9 ** t) / (1 - 0.999 ** t) ** 0.5
                    p.mul_(1 - adam_lr * wd).add_(s["m"] / (s["v"].sqrt() + 1e-8),
                                                  alpha=-adam_lr / bc)
                    continue
                if kind == "head":
                    s["m"] = s.get("m", torch.zeros_like(g)).lerp_(g, 1 - beta)
                    g = s["m"]
                dim = 0 if kind == "embed" else 1
                u = g / torch.mean(g.square(), dim=dim, keepdim=True).sqrt().clamp_min(1e-8)
                p.mul_(1 - lr * wd).add_(u, alpha=-lr)


def _ns5(X, dtype):
    """Five quintic Newton–Schulz steps, X ← aX + b(XXᵀ)X + c(XXᵀ)²X on the wide orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    Y = X.to(dtype)
    tall = Y.shape[0] > Y.shape[1]
    Y = Y.T if tall else Y
    Y = Y / (Y.norm() + 1e-7)
    for _ in range(5):
        A = Y @ Y.T
        Y = a * Y + b * (A @ Y) + c * (A @ (A @ Y))
    return (Y.T if tall else Y).to(X.dtype)


class CosmosReference(torch.optim.Optimizer):
    """COSMOS on matrices, written out from the paper and the authors' code (lliu606/COSMOS):
    momentum M ← β₁M + G; basis P of EMA(GᵀG) by SVD at step 1, then one power step + QR; Adam
    on GP with V = EMA((GP)²); Newton–Schulz on the residual of the look-ahead gradient; one
    unit-norm step of lr·ratio·√(mn)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, rank=64, gamma=0.2,
                 lr_ratio=0.1, weight_decay=0.0, ns_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, rank=rank, gamma=gamma,
                                      lr_ratio=lr_ratio, weight_decay=weight_decay))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), eps, lr = group["betas"], group["eps"], group["lr"]
            for p in group["params"]:
                G, s = p.grad, self.state[p]
                m, n = G.shape
                r = min(group["rank"], n)
                t = s["t"] = s.get("t", 0) + 1
                s["M"] = s.get("M", torch.zeros_like(G)) * b1 + G
                if t == 1:
                    s["P"] = torch.linalg.svd(G.T @ G)[0][:, :r]
                    s["S"] = (1 - b2) * (G @ s["P"]).T @ (G @ s["P"])
                else:
                    Q = torch.linalg.qr(b2 * s["P"] @ s["S"] + (1 - b2) * G.T @ G @ s["P"])[0]
                    T = s["P"].T @ Q
                    s["S"] = b2 * T.T @ s["S"] @ T + (1 - b2) * (G @ Q).T @ (G @ Q)
                    s["P"] = Q
                P = s["P"]
                s["V"] = s.get("V", torch.zeros(m, r, dtype=G.dtype)) * b2 + (1 - b2) * (G @ P) ** 2
                bc1, bc2 = (1 - b1 ** t) / (1 - b1), 1 - b2 ** t
                look = (G + b1 * s["M"]) / (1 + b1 * bc1)
                U1 = (look @ P) / ((s["V"] / bc2).sqrt() + eps) @ P.T
                U2 = _ns5(look - look @ P @ P.T, self.ns_dtype)
                U = U1 + group["gamma"] * (m * n) ** 0.5 * U2 / (U2.norm() + eps)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(U / (U.norm() + eps), alpha=-lr * group["lr_ratio"] * (m * n) ** 0.5)


def cosmos_reference(lr, weight_decay=0.0, adamw_lr=None, **kw):
    """CosmosReference on the targets, torch's AdamW (at ``adamw_lr``, else lr) for the rest."""
    def build(named, torch_kw):
        targets, rest = _split(named)
        return [CosmosReference(targets, lr, weight_decay=weight_decay, **kw),
                torch.optim.AdamW(rest, lr=adamw_lr or lr, weight_decay=weight_decay, **torch_kw)]
    return build


class WeightNormReference(torch.optim.Optimizer):
    """GradNormLoRP's reparameterisation written out with explicit tensors: V (the direction, kept
    here) and g (one magnitude per row) trained by torch's AdamW on their chain-rule gradients,
    W = g·V/‖V‖ written into the model after each step. The full-rank limit of the recipe."""

    def __init__(self, params, lr, eps, weight_decay, torch_kw):
        self.ws = list(params)
        self.V = [torch.nn.Parameter(w.detach().clone()) for w in self.ws]
        self.g = [torch.nn.Parameter(w.detach().norm(dim=1)) for w in self.ws]
        self.inner = [torch.optim.AdamW(self.V, lr=lr, eps=eps, weight_decay=weight_decay, **torch_kw),
                      torch.optim.AdamW(self.g, lr=lr, eps=eps, weight_decay=0.0, foreach=False)]
        super().__init__(self.ws, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for w, V, g in zip(self.ws, self.V, self.g):
            unit = V / V.norm(dim=1, keepdim=True)
            g.grad = (w.grad * unit).sum(dim=1)
            V.grad = (g / V.norm(dim=1)).unsqueeze(1) * (w.grad - unit * g.grad.unsqueeze(1))
        for opt in self.inner:
            opt.step()
        for w, V, g in zip(self.ws, self.V, self.g):
            w.copy_(g.unsqueeze(1) * V / V.norm(dim=1, keepdim=True))


def weight_norm_reference(lr, eps=1e-6, weight_decay=0.0):
    def build(named, torch_kw):
        targets, rest = _split(named)
        return [WeightNormReference(targets, lr, eps, weight_decay, torch_kw),
                torch.optim.AdamW(rest, lr=lr, eps=eps, weight_decay=weight_decay, **torch_kw)]
    return build


def scale_reference(head=r"\.tall\.weight$", embed=r"embed", **kw):
    def build(named, torch_kw):
        return [ScaleReference(named, lambda n: re.search(head, n),
                               lambda n: re.search(embed, n) and not re.search(head, n), **kw)]
    return build


@dataclass(frozen=True)
class Case:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    projects: bool = False
    # keyword arguments of torch.optim.AdamW that this recipe equals in the full-rank limit
    adamw_equivalent: dict[str, Any] = field(default_factory=dict)
    full_rank: Callable | None = None
    exact: bool = True
    bad_betas: dict[str, Any] = field(default_factory=lambda: dict(betas=(1.0, 0.999)))
    equals_reference: bool = True
    bad_betas_match: str = "beta"  # what the error for bad_betas names
    rtol: float = 1e-6  # of the full-rank limit when not exact (atol: rtol / 10)

    def build(self, params, **overrides):
        return so.create(self.name, params, **{**self.kwargs, **overrides})

    def references(self, named, torch_kw):
        if self.full_rank is not None:
            return self.full_rank(named, torch_kw)
        return [torch.optim.AdamW([p for _, p in named], **torch_kw, **self.adamw_equivalent)]

    def __str__(self):
        return self.name


def _projected(name, adamw_equivalent=None, full_rank=None, exact=True, bad_betas=None,
               equals_reference=True, bad_betas_match="beta", rtol=1e-6, **kwargs):
    kwargs = {**dict(lr=1e-2, rank=4, refresh_every=3, targets=TARGETS), **kwargs}
    return Case(name, kwargs, projects=True, adamw_equivalent=adamw_equivalent or {},
                full_rank=full_rank, exact=exact, bad_betas=bad_betas or dict(betas=(1.0, 0.999)),
                equals_reference=equals_reference, bad_betas_match=bad_betas_match, rtol=rtol)


_LOW = dict(quantize_min_numel=64)


def _lowbit(name, **kwargs):
    return _projected(name, equals_reference=False, **_LOW, **kwargs)


_GALORE_EPS = dict(lr=1e-2, eps=1e-6, weight_decay=0.0)
_ADAMW = dict(lr=1e-2, eps=1e-8, weight_decay=0.0)

CASES = [
    Case("adamw", dict(lr=1e-2, weight_decay=0.1),
         adamw_equivalent=dict(lr=1e-2, weight_decay=0.1)),
    _projected("galore-adamw", dict(_GALORE_EPS, weight_decay=0.1), scale=0.5, weight_decay=0.1),
    _projected("galore-adamw", _GALORE_EPS, basis="svd", switch="reproject", stagger=True),
    _projected("galore-adamw", _GALORE_EPS, switch="reset"),
    _projected("apollo", dict(_GALORE_EPS, weight_decay=0.1), weight_decay=0.1),
    _projected("apollo-mini", _GALORE_EPS, rank=1, stagger=True),
    _projected("apollo-mini", rank=1, rest="adafactor", exact=False,
               full_rank=adafactor_reference(1e-2, targets_rule="adam", rest_rule="adafactor",
                                             adamw=dict(lr=1e-2, eps=1e-6, weight_decay=0.0))),
    _projected("fira", dict(_GALORE_EPS, weight_decay=0.1), basis="svd", weight_decay=0.1),
    _projected("fira", _GALORE_EPS, switch="reset", limiter=None),
    _projected("frugal", _ADAMW, basis="orthogonal", density=None),
    _projected("frugal", _ADAMW | dict(weight_decay=0.1), basis="columns", residual="sgd",
               weight_decay=0.1, switch="reproject"),
    _projected("frugal", _ADAMW, basis="blocks", residual_scale=0.5),
    _projected("q-galore", _ADAMW, basis="svd", lazy_queue=1),
    _projected("q-galore", _ADAMW, projector_bits=8, lazy_queue=2),
    _projected("natural-galore", _GALORE_EPS, history=3, weight_decay=0.0),
    _projected("galore-adafactor", exact=False, bad_betas=dict(beta1=1.0),
               full_rank=adafactor_reference(1e-2, targets_rule="adafactor", rest_rule="adam",
                                             adamw=_ADAMW)),
    _projected("galore-adafactor", beta1=0.9, rest="adafactor", exact=False, switch="reset",
               bad_betas=dict(beta1=1.0),
               full_rank=adafactor_reference(1e-2, targets_rule="adafactor", rest_rule="adafactor",
                                             beta1=0.9)),
    _projected("galore-lion", weight_decay=0.1, full_rank=lion_reference(1e-2, 0.1)),
    # Low-bit states (lowbit.py): the 8/4-bit recipes, and state_bits on other recipes and rules.
    Case("adamw8bit", dict(lr=1e-2, weight_decay=0.1, **_LOW), equals_reference=False),
    Case("adamw4bit", dict(lr=1e-2, weight_decay=0.1, **_LOW), equals_reference=False),
    Case("adamw", dict(lr=1e-2, weight_decay=0.1, state_bits=16), equals_reference=False),
    _lowbit("galore-adamw8bit", scale=0.5, weight_decay=0.1),
    _lowbit("galore-adamw8bit", basis="svd", switch="reproject"),
    _lowbit("galore-adamw8bit", switch="reset", rest="adamw"),
    _lowbit("apollo", state_bits=8, rest="adamw8bit", weight_decay=0.1),
    _lowbit("galore-lion", state_bits=8, switch="reproject", basis="svd"),
    _lowbit("galore-adafactor", state_bits=8, beta1=0.9, rest="adafactor",
            bad_betas=dict(beta1=1.0)),
]

# The seeds' optimizers (issue 18): each alone against its authors' package, projected (GaLore-X:
# the full-rank limit is the package on the targets plus AdamW), and in low bits.
_SPAM = dict(reset_every=3, reset_warmup=2, spike_after=2, spike_threshold=2.0)
_SEEDS = [
    Case("lion", dict(lr=1e-2, weight_decay=0.1), exact=False,
         full_rank=rule_reference(_po("Lion", lr=1e-2, weight_decay=0.1), 1e-2)),
    Case("adafactor", dict(lr=1e-2), exact=False, bad_betas=dict(beta1=1.0),
         full_rank=adafactor_reference(1e-2, targets_rule="adafactor", rest_rule="adafactor")),
    Case("adabelief", dict(lr=1e-2, weight_decay=0.1), exact=False,
         full_rank=rule_reference(_adabelief(lr=1e-2, weight_decay=0.1), 1e-2)),
    Case("adabelief", dict(lr=1e-2, rectify=False), exact=False,
         full_rank=rule_reference(_adabelief(lr=1e-2, rectify=False), 1e-2)),
    # Adan's float32 rounding (its two terms summed before the division) drifts to ~1.1e-6 in
    # the suite's 15 steps; float64 parity is 1e-6 in test_seed_parity
    Case("adan", dict(lr=1e-2, weight_decay=0.05), exact=False, rtol=2e-6,
         bad_betas=dict(betas=(1.0, 0.9, 0.9)),
         full_rank=rule_reference(_po("Adan", lr=1e-2, weight_decay=0.05), 1e-2)),
    Case("adam-mini", dict(lr=1e-2), exact=False, full_rank=adam_mini_reference(1e-2)),
    # SGD-SaI's step is lr·s with s ≈ √numel: float32 rounding reaches ~1.8e-6 in 15 steps
    Case("sgd-sai", dict(lr=1e-2), exact=False, bad_betas=dict(momentum=1.0), rtol=2e-6,
         bad_betas_match="momentum", full_rank=rule_reference(_sgd_sai(lr=1e-2), 1e-2)),
    Case("sophia", dict(lr=1e-2, weight_decay=0.1), exact=False,
         full_rank=rule_reference(_sophia(lr=1e-2, weight_decay=0.1), 1e-2)),
    # resets, warm-ups and clipping inside the suite's 10 steps (resume crosses them)
    Case("spam", dict(lr=1e-2, **_SPAM), exact=False,
         full_rank=rule_reference(_po("SPAM", lr=1e-2, update_proj_gap=3, warmup_epoch=2,
                                      grad_accu_steps=2, threshold=2), 1e-2)),
    Case("stable-spam", dict(lr=1e-2, reset_every=3), exact=False,
         full_rank=rule_reference(_po("StableSPAM", lr=1e-2, update_proj_gap=3), 1e-2)),
    _projected("lion", rank=4, weight_decay=0.1, exact=False,
               full_rank=lion_reference(1e-2, 0.1)),
    _projected("adabelief", exact=False, switch="reproject",
               full_rank=rule_reference(_adabelief(lr=1e-2), 1e-2, projected=True)),
    _projected("adan", exact=False, bad_betas=dict(betas=(1.0, 0.9, 0.9)), rtol=2e-6,
               full_rank=rule_reference(_po("Adan", lr=1e-2), 1e-2, projected=True)),
    _projected("sgd-sai", exact=False, bad_betas=dict(momentum=1.0), bad_betas_match="momentum",
               rtol=2e-6,
               weight_decay=0.0, full_rank=rule_reference(_sgd_sai(lr=1e-2, weight_decay=0.0),
                                                          1e-2, projected=True)),
    _projected("spam", exact=False, **_SPAM,
               # the stages reach the rest (AdamW) too: SPAM on every parameter
               full_rank=rule_reference(_po("SPAM", lr=1e-2, update_proj_gap=3, warmup_epoch=2,
                                            grad_accu_steps=2, threshold=2), 1e-2)),
    # the stages on a recipe of another family: GaLore with Stable-SPAM's
    _projected("galore-adamw", _GALORE_EPS, clip_decay=0.999, norm_decays=(0.7, 0.9),
               reset_every=4, reset_count=True, equals_reference=False),
    Case("adabelief", dict(lr=1e-2, state_bits=8, **_LOW), equals_reference=False),
    Case("adan", dict(lr=1e-2, state_bits=8, **_LOW), equals_reference=False,
         bad_betas=dict(betas=(1.0, 0.9, 0.9))),
    Case("lion", dict(lr=1e-2, state_bits=4, **_LOW), equals_reference=False),
    Case("stable-spam", dict(lr=1e-2, state_bits=8, reset_every=3, **_LOW),
         equals_reference=False),
    Case("sophia", dict(lr=1e-2, state_bits=8, **_LOW), equals_reference=False),
]
CASES += _SEEDS

# Matrix-aware optimizers (issue 19): Muon against torch.optim.Muon (the same operations: bit for
# bit), projected (its full-rank limit is Muon on the targets), and with MuonQ's low-bit momentum.
_MUON = dict(bad_betas=dict(momentum=1.0), bad_betas_match="momentum")
_MATRIX = [
    Case("muon", dict(lr=1e-2, targets=TARGETS), full_rank=muon_reference(1e-2), **_MUON),
    Case("muon", dict(lr=1e-2, targets=TARGETS, nesterov=False, adjust_lr_fn="match_rms_adamw",
                      weight_decay=0.0, adamw_lr=2e-3),
         full_rank=muon_reference(1e-2, weight_decay=0.0, adamw_lr=2e-3, nesterov=False,
                                  adjust_lr_fn="match_rms_adamw"), **_MUON),
    _projected("muon", full_rank=muon_reference(1e-2), switch="reproject", basis="svd", **_MUON),
    Case("muon", dict(lr=1e-2, targets=TARGETS, state_bits=8, **_LOW), equals_reference=False,
         **_MUON),
    Case("scale", dict(lr=1e-2, weight_decay=0.1, adam_lr=2e-3, head=r"\.tall\.weight$"),
         exact=False, full_rank=scale_reference(lr=1e-2, weight_decay=0.1, adam_lr=2e-3), **_MUON),
    Case("scale", dict(lr=1e-2, head=r"\.tall\.weight$", state_bits=8, **_LOW),
         equals_reference=False, **_MUON),
    # the Newton–Schulz residual in float32 on both sides: bf16 rounds differently in the two
    # write-ups (the authors' own normalises in bf16)
    # GradNormLoRP rebuilds V from W every step (the reference keeps V): rounding, 3e-7 of the
    # largest weight after the suite's 5 steps
    _projected("gradnorm-lorp", exact=False, rtol=5e-6, full_rank=weight_norm_reference(1e-2)),
    _projected("gradnorm-lorp", exact=False, rtol=5e-6, weight_decay=0.1, basis="svd",
               switch="reproject", full_rank=weight_norm_reference(1e-2, weight_decay=0.1)),
    _lowbit("gradnorm-lorp", state_bits=8),
    Case("cosmos", dict(lr=1e-2, targets=TARGETS, rank=4, ns_dtype="float32", weight_decay=0.1),
         exact=False, rtol=2e-5, bad_betas_match="betas",
         full_rank=cosmos_reference(1e-2, weight_decay=0.1, rank=4, ns_dtype=torch.float32)),
    Case("cosmos", dict(lr=1e-2, targets=TARGETS, rank=4, state_bits=8, **_LOW),
         equals_reference=False, bad_betas_match="betas"),
]
CASES += _MATRIX
