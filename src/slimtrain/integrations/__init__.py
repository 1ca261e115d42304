"""slimtrain in other people's training loops.

``hf``: Hugging Face ``transformers.Trainer`` (and TRL's trainers, which subclass it) — a factory
for ``optimizer_cls_and_kwargs`` and a ``Trainer`` with layer-wise updates. accelerate needs no
adapter: ``accelerator.prepare(model, optimizer)`` takes a slimtrain optimizer as it is, under DDP
and FSDP2 (README, "With Hugging Face Trainer / accelerate")."""
