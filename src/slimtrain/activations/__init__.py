"""Activation memory: losses and layers that keep less for backward (``linear_ce``: the LM head's
cross-entropy without materialising the logits; ``chunked_loss``: a transformers causal LM trained
with it)."""

from .chunked_loss import supports_chunked_loss, use_chunked_loss, uses_chunked_loss
from .linear_ce import causal_lm_loss, default_chunk_size, linear_cross_entropy, shift_labels

__all__ = ["causal_lm_loss", "default_chunk_size", "linear_cross_entropy", "shift_labels",
           "supports_chunked_loss", "use_chunked_loss", "uses_chunked_loss"]
