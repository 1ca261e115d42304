"""Selective activation checkpointing: ``apply_activation_checkpointing(model, policy)``.

Policies (``--activation-checkpointing``):

* ``all``: every decoder layer keeps only its inputs and is recomputed in backward;
* ``every:k``: layers 0, k, 2k, … are checkpointed (⌈L/k⌉ of L), the others keep everything;
* ``attn`` / ``mlp``: in every layer only the attention (``self_attn``) or the MLP (``mlp``)
  block is checkpointed — attention is cheap to keep and dear to recompute at long sequences,
  the MLP the reverse.

It uses ``torch.utils.checkpoint`` (non-reentrant). A wrapped module's ``forward`` is replaced on
the instance (no wrapper module), so parameter names, the state dict and checkpoints are those of
the plain model, and FSDP2's ``fully_shard`` of each decoder layer, applied before or after, keeps
its hooks on the same module (the recompute runs inside the layer's backward, while FSDP2 holds
its parameters unsharded). Every tensor the wrapped forward gets, positional or keyword (hidden
states, rotary cos/sin, masks), is handed to checkpoint positionally, so it is saved as a saved
tensor (seen, and compressible or offloadable, by saved-tensor hooks) and held by nothing else.
Under no_grad (evaluation) the plain forward runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from .saved import decoder_layers

POLICIES = ("all", "every:K", "attn", "mlp")
MARK = "_slimtrain_checkpointed"


def parse_policy(policy) -> tuple[str, int]:
    """"all" → ("every", 1); "every:k" → ("every", k); "attn" / "mlp" → (that, 1). None, "none",
    "" or False → ("none", 0); True → ("every", 1). A bad policy raises ValueError (one line)."""
    if policy in (None, False, "", "none", "off"):
        return "none", 0
    if policy is True or policy == "all":
        return "every", 1
    if policy in ("attn", "mlp"):
        return policy, 1
    if isinstance(policy, str) and policy.startswith("every:"):
        k = policy.removeprefix("every:")
        if k.isdigit() and int(k) >= 1:
            return "every", int(k)
    raise ValueError(f"bad activation checkpointing policy {policy!r}: use all, every:K (K >= 1), "
                     "attn or mlp")


def checkpointed_layers(policy, layers: int) -> list[int]:
    """Indices of the decoder layers a policy checkpoints whole ("every"), or touches ("attn", "mlp")."""
    kind, k = parse_policy(policy)
    return [] if kind == "none" else list(range(0, layers, k))


def _checkpointed(forward):
    def run_checkpointed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        tensors = [leaves[i] for i in where]
        for i in where:  # held by checkpoint's saved inputs only
            leaves[i] = None
        del args, kwargs

        def body(*ts):
            filled = list(leaves)
            for i, t in zip(where, ts):
                filled[i] = t
            a, kw = tree_unflatten(filled, spec)
            return forward(*a, **kw)

        return checkpoint(body, *tensors, use_reentrant=False)

    return run_checkpointed


def _wrap(module: nn.Module) -> None:
    if getattr(module, MARK, False):
        return
    module.forward = _checkpointed(module.forward)
    setattr(module, MARK, True)


def apply_activation_checkpointing(model: nn.Module, policy) -> nn.Module:
    """Checkpoint ``model``'s decoder layers by ``policy`` (see the module docstring); in place,
    returns the model. Sets ``model.config.use_cache = False`` (a cache cannot be recomputed)."""
    kind, k = parse_policy(policy)
    if kind == "none":
        return model
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if kind == "every":
            if i % k == 0:
                _wrap(layer)
        else:
            name = "self_attn" if kind == "attn" else "mlp"
            block = getattr(layer, name, None)
            if not isinstance(block, nn.Module):
                raise ValueError(f"--activation-checkpointing {policy}: decoder layer {i} "
                                 f"({type(layer).__name__}) has no .{name}")
            _wrap(block)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False
    return model
