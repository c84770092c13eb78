"""The real allocation/free sequence of an FSDP (v1) wrap, Answer.AI fsdp_qlora style, vs dsadvise's model of it.

Run: python benchmarks/fsdp_wrap_sequence.py [--method qlora|lora] [--layers 4]      (~1 min on 2 cores)

What it checks: dsadvise simulates the CUDA caching allocator over the allocation sequence it *builds* for the
FSDP wrapping (``advisor.memory.allocator.fsdp_init_events``). This script records the sequence a real wrap
*makes*: two processes (torchrun-style, gloo, CPU) wrap a Llama of the published runs' shapes (Llama-2-7B:
hidden 4096, intermediate 11008, vocab 32000; ``--layers`` decoder layers) the way Answer.AI's ``train.py``
does (github.com/AnswerDotAI/fsdp_qlora train.py, commit 50efa1e, the one of benchmarks_03_2024.md):
``low_memory`` (rank 0 holds the weights, the other ranks build on the meta device and materialize with
``param_init_fn=module.to_empty(recurse=False)``), ``get_peft_model`` with LoRA rank 64 on every linear
(bf16 adapters: PEFT casts them to the base weight's floating dtype, and with ``quant_storage=bf16`` the packed
NF4 weight is bf16), ``get_wrapping_policy()`` (a LoRA leaf linear whose weight requires grad is a unit of its
own, every ``LlamaDecoderLayer`` one, the root the rest), ``use_orig_params=False``, ``sync_module_states=True``.
QLoRA's packed weight is stood for by a frozen bf16 parameter of the packed shape (``in*out/4`` bf16 elements:
what bitsandbytes ``Params4bit`` with ``quant_storage=bfloat16`` holds); the wrap only sees shapes and dtypes.

The sequence recorded is rank 1's (the profiler's allocation events, in order): on a GPU, rank 0's
``_move_module_to_device`` allocates each parameter of a unit where rank 1's ``to_empty`` does, so both ranks
make the same sequence. Both sequences go through dsadvise's allocator simulator; printed: reserved and
allocated after the wrap, recorded vs built.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.launch import run_ranks  # noqa: E402

MIB = 2 ** 20
# Llama-2-7B (meta-llama/Llama-2-7b-hf config.json)
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def _build(method: str, layers: int, rank: int, lora_rank: int, shape: dict):
    """The model as train.py has it just before ``FSDP(...)``: rank 0 on the CPU, the others on meta."""
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=layers, use_cache=False, **{**LLAMA2_7B, **shape})
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    for p in model.parameters():        # bf16 weights; the rotary buffers stay fp32 (train.py loads weights only)
        p.data = p.data.to(torch.bfloat16)
    if method == "qlora":
        # Params4bit(quant_storage=bf16): the packed weight, in*out/2 bytes as in*out/4 bf16 elements.
        for mod in list(model.model.modules()):
            if isinstance(mod, nn.Linear):
                mod.weight = nn.Parameter(torch.empty(mod.in_features * mod.out_features // 4, 1,
                                                      dtype=torch.bfloat16, device="meta"), requires_grad=False)
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=16, lora_dropout=0.1, target_modules=targets))
    for p in model.parameters():
        if p.dtype.is_floating_point and p.requires_grad:
            p.data = p.data.to(torch.bfloat16)     # PEFT: adapters in the base weight's (bf16) dtype
    if rank == 0:
        model.to_empty(device="cpu")
    return model


def _policy():
    """Answer.AI train.py ``get_wrapping_policy()`` (custom_policy False): lambda_policy or the decoder layer."""
    import functools

    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    def lambda_policy_fn(module):
        return (len(list(module.named_children())) == 0 and getattr(module, "weight", None) is not None
                and module.weight.requires_grad)

    return functools.partial(_or_policy, policies=[
        functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda_policy_fn),
        functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=(LlamaDecoderLayer,))])


def _allocation_events(prof, with_ops: bool = False) -> list[tuple]:
    """The profiler's allocation events in time order, as ``("a", key, bytes)`` / ``("f", key, 0)`` (with
    ``with_ops``, the allocating op's name is a fourth item of each allocation)."""
    from torch._C._profiler import _EventType

    raw = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation:
            f = e.extra_fields
            parent = e.parent.name if e.parent is not None else ""
            raw.append((e.start_time_ns, f.ptr, f.alloc_size, parent))
    raw.sort(key=lambda r: r[0])
    out, alive, n = [], {}, 0
    for _, ptr, size, parent in raw:
        if size > 0:
            n += 1
            alive[ptr] = n
            out.append(("a", n, size, parent) if with_ops else ("a", n, size))
        elif ptr in alive:
            out.append(("f", alive.pop(ptr), 0))
    return out


def _worker(method: str, layers: int, lora_rank: int, out_path: str, shape: dict) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.profiler import ProfilerActivity, profile

    dist.init_process_group("gloo")
    # sync_module_states refuses CPU tensors (a check only: _init_utils._check_module_states_for_sync_module_states);
    # the broadcast itself (dist._broadcast_coalesced) runs on gloo.
    import torch.distributed.fsdp._init_utils as init_utils

    init_utils._check_module_states_for_sync_module_states = lambda states: None
    rank = dist.get_rank()
    model = _build(method, layers, rank, lora_rank, shape)
    units: list[list[int]] = []
    import gc

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=_policy(),
                     use_orig_params=False, limit_all_gathers=True, sync_module_states=True, device_id=torch.device("cpu"),
                     param_init_fn=(lambda m: m.to_empty(device=torch.device("cpu"), recurse=False))
                     if rank != 0 else None)
    def post_order(m):                  # the order FSDP wrapped them in (wrap.py _recursive_wrap: children first)
        for c in m.children():
            yield from post_order(c)
        if isinstance(m, FSDP) and m._handle is not None:
            yield m

    for m in post_order(model):
        fp = m._handle.flat_param
        units.append([int(s.numel()) * fp.element_size() for s in fp._shapes])
    if rank == 1:
        Path(out_path).write_text(json.dumps({"events": _allocation_events(prof, with_ops=True), "units": units}))
    dist.barrier()
    dist.destroy_process_group()


def record(method: str, layers: int, lora_rank: int = 64, port: int = 29631, shape: dict | None = None) -> dict:
    """Rank 1's allocation events of the wrap and the units FSDP built, in the order it wrapped them (bytes of each
    tensor). ``shape``: LlamaConfig fields that replace Llama-2-7B's."""
    return run_ranks(__file__, [method, str(layers), str(lora_rank), json.dumps(shape or {})], port=port, timeout=600,
                     what="wrap")


def compare(rec: dict):
    """The allocator simulated over the recorded wrap and over dsadvise's sequence for the same units
    (``fsdp_init_events``, FULL_SHARD over 2, sync_module_states): (recorded, built) AllocatorStats."""
    from advisor.memory.allocator import fsdp_init_events, simulate

    real = simulate([tuple(e[:3]) for e in rec["events"]])
    # nccl=False: gloo frees a broadcast bucket at once (on a GPU NCCL parks it until the unit ends)
    built = simulate(fsdp_init_events([tuple(u) for u in rec["units"]], 2, True, nccl=False))
    return real, built


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[6], json.loads(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="qlora", choices=["qlora", "lora"])
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    rec = record(args.method, args.layers)
    events = [tuple(e[:3]) for e in rec["events"]]
    real, built = compare(rec)
    live = sum(n for op, k, n in events if op == "a") - sum(
        dict((k, n) for op, k, n in events if op == "a")[k] for op, k, _ in events if op == "f")
    print(f"{args.method}, {args.layers} layers, {len(rec['units'])} units; recorded: {len(events)} events, "
          f"{live / MIB:.1f} MiB alive after the wrap")
    print(f"{'':<10}{'reserved MiB':>14}{'peak alloc MiB':>16}{'segments':>10}")
    for name, st in (("recorded", real), ("built", built)):
        print(f"{name:<10}{st.peak_reserved / MIB:>14.1f}{st.peak_allocated / MIB:>16.1f}{st.segments:>10}")


if __name__ == "__main__":
    main()
