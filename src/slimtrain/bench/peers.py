"""Thin adapters: other libraries' optimizers (and LoRA) as benchmark methods.

Every adapter builds the optimizer the way its authors' scripts do — the attention and MLP
matrices slimtrain projects (``DEFAULT_TARGETS``) in a group with the projection keys, everything
else (embeddings, head, norms) in a plain group at the same lr — and takes slimtrain's option names
(``rank``, ``refresh_every``, ``scale``), so ``galore-adamw:rank=16`` and
``galore-torch-adamw:rank=16`` run the same configuration. The library is imported only inside the
worker process that trains with it.
"""

from __future__ import annotations

import types
from typing import Any
from unittest import mock

import torch

from ..optim import AdamW
from ..optim.targets import build_param_groups
from .methods import ADAMW_CENTER_LR, ADAMW_PAPER_LR, Method

PROJECTION_OPTIONS = frozenset({"rank", "refresh_every", "scale"})


def split_targets(model: torch.nn.Module) -> tuple[list, list]:
    """(matrices slimtrain's recipes project, all other trainable parameters)."""
    groups = build_param_groups(model, projection={}, rest={})
    targets = [p for _, p in groups[0]["params"]]
    rest = [p for _, p in groups[1]["params"]] if len(groups) > 1 else []
    return targets, rest


def foreign_state_bytes(opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of an optimizer's state as it is stored: tensor subclasses (torchao's 8/4-bit states)
    by their inner codes and scales, not their dequantized size; projector objects kept in the state
    (galore-torch, fira, apollo-torch) by their matrices; step counters kept as Python numbers as 8
    bytes (slimtrain keeps them as 4-byte tensors, which count). Shared tensors count once."""
    seen: set[tuple[int, int]] = set()
    totals = {"states": 0, "projectors": 0}

    def add(t: torch.Tensor, part: str) -> None:
        flatten = getattr(t, "__tensor_flatten__", None)
        if flatten is not None and type(t) is not torch.Tensor:
            for name in flatten()[0]:
                add(getattr(t, name), part)
            return
        key = (t.untyped_storage().data_ptr(), t.nbytes)
        if key not in seen:
            seen.add(key)
            totals[part] += t.nbytes

    for state in opt.state.values():
        if not isinstance(state, dict):  # pytorch-optimizer's SPAM keeps its step counts here
            totals["states"] += 8
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor):
                add(value, "states")
            elif isinstance(value, (int, float)):  # a step counter kept as a Python number: 8 bytes
                totals["states"] += 8
            elif hasattr(value, "__dict__"):  # a projector object
                for attr in vars(value).values():
                    if isinstance(attr, torch.Tensor):
                        add(attr, "projectors")
    return totals


def _measured(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The trainer logs ``optimizer.state_bytes()`` when an optimizer has one."""
    opt.state_bytes = types.MethodType(foreign_state_bytes, opt)
    return opt


def _groups(model, **projection) -> list[dict[str, Any]]:
    targets, rest = split_targets(model)
    return [{"params": rest}, {"params": targets, **projection}]


def _galore_keys(rank: int, options: dict[str, Any], scale: float, scale_key: str = "scale") -> dict:
    return {"rank": rank, "update_proj_gap": options.get("refresh_every", 200),
            scale_key: options.get("scale", scale), "proj_type": "std"}


# ------------------------------------------------------------------------------------------ builds
def _torch_adamw(model, lr, wd, rank, options):
    # fused: torch's fastest CPU AdamW (≈5× its foreach kernel here), the honest speed baseline
    return _measured(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=True))


def _galore_torch_adamw(model, lr, wd, rank, options):
    from galore_torch import GaLoreAdamW

    return _measured(GaLoreAdamW(_groups(model, **_galore_keys(rank, options, 0.25)), lr=lr, weight_decay=wd))


def _galore_torch_adamw8bit(model, lr, wd, rank, options):
    from galore_torch import GaLoreAdamW8bit

    opt = GaLoreAdamW8bit(_groups(model, **_galore_keys(rank, options, 0.25)), lr=lr, weight_decay=wd)
    return _measured(_cpu_sync_free(opt))


def _cpu_sync_free(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """GaLoreAdamW8bit calls ``torch.cuda.synchronize()`` after every parameter's update, which
    raises on a machine without CUDA; there it has nothing to wait for, so on such a machine the
    step runs with it as a no-op (on a GPU the package runs untouched). Measured on a CPU: a
    projected matrix whose low-rank tensor has fewer than 4096 elements (bitsandbytes' 32-bit path)
    is left unchanged by the package's step; at 4096 and above (the 8-bit path) it trains."""
    if torch.cuda.is_available():
        return opt
    step = type(opt).step

    def step_without_cuda_sync(self, *args, **kwargs):
        with mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None):
            return step(self, *args, **kwargs)

    # a bound method, as LR schedulers expect of optimizer.step (they wrap its __func__)
    opt.step = types.MethodType(step_without_cuda_sync, opt)
    return opt


def _galore_torch_adafactor(model, lr, wd, rank, options):
    from galore_torch import GaLoreAdafactor

    # as galore-torch's scripts and transformers run it: a fixed lr, no parameter-scale factor
    return _measured(GaLoreAdafactor(_groups(model, **_galore_keys(rank, options, 0.25)), lr=lr,
                                     weight_decay=wd, relative_step=False, scale_parameter=False,
                                     warmup_init=False))


def _fira(model, lr, wd, rank, options):
    from fira import FiraAdamW

    return _measured(FiraAdamW(_groups(model, **_galore_keys(rank, options, 0.25, "alpha")), lr=lr,
                               weight_decay=wd))


def _apollo(scale_type: str, scale: float):
    def build(model, lr, wd, rank, options):
        from apollo_torch import APOLLOAdamW

        keys = dict(_galore_keys(rank, options, scale), proj="random", scale_type=scale_type)
        return _measured(APOLLOAdamW(_groups(model, **keys), lr=lr, weight_decay=wd))
    return build


def _torchao(bits: int):
    def build(model, lr, wd, rank, options):
        import torchao.optim

        cls = torchao.optim.AdamW8bit if bits == 8 else torchao.optim.AdamW4bit
        return _measured(cls(model.parameters(), lr=lr, weight_decay=wd))
    return build


def _bnb_adamw8bit(model, lr, wd, rank, options):
    import bitsandbytes as bnb

    return _measured(bnb.optim.AdamW8bit(model.parameters(), lr=lr, weight_decay=wd))


def _lora(model, lr, wd, rank, options):
    """LoRA on the matrices slimtrain projects, the rest trained in full — the GaLore paper's
    low-rank-adapter baseline (ReLoRA's code keeps embeddings, head and norms trainable)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = {id(p) for p in split_targets(model)[0]}
    modules = [name.removesuffix(".weight") for name, p in model.named_parameters() if id(p) in targets]
    alpha = options.get("alpha", rank)  # scaling alpha/r = 1 unless asked otherwise
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules),
                            model)
    for name, p in model.named_parameters():  # peft froze everything; only the adapted matrices stay frozen
        p.requires_grad_(".base_layer." not in name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return _measured(torch.optim.AdamW(trainable, lr=lr, weight_decay=wd, fused=True))


def _adamw_pergroup(model, lr, wd, rank, options):
    """slimtrain's AdamW with the per-group learning rates a projected recipe gives: ``lr`` for
    embeddings, head and norms, ``matrix_lr_ratio · lr`` for the attention/MLP matrices (GaLore's
    scale α = 0.25 by default). Without it, AdamW's one lr must suit both, which projected recipes
    are spared — a confound, not a property of projection."""
    targets, rest = split_targets(model)
    ratio = options.get("matrix_lr_ratio", 0.25)
    return AdamW([{"params": targets, "lr": lr * ratio}, {"params": rest, "lr": lr}], lr=lr, weight_decay=wd)


# ---------------------------------------------------------------- the seeds' optimizers (issue 18)
def _plain(make):
    """A package optimizer over every parameter at (lr, weight decay)."""
    def build(model, lr, wd, rank, options):
        return _measured(make(model, lr, wd))
    return build


def _lion(model, lr, wd):
    from lion_pytorch import Lion

    return Lion(model.parameters(), lr=lr, weight_decay=wd)


def _adabelief(model, lr, wd):
    from adabelief_pytorch import AdaBelief

    return AdaBelief(model.parameters(), lr=lr, weight_decay=wd, print_change_log=False)


def _po(name):
    def make(model, lr, wd):
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)(model.parameters(), lr=lr, weight_decay=wd)
    return make


def _adam_mini(model, lr, wd):
    import contextlib
    import io

    from adam_mini import Adam_mini

    cfg = model.config
    with contextlib.redirect_stdout(io.StringIO()):
        return Adam_mini(model.named_parameters(), lr=lr, weight_decay=wd, dim=cfg.hidden_size,
                         n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_key_value_heads,
                         verbose=False)


class _Quiet(torch.optim.Optimizer):
    """sgd-sai prints three lines at its first step: silenced."""

    def __init__(self, inner):
        self.__dict__.update(inner.__dict__)
        self._inner = inner

    def step(self, closure=None):
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            return self._inner.step(closure)


def _sgd_sai(model, lr, wd):
    from sgd_sai import SGD_sai

    return _Quiet(SGD_sai(model.parameters(), lr=lr, weight_decay=wd))


def _adafactor(model, lr, wd):
    from transformers.optimization import Adafactor

    return Adafactor(model.parameters(), lr=lr, weight_decay=wd, relative_step=False,
                     scale_parameter=False, warmup_init=False)


class _Both(torch.optim.Optimizer):
    """Two optimizers stepped as one (torch's Muon takes matrices only): their groups are this
    one's (a scheduler's lr reaches both), their states read as one."""

    def __init__(self, *inner):
        self._inner = inner
        self.defaults = {}
        self.param_groups = [g for opt in inner for g in opt.param_groups]
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def state(self):  # a fresh merge (the inner states are defaultdicts: no ChainMap)
        return {p: s for opt in self._inner for p, s in opt.state.items()}

    def step(self, closure=None):
        for opt in self._inner:
            opt.step()

    def zero_grad(self, set_to_none: bool = True):
        for opt in self._inner:
            opt.zero_grad(set_to_none)

    def state_dict(self):  # the trainer checkpoints it: each one's, side by side
        return {"optimizers": [opt.state_dict() for opt in self._inner]}

    def load_state_dict(self, state_dict):
        for opt, saved in zip(self._inner, state_dict["optimizers"]):
            opt.load_state_dict(saved)


def _torch_muon(model, lr, wd, rank, options):
    """torch.optim.Muon on the attention/MLP matrices, torch's fused AdamW at AdamW's lr (1e-3)
    on the rest — what slimtrain's muon recipe does."""
    targets, rest = split_targets(model)
    return _measured(_Both(torch.optim.Muon(targets, lr=lr, weight_decay=wd),
                           torch.optim.AdamW(rest, lr=1e-3, weight_decay=wd, fused=True)))


def _sophia_opt(model, lr, wd, rank, options):
    """sophia-opt's SophiaG fed by the trainer's curvature estimate (``train/sophia.py``): the
    estimate becomes p.grad for ``update_hessian()`` just before the step it comes with."""
    from sophia_opt import SophiaG

    from ..optim.rules.sophia import INPUT

    class Fed(SophiaG):
        step_inputs = frozenset({INPUT})
        config = types.SimpleNamespace(hessian_every=options.get("hessian_every", 10))

        def step(self, closure=None, **inputs):
            estimate = inputs.get(INPUT)
            if estimate:
                held = {p: p.grad for p in estimate}
                for p, g in estimate.items():
                    p.grad = g
                self.update_hessian()
                for p, g in held.items():
                    p.grad = g
            return super().step(closure, bs=options.get("tokens_per_step", 5120))

    return _measured(Fed(model.parameters(), lr=lr, weight_decay=wd))


def _peer(name, label, build, *, reference_of=None, module=None, pip=None, center=1e-2, rank=None,
          options=frozenset(), summary="", **kw) -> Method:
    return Method(name=name, label=label, kind="peer", center_lr=center, summary=summary, build=build,
                  options=frozenset(options), default_rank=rank, reference_of=reference_of,
                  module=module, pip=pip, **kw)


PEERS = [
    Method(name="adamw-pergroup", label="slimtrain adamw, matrices at lr/4", kind="baseline",
           center_lr=1e-2, build=_adamw_pergroup, options=frozenset({"matrix_lr_ratio"}),
           summary="AdamW with a projected recipe's per-group lrs: lr for embeddings/head/norms, "
                   "matrix_lr_ratio·lr (0.25) for the attention/MLP matrices"),
    _peer("torch-adamw", "torch.optim.AdamW (fused)", _torch_adamw, reference_of="adamw",
          center=ADAMW_CENTER_LR, paper_lr=ADAMW_PAPER_LR, summary="torch.optim.AdamW, fused kernel"),
    _peer("galore-torch-adamw", "galore-torch GaLoreAdamW", _galore_torch_adamw, reference_of="galore-adamw",
          module="galore_torch", pip="galore-torch", rank=128, options=PROJECTION_OPTIONS,
          summary="the GaLore authors' package"),
    _peer("galore-torch-adafactor", "galore-torch GaLoreAdafactor", _galore_torch_adafactor,
          reference_of="galore-adafactor:rest=adafactor", module="galore_torch", pip="galore-torch", rank=128,
          options=PROJECTION_OPTIONS, summary="the GaLore authors' Adafactor variant"),
    _peer("galore-torch-adamw8bit", "galore-torch GaLoreAdamW8bit", _galore_torch_adamw8bit,
          reference_of="galore-adamw8bit", module="galore_torch", pip="galore-torch bitsandbytes", rank=128,
          options=PROJECTION_OPTIONS,
          summary="the GaLore authors' 8-bit variant (bitsandbytes; on a CPU its per-step "
                  "torch.cuda.synchronize() is made a no-op)"),
    _peer("fira-adamw", "fira FiraAdamW", _fira, reference_of="fira", module="fira", pip="fira", rank=128,
          options=PROJECTION_OPTIONS, summary="the Fira authors' package"),
    _peer("apollo-torch", "apollo-torch APOLLO", _apollo("channel", 1.0), reference_of="apollo",
          module="apollo_torch", pip="apollo-torch", rank=128, options=PROJECTION_OPTIONS,
          summary="the APOLLO authors' package, channel-wise scaling"),
    _peer("apollo-torch-mini", "apollo-torch APOLLO-Mini", _apollo("tensor", 128.0),
          reference_of="apollo-mini",
          module="apollo_torch", pip="apollo-torch", rank=1, options=PROJECTION_OPTIONS,
          summary="the APOLLO authors' package, rank 1, tensor-wise scaling, scale 128"),
    _peer("torchao-adamw8bit", "torchao AdamW8bit", _torchao(8), reference_of="adamw8bit", module="torchao",
          pip="torchao", center=ADAMW_CENTER_LR, paper_lr=ADAMW_PAPER_LR,
          summary="torchao's block-wise 8-bit AdamW"),
    _peer("torchao-adamw4bit", "torchao AdamW4bit", _torchao(4), reference_of="adamw4bit", module="torchao",
          pip="torchao", center=ADAMW_CENTER_LR, paper_lr=ADAMW_PAPER_LR,
          summary="torchao's block-wise 4-bit AdamW"),
    _peer("bnb-adamw8bit", "bitsandbytes AdamW8bit", _bnb_adamw8bit, reference_of="adamw8bit",
          module="bitsandbytes", pip="bitsandbytes", center=ADAMW_CENTER_LR, paper_lr=ADAMW_PAPER_LR,
          summary="bitsandbytes' 8-bit AdamW"),
    # the seeds' optimizers next to their packages (each at the recipe's own default lr)
    _peer("lion-pytorch", "lion-pytorch Lion", _plain(_lion), reference_of="lion",
          module="lion_pytorch", pip="lion-pytorch", center=1e-4, summary="lucidrains' Lion"),
    _peer("adabelief-pytorch", "adabelief-pytorch AdaBelief", _plain(_adabelief),
          reference_of="adabelief", module="adabelief_pytorch", pip="adabelief-pytorch",
          center=1e-3, summary="the AdaBelief authors' package"),
    _peer("po-adan", "pytorch-optimizer Adan", _plain(_po("Adan")), reference_of="adan",
          module="pytorch_optimizer", pip="pytorch-optimizer", center=1e-3,
          summary="pytorch-optimizer's Adan (the authors' algorithm)"),
    _peer("adam-mini-pkg", "adam-mini Adam_mini", _plain(_adam_mini), reference_of="adam-mini",
          module="adam_mini", pip="adam-mini", center=1e-3, summary="the Adam-mini authors' package"),
    _peer("sgd-sai-pkg", "sgd-sai SGD_sai", _plain(_sgd_sai), reference_of="sgd-sai",
          module="sgd_sai", pip="sgd-sai", center=1e-2, summary="the SGD-SaI authors' package"),
    _peer("hf-adafactor", "transformers Adafactor", _plain(_adafactor), reference_of="adafactor",
          center=1e-3, summary="transformers' Adafactor (relative_step=False, scale_parameter=False)"),
    _peer("sophia-opt", "sophia-opt SophiaG", _sophia_opt, reference_of="sophia",
          module="sophia_opt", pip="sophia-opt", center=1e-4, options=frozenset({"hessian_every"}),
          summary="the Sophia authors' SophiaG, fed the trainer's curvature estimate"),
    _peer("po-spam", "pytorch-optimizer SPAM", _plain(_po("SPAM")), reference_of="spam",
          module="pytorch_optimizer", pip="pytorch-optimizer", center=1e-3,
          summary="pytorch-optimizer's SPAM (its defaults: warm-up 50 steps)"),
    _peer("po-stable-spam", "pytorch-optimizer StableSPAM", _plain(_po("StableSPAM")),
          reference_of="stable-spam", module="pytorch_optimizer", pip="pytorch-optimizer",
          center=1e-3, summary="pytorch-optimizer's StableSPAM"),
    _peer("torch-muon", "torch.optim.Muon + AdamW", _torch_muon, reference_of="muon",
          center=1e-3, summary="torch's Muon on the matrices, fused AdamW (lr 1e-3) on the rest"),
    # No published lr for LoRA pretraining at this scale; a pilot put its optimum between 2e-3 and 1e-2.
    _peer("lora", "peft LoRA + AdamW", _lora, module="peft", pip="peft", rank=128, center=5e-3,
          options=frozenset({"rank", "alpha"}),
          summary="LoRA adapters on the attention/MLP matrices (frozen), embeddings/head/norms trained"),
]
