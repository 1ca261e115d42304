"""Sharded (FSDP2) parameters: where a shard sits and the collectives it uses (``context.py``),
the sharded pieces of a step and the DTensor form of its state (``step.py``), and the subspace
refresh of a row-sharded gradient (``finder.py``). Nothing is imported here (``subspace`` and the
optimizer import these modules one by one)."""
