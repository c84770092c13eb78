"""Run under torchrun: build a small real model, wrap it in real DeepSpeed ZeRO engines on CPU (gloo) and
write the bytes each rank holds for parameters, gradients, fp32 master weights and optimizer moments.

Usage: torchrun --nproc_per_node 2 tests/memory/ds_probe.py CONFIG_JSON OUT_JSON STAGE[,STAGE...]
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from probe_exit import exit_probe  # noqa: E402


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def moments(optimizer, params) -> int:
    total = 0
    for p in params:
        for v in optimizer.state.get(p, {}).values():
            if torch.is_tensor(v) and v.numel() > 1:
                total += v.numel() * v.element_size()
    return total


def probe(cfg: dict, stage: int) -> dict:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    config = {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        # the HF integration's "auto" reduce bucket (hidden^2), as dsadvise's estimate assumes by default
        "zero_optimization": {"stage": stage, "reduce_bucket_size": cfg["hidden_size"] ** 2},
        "zero_allow_untested_optimizer": True,
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    ids = torch.randint(0, cfg["vocab_size"], (1, 32))
    # the most 16-bit parameter gradients alive at once during backward (checked as each one is accumulated)
    alive = {"max": 0}
    params = list(engine.module.parameters())

    def hook(_):
        alive["max"] = max(alive["max"], nbytes(p.grad for p in params if p.grad is not None))

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params] if stage in (1, 2) else []
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    for h in handles:
        h.remove()
    partition = None
    if stage in (1, 2):
        # the flat partition the step reads (grads_in_partition; averaged_gradients are views of it)
        grads = [g for group in zopt.averaged_gradients.values() for g in (group or []) if g is not None]
        partition = sum({g.untyped_storage().data_ptr(): g.untyped_storage().nbytes() for g in grads}.values())
    engine.step()
    out = {"stage": stage, "world": engine.world_size, "rank": engine.global_rank}
    if stage == 3:
        masters = list(zopt.fp32_partitioned_groups_flat)
        out["parameters"] = nbytes(p.ds_tensor for p in engine.module.parameters())
        out["gradients"] = nbytes([zopt.grad_partitions_flat_buffer])
    else:
        masters = list(zopt.single_partition_of_fp32_groups)
        out["parameters"] = nbytes(engine.module.parameters())
        out["gradients"] = partition
        out["grads_alive_in_backward"] = alive["max"]
    out["master"] = nbytes(masters)
    out["moments"] = moments(zopt.optimizer, masters)
    out["total_parameters"] = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                                  for p in engine.module.parameters())
    engine.destroy()
    return out


def main() -> None:
    cfg = json.loads(open(sys.argv[1]).read())
    stages = [int(s) for s in sys.argv[3].split(",")]
    results = [probe(cfg, s) for s in stages]
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[2], "w") as fh:
            json.dump(results, fh)
    exit_probe()


if __name__ == "__main__":
    main()
