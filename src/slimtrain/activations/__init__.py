"""Activation memory: losses and layers that keep less for backward (``linear_ce``: the LM head's
cross-entropy without materialising the logits; ``chunked_loss``: a transformers causal LM trained
with it), and the levers on what the decoder layers save (``checkpointing``: selective activation
checkpointing; ``compress``: saved tensors in 8-bit / FP8 blocks; ``offload``: saved tensors in
pinned host memory on GPU runs; ``saved``: what the last two share)."""

from .checkpointing import apply_activation_checkpointing, checkpointed_layers, parse_policy
from .chunked_loss import supports_chunked_loss, use_chunked_loss, uses_chunked_loss
from .compress import CompressedActivations, compressed_activations, compressed_bytes, parse_bits
from .linear_ce import causal_lm_loss, default_chunk_size, linear_cross_entropy, shift_labels
from .offload import OffloadActivations, check_offload_device, offload_activations
from .saved import decoder_layers

__all__ = ["CompressedActivations", "OffloadActivations", "apply_activation_checkpointing",
           "causal_lm_loss", "check_offload_device", "checkpointed_layers", "compressed_activations",
           "compressed_bytes", "decoder_layers", "default_chunk_size", "linear_cross_entropy",
           "offload_activations", "parse_bits", "parse_policy", "shift_labels",
           "supports_chunked_loss", "use_chunked_loss", "uses_chunked_loss"]
