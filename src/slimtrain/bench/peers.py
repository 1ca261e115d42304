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
from .methods import ADAMW_CENTER_LR, Method

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
          center=ADAMW_CENTER_LR, summary="torch.optim.AdamW, fused kernel"),
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
          pip="torchao", center=ADAMW_CENTER_LR, summary="torchao's block-wise 8-bit AdamW"),
    _peer("torchao-adamw4bit", "torchao AdamW4bit", _torchao(4), reference_of="adamw4bit", module="torchao",
          pip="torchao", center=ADAMW_CENTER_LR, summary="torchao's block-wise 4-bit AdamW"),
    _peer("bnb-adamw8bit", "bitsandbytes AdamW8bit", _bnb_adamw8bit, reference_of="adamw8bit",
          module="bitsandbytes", pip="bitsandbytes", center=ADAMW_CENTER_LR,
          summary="bitsandbytes' 8-bit AdamW"),
    # No published lr for LoRA pretraining at this scale; a pilot put its optimum between 2e-3 and 1e-2.
    _peer("lora", "peft LoRA + AdamW", _lora, module="peft", pip="peft", rank=128, center=5e-3,
          options=frozenset({"rank", "alpha"}),
          summary="LoRA adapters on the attention/MLP matrices (frozen), embeddings/head/norms trained"),
]
