"""A two-minute side-by-side: AdamW and GaLore-AdamW train the same small LLaMA on the same text.

Text: the Python standard library's own sources (present on every machine with Python), read as
bytes (vocabulary 256), so no download and no tokenizer are needed.
"""

from __future__ import annotations

import sysconfig
import time
from pathlib import Path

import torch

from . import optim


def stdlib_bytes(n_bytes: int) -> torch.Tensor:
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        chunks.append(path.read_bytes())
        total += len(chunks[-1])
        if total >= n_bytes:
            break
    return torch.tensor(list(b"".join(chunks)[:n_bytes]), dtype=torch.long)


def small_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def run(recipe: str, steps: int, seed: int, **kwargs) -> dict:
    data = stdlib_bytes(2_000_000)
    split = int(0.95 * len(data))
    train, val = data[:split], data[split:]
    model = small_llama(seed)
    opt = optim.create(recipe, model, **kwargs)
    gen = torch.Generator().manual_seed(seed)

    def batch(source, generator):
        starts = torch.randint(0, len(source) - 129, (16,), generator=generator)
        return torch.stack([source[s:s + 129] for s in starts])

    start = time.perf_counter()
    for _ in range(steps):
        ids = batch(train, gen)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval()
    val_gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        val_loss = sum(model(input_ids=(b := batch(val, val_gen)), labels=b).loss.item() for _ in range(8)) / 8
    state = opt.state_bytes()
    return dict(recipe=recipe, val_loss=val_loss, state_bytes=state["states"] + state["projectors"],
                projector_bytes=state["projectors"], seconds=seconds,
                params=sum(p.numel() for p in model.parameters()))
