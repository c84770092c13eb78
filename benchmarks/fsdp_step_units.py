"""How many FSDP (v1) units are unsharded at once in a training step, recorded on a real engine (issue 17).

Run: python benchmarks/fsdp_step_units.py [--layers 6] [--reentrant 1]

Two gloo processes on the CPU run one forward/backward of a small Llama (transformers, bf16) with PEFT LoRA on
every linear, wrapped the way the HF Trainer and accelerate wrap the PEFT docs' FSDP QLoRA example
(examples/sft: PEFT ``fsdp_auto_wrap_policy``: every decoder layer a unit, every LoRA leaf a unit;
FULL_SHARD, ``use_orig_params=False``, BACKWARD_PRE, ``limit_all_gathers``; gradient checkpointing enabled
before the wrap, reentrant as ``--use_reentrant True``, with ``enable_input_require_grads``). Every
``FlatParamHandle.unshard`` / ``reshard`` is counted: the most decoder-layer units (and the root) unsharded at
the same time, in the forward and in the backward, against what dsadvise assumes (the root and two layers:
``buffers.fsdp_gathered_*``). Prints one line per phase.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.launch import run_ranks  # noqa: E402


SENTINEL = 123_457       # bytes of a marker tensor allocated right after the forward


def _worker(layers: int, reentrant: bool, out_path: str) -> None:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import BackwardPrefetch, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp._flat_param import FlatParamHandle
    from transformers import LlamaConfig, LlamaForCausalLM

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4,
                      num_hidden_layers=layers, vocab_size=1024, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear"))
    for p in model.parameters():                  # the adapters in the base weight's dtype, as PEFT did in 2024-03
        p.data = p.data.to(torch.bfloat16)
    model.train()
    model = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=fsdp_auto_wrap_policy(model),
                 use_orig_params=False, limit_all_gathers=True, backward_prefetch=BackwardPrefetch.BACKWARD_PRE,
                 device_id=torch.device("cpu"),
                 mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16,
                                                buffer_dtype=torch.bfloat16))
    kind = {}
    for m in FSDP.fsdp_modules(model):
        if m._handle is not None:
            name = type(m.module).__name__
            kind[id(m._handle)] = "layer" if name.endswith("DecoderLayer") else ("adapter" if name == "Linear" else "root")
    live: dict[str, set] = {"layer": set(), "root": set(), "adapter": set()}
    peak = {"forward": {}, "backward": {}}
    phase = ["forward"]
    orig_unshard, orig_reshard = FlatParamHandle.unshard, FlatParamHandle.reshard

    def unshard(self, *a, **k):
        out = orig_unshard(self, *a, **k)
        kd = kind.get(id(self))
        if kd:
            live[kd].add(id(self))
            p = peak[phase[0]]
            p[kd] = max(p.get(kd, 0), len(live[kd]))
        return out

    def reshard(self, free_unsharded_flat_param, *a, **k):
        out = orig_reshard(self, free_unsharded_flat_param, *a, **k)
        kd = kind.get(id(self))
        if kd and free_unsharded_flat_param:
            live[kd].discard(id(self))
        return out

    FlatParamHandle.unshard, FlatParamHandle.reshard = unshard, reshard
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.fsdp_wrap_sequence import _allocation_events

    ids = torch.randint(0, cfg.vocab_size, (2, 128))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = model(input_ids=ids, labels=ids).loss
        mark = torch.empty(SENTINEL, dtype=torch.uint8)          # the end of the forward in the event list
        phase[0] = "backward"
        loss.backward()
        del mark
    live, after_forward, top, sizes = 0, None, 0, {}
    for op, key, n in _allocation_events(prof):
        if op == "a":
            sizes[key] = n
            live += n
            if n == SENTINEL and after_forward is None:
                after_forward = live - n
        else:
            live -= sizes.pop(key, 0)
        top = max(top, live)
    hidden = 2 * 128 * cfg.hidden_size * 2                          # one bf16 hidden-state tensor
    if dist.get_rank() == 1:
        Path(out_path).write_text(json.dumps({"peak": peak, "units": {k: sum(v == k for v in kind.values())
                                                                        for k in ("layer", "adapter", "root")},
                                              "after_forward": after_forward, "step_peak": top, "hidden": hidden}))
    dist.barrier()
    dist.destroy_process_group()


def record(layers: int = 6, reentrant: bool = True, port: int = 29661) -> dict:
    """Rank 1's most units unsharded at once, per phase and kind (``peak``), and how many units of each kind."""
    return run_ranks(__file__, [str(layers), str(int(reentrant))], port=port, timeout=300, what="step")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]), bool(int(sys.argv[3])), sys.argv[4])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--reentrant", type=int, default=1)
    args = ap.parse_args()
    rec = record(args.layers, bool(args.reentrant))
    print(f"units: {rec['units']}")
    print(f"bytes allocated in the step and alive after the forward: {rec['after_forward']} "
          f"({rec['after_forward'] / rec['hidden']:.1f} hidden-state tensors); step peak above the start: {rec['step_peak']}")
    for ph, p in rec["peak"].items():
        print(f"{ph:9s} most unsharded at once: layers {p.get('layer', 0)}, root {p.get('root', 0)}, "
              f"adapters {p.get('adapter', 0)}  (dsadvise: root + 2 layers)")


if __name__ == "__main__":
    main()
