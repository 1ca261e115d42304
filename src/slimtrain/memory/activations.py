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

The levers of ``slimtrain.activations`` (the same stated model, itemised per saved storage so
that each lever can be applied to exactly the storages it takes; checked to the byte too):

* ``loss="chunked"`` (``use_chunked_loss``): no logits are returned or saved; the loss keeps its
  precomputed gradients instead, of the hidden states (eTh; 2Th under autocast) and of the head's
  weight (fp32 V·h), the lm_head's input and its weight cast are no longer saved, nor the labels;
  the backward head's temporaries become two chunks of fp32 logits (2·4·chunk·V).
* ``checkpointing`` a policy string (``apply_activation_checkpointing``): a checkpointed region
  keeps its tensor inputs — a whole layer its input (eTh), an attention / MLP block the norm
  output it reads (already saved without autocast; fp32 Th under autocast, which saved bf16 casts
  instead) — and, once for the model, the rotary cos/sin it is handed; the region's own saved
  tensors are recomputed in backward (``recompute``: the largest region's). ``True`` is
  transformers' own ``gradient_checkpointing_enable`` (layer inputs only), as before.
* ``activation_bits`` 8 / "fp8" (``compressed_activations(model, …)``): every storage a decoder
  layer saves that requires grad and has at least ``compress_min_numel`` elements is replaced by
  ``compressed_bytes(n)`` (codes in blocks of 256 + a float32 scale per block).
* ``offload`` (``offload_activations(model, …)``): those storages of at least ``offload_min_bytes``
  bytes cost no device memory (their host copies are reported as ``offloaded``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..activations.checkpointing import parse_policy
from ..activations.compress import DEFAULT_MIN_NUMEL, compressed_bytes, parse_bits
from ..activations.linear_ce import default_chunk_size
from ..activations.offload import DEFAULT_MIN_BYTES


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


# A saved storage: (elements, bytes per element, requires grad). Only storages that require grad
# can be compressed or offloaded (``activations/saved.py``).
Entry = tuple[int, int, bool]


def _norm_entries(T: int, width: int, e: int, autocast: bool, linear_input: bool = True) -> list[Entry]:
    """x upcast to fp32, rsqrt, x̂; without autocast also w·x̂ (the Linear's input, if one reads it)."""
    if autocast:  # x̂ stays fp32; w·x̂ is cast per Linear instead
        return [(T * width, 4, True), (T, 4, True), (T * width, 4, True)]
    out = [(T * width, 4, True), (T, 4, True), (T * width, e, True)]
    return out + [(T * width, e, True)] if linear_input else out


def _norm(T: int, width: int, e: int, autocast: bool) -> int:
    return _sum(_norm_entries(T, width, e, autocast))


def _sum(entries: list[Entry]) -> int:
    return sum(n * b for n, b, _ in entries)


def _layer_parts(s: LlamaShape, T: int, e: int, autocast: bool) -> dict[str, list[Entry]]:
    a = 2 if autocast else e  # dtype of matmul outputs
    attn = [(T * s.q_width, a, True), (T * s.kv_width, a, True), (T * s.kv_width, a, True),
            (T * s.q_width, a, True), (s.heads * T, 4, False)]
    mlp = [(T * s.intermediate, a, True)] * 4
    if autocast:  # bf16 casts of the Linear inputs: q/k/v share one input but cast it 3×; gate/up 2×
        attn += [(T * s.hidden, 2, True)] * 3
        mlp += [(T * s.hidden, 2, True)] * 2
    return {"norm1": _norm_entries(T, s.hidden, e, autocast), "attn": attn,
            "norm2": _norm_entries(T, s.hidden, e, autocast), "mlp": mlp}


def _layer(s: LlamaShape, T: int, e: int, autocast: bool) -> int:
    return sum(_sum(v) for v in _layer_parts(s, T, e, autocast).values())


def _body_entries(s: LlamaShape, T: int, e: int, autocast: bool, policy) -> tuple[list[Entry], int]:
    """What the decoder layers save under a checkpointing policy string, and the largest region
    recomputed in backward."""
    kind, k = parse_policy(policy)
    parts = _layer_parts(s, T, e, autocast)
    full = [x for v in parts.values() for x in v]
    entries: list[Entry] = []
    if kind == "every":
        for i in range(s.layers):
            entries += [(T * s.hidden, e, True)] if i % k == 0 else full
        return entries, _sum(full)
    kept = [x for name, v in parts.items() if name != kind for x in v]
    block_input = [(T * s.hidden, 4, True)] if autocast else []  # w·x̂, fp32: saved instead of casts
    return (kept + block_input) * s.layers, _sum(parts[kind])


def _uncheckpointed_linear_params(s: LlamaShape, policy) -> int:
    kind, k = parse_policy(policy)
    h, i = s.hidden, s.intermediate
    mlp = 3 * h * i
    attn = s.layer_linear_params() - mlp
    if kind == "every":
        return (s.layers - len(range(0, s.layers, k))) * (attn + mlp)
    return s.layers * {"none": attn + mlp, "attn": mlp, "mlp": attn}[kind]


LOSSES = ("naive", "chunked")


def check_loss(loss: str) -> str:
    """``loss`` if it is one the activation model covers (``LOSSES``), else a one-line ValueError;
    the planner's and the budget search's check too."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be naive or chunked, got {loss!r}")
    return loss


def saved_activation_bytes(s: LlamaShape, batch: int, seq: int, *, param_bytes: int = 4,
                           autocast: bool = False, checkpointing: bool | str = False,
                           loss: str = "naive", chunk_size: int | None = None,
                           activation_bits=None, compress_min_numel: int = DEFAULT_MIN_NUMEL,
                           offload: bool = False,
                           offload_min_bytes: int = DEFAULT_MIN_BYTES) -> dict[str, int]:
    """Bytes of the tensors alive for backward at the end of the forward pass.

    Returns {"saved": …, "logits": …, "weight_casts": …, "recompute": …, "loss_chunk": …,
    "compressed_from": …, "offloaded": …}; ``recompute`` is the largest checkpointed region's
    activations, alive only during its backward; ``loss_chunk`` the chunked loss's fp32 chunk
    logits (a temporary, 0 for the naive loss); ``compressed_from`` the bytes the compressed
    storages would take uncompressed; ``offloaded`` the host bytes of offloaded storages.
    ``checkpointing``: False / None, True (transformers' own), or a policy ("all", "every:k",
    "attn", "mlp"; see the module docstring for the other levers).
    """
    check_loss(loss)
    bits = parse_bits(activation_bits)
    T = batch * seq
    e = param_bytes
    a = 2 if autocast else e
    chunked = loss == "chunked"
    legacy = checkpointing is True
    policy = None if legacy else checkpointing
    kind, _ = parse_policy(policy)
    if legacy:
        body, recompute = [(T * s.hidden, e, True)] * s.layers, _layer(s, T, e, autocast)
    elif kind == "none":
        body, recompute = [x for v in _layer_parts(s, T, e, autocast).values() for x in v] * s.layers, 0
    else:
        body, recompute = _body_entries(s, T, e, autocast, policy)
    # model level, kept exact by every lever
    head = _sum(_norm_entries(T, s.hidden, e, autocast, linear_input=not chunked))
    if chunked:  # ids (8T); the loss's gradient of the hidden states and fp32 gradient of the head
        head += 8 * T + T * s.hidden * a + 4 * s.vocab * s.hidden
    else:  # ids and labels (16T), the loss (4), fp32 log-softmax of the logits
        head += 4 * T * s.vocab + 16 * T + 4
        if autocast:
            head += 2 * T * s.hidden  # the lm_head's bf16 input
    if not legacy:  # rotary cos/sin: saved by the layers, or handed to each checkpointed region
        head += 2 * seq * s.head_dim * (4 if autocast else e)
    if kind in ("every", "attn"):  # the position ids handed to a checkpointed attention (int64)
        head += 8 * seq
    saved, compressed_from, offloaded = 0, 0, 0
    for n, b, grad in body:
        nbytes = n * b
        if grad and offload and nbytes >= offload_min_bytes:
            offloaded += nbytes
        elif grad and bits is not None and n >= compress_min_numel:
            compressed_from += nbytes
            saved += compressed_bytes(n)
        else:
            saved += nbytes
    casts = 0
    if autocast:  # a checkpointed region's weight casts are made again in its recompute
        casts = 2 * (_uncheckpointed_linear_params(s, policy) + (0 if chunked else s.vocab * s.hidden))
    chunk = min(chunk_size or default_chunk_size(s.vocab), T)
    return {"saved": saved + head, "logits": 0 if chunked else a * T * s.vocab, "weight_casts": casts,
            "recompute": recompute, "loss_chunk": 2 * 4 * chunk * s.vocab if chunked else 0,
            "compressed_from": compressed_from, "offloaded": offloaded}
