"""A stated model of the tensors a ``transformers`` LLaMA saves for backward.

Read off ``LlamaForCausalLM`` (transformers 5, SDPA attention) with saved-tensor hooks and checked
exactly (to the byte) in ``tests/memory``. T = batch × sequence tokens, h = hidden, i = intermediate,
a = heads, kv = key/value width (heads_kv × head_dim), e = bytes of the activation dtype.

Per decoder layer, parameters in dtype e (fp32: e=4; pure bf16: e=2):
  each RMSNorm (×2):   x upcast to fp32 (4Th) + rsqrt (4T) + x̂ (eTh) + w·x̂ (eTh)
  attention:           q (eTh) + k, v (2·eT·kv) + SDPA output (eTh) + log-sum-exp (4aT)
  MLP:                 gate, up, silu(gate), product (4·eTi)
Model level: input ids and labels (16T), rotary cos/sin (2·s·head_dim·e; fp32 under autocast;
none outside the checkpoints when checkpointing), the final RMSNorm,
log-softmax of the logits in fp32 (4TV) and the returned logits (eTV).

fp32 parameters under bf16 autocast: x̂ stays fp32 and w·x̂ is not saved; instead each Linear
saves a bf16 cast of its input (q/k/v: 3, gate/up: 2, lm_head: 1) and autocast caches a bf16 copy
of every Linear weight for the backward (2 bytes per Linear parameter).

Activation checkpointing (transformers' ``gradient_checkpointing_enable``): each layer keeps only
its input (eTh); during backward one layer is recomputed at a time, so the peak adds one layer's
full activations.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, config) -> "LlamaShape":
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(hidden=config.hidden_size, intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   layers=config.num_hidden_layers, vocab=config.vocab_size,
                   tied=bool(getattr(config, "tie_word_embeddings", False)))

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linear_params(self) -> int:
        h = self.hidden
        return h * self.q_width + 2 * h * self.kv_width + self.q_width * h + 3 * h * self.intermediate


def _norm(T: int, width: int, e: int, autocast: bool) -> int:
    if autocast:  # x (fp32) + rsqrt + x̂ kept in fp32; w·x̂ is cast per Linear instead
        return 8 * T * width + 4 * T
    return 4 * T * width + 4 * T + 2 * e * T * width


def _layer(s: LlamaShape, T: int, e: int, autocast: bool) -> int:
    a = 2 if autocast else e  # dtype of matmul outputs
    attn = a * T * s.q_width * 2 + 2 * a * T * s.kv_width + 4 * s.heads * T
    mlp = 4 * a * T * s.intermediate
    total = 2 * _norm(T, s.hidden, e, autocast) + attn + mlp
    if autocast:  # bf16 casts of the Linear inputs: q/k/v share one input but cast it 3×; gate/up 2×
        total += (3 + 2) * 2 * T * s.hidden
    return total


def saved_activation_bytes(s: LlamaShape, batch: int, seq: int, *, param_bytes: int = 4,
                           autocast: bool = False, checkpointing: bool = False) -> dict[str, int]:
    """Bytes of the tensors alive for backward at the end of the forward pass.

    Returns {"saved": …, "logits": …, "weight_casts": …, "recompute": …}; ``recompute`` is one
    layer's activations, alive only during the backward of a checkpointed layer.
    """
    T = batch * seq
    e = param_bytes
    a = 2 if autocast else e
    layer = _layer(s, T, e, autocast)
    head = _norm(T, s.hidden, e, autocast) + 4 * T * s.vocab + 16 * T + 4
    if not checkpointing:  # rotary cos/sin are saved by the layers (inside the checkpoints if any)
        head += 2 * seq * s.head_dim * (4 if autocast else e)
    if autocast:
        head += 2 * T * s.hidden
    body = s.layers * e * T * s.hidden if checkpointing else s.layers * layer
    casts = 0
    if autocast:
        casts = 2 * (s.layers * s.layer_linear_params() + s.vocab * s.hidden)
    return {"saved": body + head, "logits": a * T * s.vocab, "weight_casts": casts,
            "recompute": layer if checkpointing else 0}
