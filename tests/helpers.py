"""Shared test helpers."""

import warnings

import torch


def tiny_llama(vocab_size: int = 256, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A small transformers LlamaForCausalLM for tests (untied embeddings, as the GaLore configs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden + 16,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def stdlib_bytes(n_bytes: int) -> torch.Tensor:
    """Real human-written text available offline: Python standard-library sources, as bytes."""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    return torch.tensor(list(b"".join(chunks)[:n_bytes]), dtype=torch.long)


def write_stdlib_jsonl(path, n_bytes: int):
    """A JSONL corpus of real text: standard-library modules (whole files) up to ``n_bytes``."""
    import json

    from slimtrain.data.corpus import stdlib_files, stdlib_root

    root, total = stdlib_root(), 0
    with open(path, "w") as out:
        for f in stdlib_files(root):
            text = f.read_text(errors="replace")
            if total + len(text) > n_bytes:
                continue
            out.write(json.dumps({"text": text, "source": f.name}) + "\n")
            total += len(text)
            if total > 0.95 * n_bytes:
                break
    return path


def train_on_text(model, opt, steps: int, data: torch.Tensor, seed: int = 0) -> list[float]:
    """``steps`` optimizer steps of next-byte prediction on ``data`` (batches of 8 × 64 bytes)."""
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (8,), generator=gen)
        batch = torch.stack([data[s:s + 65] for s in starts])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses
