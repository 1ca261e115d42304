"""The 2-process runs of ``test_accelerate.py`` (torchrun, gloo on CPU) and their one-process
references: ``python accelerate_worker.py MODE RECIPE OUT`` under torchrun (2 ranks) or alone.

MODE ``ddp`` / ``fsdp``: ``accelerator.prepare(model, optimizer)`` and a hand-written loop, each
rank on its half of every global batch. accelerate runs FSDP on GPUs only, so on CPU ``fsdp``
forces its distributed type before ``prepare``: what runs is accelerate's own FSDP2 preparation
(``fully_shard`` and the swap of the optimizer's parameters for their shards).
MODE ``trainer``: ``hf.Trainer(fused_backward=True)`` with accumulation on 2 DDP ranks.
Rank 0 saves the final full weights (and the run's figures) to OUT."""

from __future__ import annotations

import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

STEPS, GLOBAL_BATCH, SEQ = 6, 4, 32


def batches():
    from tests.helpers import stdlib_bytes

    return stdlib_bytes(STEPS * GLOBAL_BATCH * SEQ).view(STEPS, GLOBAL_BATCH, SEQ)


def accelerate_run(mode: str, recipe: str, out: str) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    import slimtrain.optim as so
    from tests.helpers import tiny_llama

    fsdp = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
                                          reshard_after_forward=True)
    accelerator = Accelerator(cpu=True)
    if mode == "fsdp":
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp
    model = tiny_llama()
    optimizer = so.create(recipe, model, lr=3e-3, **({"rank": 8} if "galore" in recipe else {}))
    model, optimizer = accelerator.prepare(model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    losses = []
    for tokens in batches():
        mine = tokens.chunk(world)[rank]
        loss = model(input_ids=mine, labels=mine).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(mean)
        losses.append(float(mean) / world)
    inner = optimizer.optimizer
    figures = {"losses": losses, "state_bytes": sum(inner.state_bytes().values())}
    if mode == "fsdp":
        from torch.distributed.tensor import DTensor

        figures["dtensor_params"] = all(isinstance(p, DTensor) for g in inner.param_groups
                                        for p in g["params"])
        sd = get_optimizer_state_dict(model, inner)  # what DCP saves: the sharded state
        figures["saved_keys"] = len(sd["state"])
        weights = {k: v.full_tensor() if isinstance(v, DTensor) else v
                   for k, v in model.state_dict().items()}
    else:
        weights = accelerator.unwrap_model(model).state_dict()
    if rank == 0:
        torch.save({"weights": {k: v.detach().clone() for k, v in weights.items()}, **figures},
                   out)


def trainer_run(recipe: str, out: str) -> None:
    import torch.utils.data
    import transformers

    from slimtrain.integrations import hf
    from tests.helpers import tiny_llama

    class InOrder(hf.Trainer):
        """Sequential batches, so 2 ranks × 1 sequence see what 1 process × 2 sees."""

        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    import datasets

    world = int(os.environ.get("WORLD_SIZE", 1))
    blocks = batches().reshape(-1, SEQ).tolist()
    data = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    args = transformers.TrainingArguments(
        os.path.dirname(out), max_steps=STEPS // 2, per_device_train_batch_size=GLOBAL_BATCH // 2 // world,
        gradient_accumulation_steps=2, learning_rate=3e-3, max_grad_norm=0.5, report_to=[],
        use_cpu=True, ddp_backend="gloo" if world > 1 else None, seed=0, save_strategy="no",
        logging_steps=1, disable_tqdm=True, lr_scheduler_type="constant",
        optim_target_modules=["self_attn", "mlp"], optim_args="rank=8")
    # accumulate="full": DDP accumulates whole gradients (no_sync), so the one-process reference
    # does too — its "subspace" mode would log in-subspace norms and clip by them
    t = InOrder(model=tiny_llama(), args=args, train_dataset=data, fused_backward=True,
                fused_options={"accumulate": "full"}, optimizer_cls_and_kwargs=hf.optimizer(recipe))
    t.train()
    if t.args.process_index == 0:
        weights = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
        torch.save({"weights": weights, "grad_norms": [h["grad_norm"] for h in t.state.log_history
                                                       if "grad_norm" in h]}, out)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    mode, recipe, out = sys.argv[1:4]
    if mode == "trainer":
        trainer_run(recipe, out)
    else:
        accelerate_run(mode, recipe, out)
