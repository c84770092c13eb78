"""Which process groups a ZeRO-3 run communicates over (real DeepSpeed engine, CPU, gloo, 2 processes).

Run: torchrun --nproc_per_node 2 benchmarks/zero3_process_groups.py

The model is built under ``zero.Init`` as transformers does it when a ZeRO-3 HfDeepSpeedConfig is alive (accelerate's
``zero3_init_flag``), LoRA is put on it with PEFT, and two steps run. Printed: the process groups (ranks of each),
the group the base and LoRA parameters gather over (``ds_process_group``) and the optimizer's data-parallel group.
DeepSpeed clones the world group for its data-parallel group (deepspeed/utils/groups.py ``_clone_world_group``)
while ``zero.Init`` partitions over ``dist.get_world_group()`` (runtime/zero/partition_parameters.py): on GPUs
these are two NCCL communicators per rank, each with its own buffers (docs/memory-model.md, PEFT docs rows).
"""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
          "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
    keep = HfDeepSpeedConfig(ds)  # noqa: F841  (transformers builds under zero.Init while it is alive)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    built_under_init = hasattr(next(model.parameters()), "ds_id")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    ids = torch.randint(0, cfg["vocab_size"], (1, 16))
    for _ in range(2):
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
    world = dist.group.WORLD
    base = next(p for n, p in engine.module.named_parameters() if "base_layer" in n)
    lora = next(p for n, p in engine.module.named_parameters() if "lora_A" in n)
    groups = list(dist.distributed_c10d._world.pg_map)
    if dist.get_rank() == 0:
        print(f"built under zero.Init: {built_under_init}")
        print(f"process groups: {len(groups)}, ranks {[dist.get_process_group_ranks(g) for g in groups]}")
        print(f"base parameters gather over WORLD: {base.ds_process_group is world}; LoRA parameters: "
              f"{lora.ds_process_group is world}; the optimizer's data-parallel group is WORLD: "
              f"{engine.optimizer.dp_process_group is world}")


if __name__ == "__main__":
    main()
