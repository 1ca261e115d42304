"""A transformers causal LM whose training loss never materialises the logits (``--loss chunked``).

``use_chunked_loss(model)`` replaces the model's ``forward`` on that instance: a call with
``labels`` runs the decoder body, then ``causal_lm_loss`` (``linear_ce.py``) on its last hidden
state and the head's weight, and returns the usual output with ``loss`` set and ``logits=None``;
a call without labels (evaluation of logits, generation, SophiaG's label sampling) runs the
original forward unchanged. The override is an instance attribute, so ``model(...)`` through DDP,
FSDP2's hooks on the root module or torch's own ``__call__`` all reach it, and the state dict, the
parameter names and the checkpoints are those of the plain model.

Under autocast the head's matmul runs in the autocast dtype as ``lm_head`` would (hidden and
weight are cast to it; the weight's gradient flows back through the cast), then the softmax and
its sums in fp32, as transformers' loss does after the head.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .linear_ce import causal_lm_loss

MARK = "_slimtrain_chunked_loss"

# Model families whose logits are not ``lm_head(hidden)``: a soft cap or a scale applies in
# between, which the chunked loss would skip.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def supports_chunked_loss(model) -> str | None:
    """None when ``use_chunked_loss`` applies to ``model``; else why not (one line)."""
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return (f"{type(model).__name__} is not a transformers causal LM (no get_decoder / "
                "get_output_embeddings)")
    head = get_head()
    if not isinstance(head, torch.nn.Linear):
        return f"its output head is a {type(head).__name__}, not a Linear"
    config = getattr(model, "config", None)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return f"its config sets {name}={value}, a transform of the logits the chunked loss skips"
    return None


def use_chunked_loss(model, chunk_size: int | None = None, backend: str = "auto"):
    """Make ``model(input_ids, labels=…, num_items_in_batch=…)`` compute its loss in chunks; returns
    the model. Raises ValueError (with the reason) for a model it does not apply to."""
    reason = supports_chunked_loss(model)
    if reason is not None:
        raise ValueError(f"--loss chunked does not apply: {reason}; use --loss naive")
    if getattr(model, MARK, False):
        return model
    original = model.forward
    decoder = model.get_decoder()
    head = model.get_output_embeddings()

    def forward(input_ids=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, **kwargs)
        kwargs.setdefault("use_cache", False)
        hidden = decoder(input_ids=input_ids, **kwargs).last_hidden_state
        weight, bias = head.weight, head.bias
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        elif hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
        loss = causal_lm_loss(hidden, weight, labels, bias=bias, num_items_in_batch=num_items_in_batch,
                              chunk_size=chunk_size, backend=backend)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    model.forward = forward
    setattr(model, MARK, True)
    return model


def uses_chunked_loss(model) -> bool:
    return bool(getattr(model, MARK, False))

