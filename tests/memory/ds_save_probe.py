"""Run under torchrun: what a DeepSpeed ZeRO-3 checkpoint save of a PEFT LoRA model holds on rank 0's CPU.

The base is built the way transformers builds it under a ZeRO-3 config (``HfDeepSpeedConfig`` alive:
``from_config`` runs under ``zero.Init``, bf16), PEFT adds LoRA adapters, ``deepspeed.initialize`` wraps it;
then the two state dicts the save paths gather are built (deepspeed/runtime/engine.py
``_zero3_consolidated_16bit_state_dict``): the whole model (accelerate ``Accelerator.get_state_dict``, the HF
Trainer of transformers < 5.0) and the trainable parameters only (``exclude_frozen_parameters=True``, the HF
Trainer's ``save_model`` for a PEFT model since transformers 5.0). Rank 0 writes the bytes of each (tensors that
share storage counted once) and the adapters' dtype.

Usage: torchrun --nproc_per_node 2 tests/memory/ds_save_probe.py CONFIG_JSON OUT_JSON RANK_R
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

from probe_exit import exit_probe  # noqa: E402


def held(state_dict) -> int:
    """Bytes of a state dict's tensors, each storage once."""
    seen = {}
    for t in state_dict.values():
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def main() -> None:
    cfg = json.loads(open(sys.argv[1]).read())
    rank_r = int(sys.argv[3])
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
          "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
          "zero_allow_untested_optimizer": True}
    keep = HfDeepSpeedConfig(ds)   # noqa: F841  (transformers builds under zero.Init while it is alive)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), torch_dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=rank_r, target_modules="all-linear", lora_dropout=0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    whole = engine._zero3_consolidated_16bit_state_dict()
    adapters = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    if int(os.environ.get("RANK", "0")) == 0:
        lora = [t for k, t in whole.items() if "lora_" in k]
        out = {"whole": held(whole), "adapters": held(adapters), "adapter_keys": len(adapters),
               "adapter_dtypes": sorted({str(t.dtype) for t in lora}),
               "base_dtypes": sorted({str(t.dtype) for k, t in whole.items() if "lora_" not in k}),
               "trainable_elements": sum(p.ds_numel for p in engine.module.parameters() if p.requires_grad),
               "total_elements": sum(p.ds_numel for p in engine.module.parameters())}
        with open(sys.argv[2], "w") as fh:
            json.dump(out, fh)
    exit_probe()


if __name__ == "__main__":
    main()
