"""Run under torchrun: what an FSDP1 FULL_STATE_DICT of a PEFT LoRA model holds on rank 0 (the Trainer's
``save_model`` under FSDP: accelerate ``get_state_dict`` -> ``FSDP.state_dict_type(FULL_STATE_DICT,
FullStateDictConfig(rank0_only=True))`` -> ``model.state_dict()``; PEFT keeps the adapters only when it writes).

fp32 base and adapters (FSDP1 flattens one dtype per unit; PEFT's adapters are fp32). ``offload_to_cpu`` is off:
on the CPU device the tensors are there already (with it, torch 2.13's gloo run crashed), and the dict holds the
same tensors either way. Rank 0 writes the bytes of the dict (each storage once) and the keys' count.

Usage: torchrun --nproc_per_node 2 tests/memory/fsdp_save_probe.py CONFIG_JSON OUT_JSON RANK_R
"""

from __future__ import annotations

import functools
import json
import sys

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel as FSDP, StateDictType
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from probe_exit import exit_probe


def main() -> None:
    cfg = json.loads(open(sys.argv[1]).read())
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), torch_dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=int(sys.argv[3]), target_modules="all-linear", lora_dropout=0.0))
    wrap = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
    fsdp = FSDP(model, auto_wrap_policy=wrap, use_orig_params=True, device_id=torch.device("cpu"))
    with FSDP.state_dict_type(fsdp, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=False, rank0_only=True)):
        whole = fsdp.state_dict()
    if dist.get_rank() == 0:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in whole.values()}
        with open(sys.argv[2], "w") as fh:
            json.dump({"whole": sum(storages.values()), "keys": len(whole),
                       "lora_keys": sum("lora_" in k for k in whole)}, fh)
    exit_probe()


if __name__ == "__main__":
    main()
