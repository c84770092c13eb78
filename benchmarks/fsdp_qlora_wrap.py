"""What is alive on each rank right after Answer.AI fsdp_qlora wraps a QLoRA Llama, vs dsadvise's after-wrap moment.

Run: python benchmarks/fsdp_qlora_wrap.py [--model 7b|70b] [--layers 1 2]        (7B: ~2 min on 2 busy cores)

Replicates train.py's QLoRA load-and-wrap path (github.com/AnswerDotAI/fsdp_qlora, train.py at 50efa1e, the commit
that logs ``memory/reserved_after_model_wrap``, the value of the corpus point answerai-7b-qlora-ctx512-3090-after-wrap)
in two gloo processes on the CPU, the CPU standing for the GPU:

* ``AutoModelForCausalLM.from_config`` under accelerate's ``init_empty_weights()`` (parameters on meta, buffers real),
  then ``replace_linear(model.model, Linear4bit, compute_dtype=bf16, quant_type='nf4', quant_storage=bf16)``;
  transformers 4.39's per-layer rotary module (``inv_freq`` and the fp32 ``_cos_cached`` / ``_sin_cached``,
  max_position_embeddings x head_dim each: modeling_llama.py LlamaRotaryEmbedding, 4.38/4.39) is put back on each
  attention, since transformers 5 keeps one model-level ``inv_freq`` instead;
* ``load_and_quantize`` per tensor of a fake bf16 checkpoint (no weights: random values): a ``Params4bit`` is built
  from the tensor on the device and quantized there (bitsandbytes ``Params4bit._quantize``: NF4, double
  quantization, blocksize 64, quant_storage bf16), then its packed data goes to the CPU on rank 0 and to meta on
  rank 1 while the QuantState stays on the device; the other tensors go to the CPU (rank 0) or meta (rank 1).
  Serial (train.py uses a thread pool: only the order of the loading's transients differs);
* PEFT LoRA r64 on k/q/v/up/down/gate_proj (train.py ``--lora_target_modules all``), adapters in bf16 (PEFT 0.10's
  ``update_layer``: ``self.to(weight.device, dtype=weight.dtype)``, the packed weight being bf16). That same call
  moves rank 0's QuantStates to the CPU (bitsandbytes 0.43 ``Params4bit.to`` -> ``QuantState.to``: absmax, offset,
  state2.absmax, state2.code; the NF4 ``code`` stays); rank 1 patches ``quant_state.to`` away
  (``setup_quantized_meta_for_peft``). Modern PEFT no longer calls it: rank 0's move is done here by hand;
* ``FSDP(model, FULL_SHARD, auto_wrap_policy=get_wrapping_policy(), use_orig_params=False, limit_all_gathers=True,
  sync_module_states=True, param_init_fn=to_empty on rank 1, mixed_precision=None)``.

After ``FSDP(...)`` returns, every tensor alive in each process is listed (a gc walk, deduplicated by storage) and
put in a group: flat parameter shards (LoRA units, decoder-layer units, the root), module parameters that still own
storage, buffers, QuantState tensors, anything else. On a GPU every one of them reachable from the model is on the
GPU after the wrap (rank 0's CPU-resident model and QuantStates are moved by ``_move_module_to_device`` /
``Params4bit.to``), so the groups are the GPU's live bytes: ``memory_allocated()`` after the wrap. dsadvise's groups
come from its own sequence for the same model (advisor.memory.allocator ``fsdp_after_wrap``'s inputs: the loaded
quantization state, ``fsdp_init_events`` with each unit's buffers), the live bytes at its end.

Also printed: the reserved bytes the allocator model (``advisor.memory.allocator.CachingAllocator``) gives for
recorded sequences (the profiler's allocation events of the CPU stand-in): rank 1's loading, ``empty_cache``, then
its wrap ("rank 1 order"), and the same rank 1 process replaying rank 0's order (QuantStates dropped at the PEFT
step and allocated again per ``Linear4bit`` when its unit is materialized: "rank 0 order"), next to dsadvise's
sequence in the same (gloo) order and as dsadvise estimates it (``fsdp_after_wrap``: on NCCL a broadcast bucket is
parked until its unit's end, ``fsdp_init_events(nccl=True)``). Per layer count; then the live groups extrapolated
linearly to the full depth (32 / 80 layers) and the reserved bytes of each sequence made that deep (layer 1's
recorded events repeated: :func:`deepen`).

Result (Llama-2-7B shapes, 1 and 2 layers, 32 extrapolated): every group alive after the wrap equals dsadvise's to
0.01 MiB per layer (2.106 GiB at 32 layers on both ranks); the units FSDP builds equal dsadvise's (the root's order
was the one difference, fixed); reserved at 32 layers 3.39 GiB for the recorded sequences (either rank's order) vs
3.37 for dsadvise's in gloo's order and 3.71 as estimated with NCCL's parked buckets; Answer.AI measured 3.72.

Llama-2-70B shapes, 1 layer (``--model 70b --layers 1``, issue 17, helper A; ~10 min): every group equal (729.86 MiB
alive on each rank, dsadvise 729.85: the 500 MiB root shard, a 204 MiB layer shard, 8.9 MiB of LoRA shards, 13 MiB
of QuantState, 4 MiB of rotary caches); reserved over the recorded load + empty_cache + wrap 3786 MiB (rank 1's
order) / 3772 (rank 0's) vs 3774 for dsadvise's sequence in the same order (4482 with NCCL's parked buckets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fsdp_wrap_sequence import _policy  # noqa: E402  (train.py get_wrapping_policy(), one copy)
from benchmarks.harness.launch import run_ranks  # noqa: E402

MIB = 2 ** 20
GIB = 2 ** 30
# bitsandbytes that quantizes on the CPU (0.50.2, installed with --target); set DSADVISE_BNB_PATH to another one.
BNB_PATH = os.environ.get("DSADVISE_BNB_PATH", "/work/litgpt-site")
# meta-llama/Llama-2-7b-hf and Llama-2-70b-hf config.json
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
}
FULL_LAYERS = {"7b": 32, "70b": 80}
CATALOG = {"7b": "llama-2-7b", "70b": "llama-2-70b"}
TARGETS = ["k_proj", "q_proj", "v_proj", "up_proj", "down_proj", "gate_proj"]   # train.py "all"
QS_MOVED = ("absmax", "offset")        # QuantState.to (bnb 0.43): these, and state2's absmax and code


SENTINEL, ROOT = 9_876_543, 999       # marker allocations: SENTINEL + layer index (ROOT: outside the layers)


def _layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter / module name (None outside the layers)."""
    import re

    m = re.search(r"layers\.(\d+)(\.|$)", name)
    return int(m.group(1)) if m else None


def _rotary_439(head_dim: int, max_pos: int, base: float = 10000.0):
    """transformers 4.39 LlamaRotaryEmbedding's buffers (inv_freq, _cos_cached, _sin_cached), fp32 (the default
    dtype: from_config without torch_dtype), on the CPU (init_empty_weights leaves buffers real)."""
    import torch
    from torch import nn

    class LlamaRotaryEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
            t = torch.arange(max_pos, dtype=torch.int64).type_as(inv_freq)
            emb = torch.cat((torch.outer(t, inv_freq),) * 2, dim=-1)
            self.register_buffer("_cos_cached", emb.cos().to(torch.get_default_dtype()), persistent=False)
            self.register_buffer("_sin_cached", emb.sin().to(torch.get_default_dtype()), persistent=False)

    return LlamaRotaryEmbedding()


def _replace_linear(model, skip=("lm_head",), **kw):
    """train.py ``replace_linear``: every nn.Linear below ``model`` becomes a bnb Linear4bit (on meta here)."""
    import torch
    from bitsandbytes.nn import Linear4bit

    for name, module in model.named_children():
        if len(list(module.children())) > 0:
            _replace_linear(module, skip, **kw)
        if isinstance(module, torch.nn.Linear) and name not in skip:
            model._modules[name] = Linear4bit(module.in_features, module.out_features, module.bias is not None, **kw)
    return model


def _load_and_quantize(model, name: str, shape, rank: int) -> None:
    """train.py ``load_and_quantize`` (bnb, low_memory) for one checkpoint tensor: the device is the CPU here. The
    fake checkpoint tensor of a quantized weight stands for its device copy (``value.to(device)``); the others go
    straight to the CPU (rank 0) or meta (rank 1), as their checkpoint tensors never touch the device."""
    import torch
    from bitsandbytes.nn import Params4bit

    module_key, _, value_key = name.rpartition(".")
    sub = model.get_submodule(module_key)
    param = sub.get_parameter(value_key)
    if isinstance(param, Params4bit):
        value = torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02)
        value = type(param)(value.data, **param.__dict__)._quantize("cpu")    # .cuda(device) on a GPU
        if rank != 0:
            value = type(param)(value.data.to("meta"), **value.__dict__)
        # rank 0: value.data.to("cpu"): already there
    else:
        dev = "cpu" if rank == 0 else "meta"
        value = torch.nn.Parameter(torch.empty(shape, dtype=torch.bfloat16, device=dev).normal_(0, 0.02)
                                   if dev == "cpu" else torch.empty(shape, dtype=torch.bfloat16, device=dev))
    setattr(sub, value_key, value)


def _quant_state_tensors(qs) -> list:
    """The tensors of a bitsandbytes QuantState (nested: absmax, offset, code, state2.absmax, state2.code)."""
    out = [qs.absmax, qs.code]
    if getattr(qs, "nested", False):
        out += [qs.offset, qs.state2.absmax, qs.state2.code]
    return out


class _Recorder:
    """Allocation events of the CPU allocator (the profiler's), in order across several recorded phases, as
    ``("a", id, bytes)`` / ``("f", id, 0)``; frees of blocks allocated outside a recorded phase are dropped."""

    def __init__(self):
        self.events: list[tuple] = []
        self.alive: dict[int, int] = {}
        self.n = 0

    def phase(self):
        import contextlib

        from torch.profiler import ProfilerActivity, profile

        rec = self

        @contextlib.contextmanager
        def cm():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                yield
            rec._take(prof)

        return cm()

    def mark(self, what: str) -> None:
        self.events.append(("mark", what, 0))

    def layer(self, index: int | None) -> None:
        """Mark, inside a recorded phase, that what follows belongs to decoder layer ``index`` (None: outside the
        layers), by an allocation of a sentinel size (the profiler's events are read after the phase)."""
        import torch

        code = ROOT if index is None else index
        if code != getattr(self, "_at", None):
            self._at = code
            torch.empty(SENTINEL + code, dtype=torch.uint8)

    def _take(self, prof) -> None:
        self._at = None
        from torch._C._profiler import _EventType

        raw = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            e = stack.pop()
            stack.extend(e.children)
            if e.tag == _EventType.Allocation:
                raw.append((e.start_time_ns, e.extra_fields.ptr, e.extra_fields.alloc_size))
        raw.sort(key=lambda r: r[0])
        for _, ptr, size in raw:
            if SENTINEL <= size <= SENTINEL + ROOT:
                self.events.append(("layer", size - SENTINEL, 0))
            elif size > 0:
                self.n += 1
                self.alive[ptr] = self.n
                self.events.append(("a", self.n, size))
            elif ptr in self.alive:
                self.events.append(("f", self.alive.pop(ptr), 0))


def _inventory(model, rank: int) -> dict:
    """Every tensor alive in this process (gc walk, one entry per storage), grouped as described in the module
    docstring: {group: bytes}, plus the named leftovers of 'other'."""
    import gc

    import torch
    from bitsandbytes.nn import Linear4bit
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    role: dict[int, str] = {}

    def put(t, what):
        if t is None or t.device.type == "meta":
            return
        s = t.untyped_storage()
        if s.nbytes():
            role.setdefault(s.data_ptr(), what)

    for m in model.modules():
        if isinstance(m, FSDP) and m._handle is not None:
            names = m._handle.flat_param._fqns
            kind = ("flat shard: root" if m is model else
                    "flat shard: LoRA units" if isinstance(m.module, torch.nn.Linear)
                    and not isinstance(m.module, Linear4bit) else "flat shard: layer units")
            put(m._handle.flat_param, kind)
    for m in model.modules():
        if isinstance(m, Linear4bit):
            qs = getattr(m, "quant_state", None) or getattr(m.weight, "quant_state", None)
            for t in _quant_state_tensors(qs) if qs is not None else ():
                put(t, "QuantState tensors")
    for n, b in model.named_buffers():
        put(b, "buffers: rotary caches (_cos/_sin_cached)" if "cached" in n else "buffers: inv_freq and other")
    for n, p in model.named_parameters():
        put(p, "module params owning storage")
    for m in model.modules():                      # use_orig_params=False: the params are plain-tensor views
        for n, t in list(vars(m).items()):
            if torch.is_tensor(t) and not isinstance(t, torch.nn.Parameter):
                put(t, "module params owning storage")
    groups: dict[str, int] = {}
    other: list[tuple[int, str]] = []
    seen: set[int] = set()
    gc.collect()
    for obj in gc.get_objects():
        try:
            if not torch.is_tensor(obj) or obj.device.type != "cpu":
                continue
            s = obj.untyped_storage()
        except Exception:       # noqa: BLE001 (objects that merely look like tensors)
            continue
        ptr, nb = s.data_ptr(), s.nbytes()
        if not nb or ptr in seen:
            continue
        seen.add(ptr)
        g = role.get(ptr, "other")
        groups[g] = groups.get(g, 0) + nb
        if g == "other":
            other.append((nb, f"{tuple(obj.shape)} {obj.dtype}"))
    other.sort(reverse=True)
    return {"groups": groups, "other": other[:8], "other_count": len(other)}


def _worker(model_key: str, layers: int, order: str, out_path: str, after_wrap=None) -> None:
    """One rank's load and wrap (see the module docstring); ``after_wrap(model, rec, rank)`` (optional: the
    training step of benchmarks/fsdp_qlora_step.py) runs after the inventory and its dict joins the result."""
    sys.path.insert(0, BNB_PATH)
    import torch
    import torch.distributed as dist
    import torch.distributed.fsdp._init_utils as init_utils
    from accelerate import init_empty_weights
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from transformers import AutoModelForCausalLM, LlamaConfig

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    # sync_module_states refuses CPU tensors (a check only); the broadcast itself runs on gloo
    init_utils._check_module_states_for_sync_module_states = lambda states: None
    shape = SHAPES[model_key]
    cfg = LlamaConfig(num_hidden_layers=layers, use_cache=False, **shape)
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg)
        model.model = _replace_linear(model.model, compute_dtype=torch.bfloat16, quant_type="nf4",
                                      quant_storage=torch.bfloat16)
    # transformers 4.39: a rotary module per attention, none at the model level
    model.model.rotary_emb = torch.nn.Module()
    for layer in model.model.layers:
        layer.self_attn.rotary_emb = _rotary_439(head_dim, shape["max_position_embeddings"])
    rec = _Recorder()
    ckpt = [(n, tuple(p.shape)) for n, p in model.named_parameters()]      # Linear4bit's meta weight: (out, in)
    with rec.phase():
        for name, shp in ckpt:
            rec.layer(_layer_of(name))
            _load_and_quantize(model, name, shp, rank)
    rec.mark("empty_cache")
    # PEFT
    lin4 = [m for m in model.modules() if isinstance(m, Linear4bit)]
    if rank != 0:           # setup_quantized_meta_for_peft: the QuantStates stay where they are
        for m in lin4:
            m.weight.quant_state._orig_to = m.weight.quant_state.to
            m.weight.quant_state.to = lambda *a, **k: None
    cfg_l = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=64, lora_alpha=16, lora_dropout=0.1,
                       target_modules=TARGETS)
    model = get_peft_model(model, cfg_l, autocast_adapter_dtype=False)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.to(torch.bfloat16)        # PEFT 0.10: adapters in the (bf16) base weight's dtype
    del n, p      # a loop variable would keep rank 0's last parameter (lm_head) alive past the wrap
    if rank != 0:
        for m in lin4:
            m.weight.quant_state.to = m.weight.quant_state._orig_to
            del m.weight.quant_state._orig_to
    if order == "rank0" and rank != 0:
        # rank 0's order on the recording rank: PEFT 0.10 moved the QuantStates off the device ...
        names = {id(m): n for n, m in model.named_modules()}
        with rec.phase():
            for m in lin4:
                rec.layer(_layer_of(names[id(m)]))
                qs = m.weight.quant_state
                qs.absmax, qs.offset = qs.absmax.to("meta"), qs.offset.to("meta")
                qs.state2.absmax, qs.state2.code = qs.state2.absmax.to("meta"), qs.state2.code.to("meta")

    layer_of = {id(m): _layer_of(n) for n, m in model.named_modules()}

    def init_fn(module):
        rec.layer(layer_of[id(module)])
        # ... and FSDP's _move_states_to_device brings each back with its packed weight (Params4bit.to ->
        # QuantState.to before the data's own copy)
        if order == "rank0" and isinstance(module, Linear4bit):
            qs = module.weight.quant_state
            qs.absmax = torch.empty_like(qs.absmax, device="cpu")
            qs.offset = torch.empty_like(qs.offset, device="cpu")
            qs.state2.absmax = torch.empty_like(qs.state2.absmax, device="cpu")
            qs.state2.code = torch.empty_like(qs.state2.code, device="cpu")
        module.to_empty(device=torch.device("cpu"), recurse=False)

    with rec.phase():
        model = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=_policy(),
                     use_orig_params=False, limit_all_gathers=True, sync_module_states=True,
                     device_id=torch.device("cpu"), param_init_fn=init_fn if rank != 0 else None,
                     mixed_precision=None)
    inv = _inventory(model, rank)
    units = []

    def post_order(m):
        for c in m.children():
            yield from post_order(c)
        if isinstance(m, FSDP) and m._handle is not None:
            yield m

    for m in post_order(model):
        fp = m._handle.flat_param
        units.append([int(s.numel()) * fp.element_size() for s in fp._shapes])
    res = {"rank": rank, "inventory": inv, "units": units}
    if after_wrap is not None:
        res.update(after_wrap(model, rec, rank))
    res["events"] = rec.events if rank == 1 else None
    Path(f"{out_path}.{rank}").write_text(json.dumps(res))
    dist.barrier()
    if rank == 0:
        Path(out_path).write_text(json.dumps([json.loads(Path(f"{out_path}.{r}").read_text()) for r in range(2)]))
    dist.barrier()
    dist.destroy_process_group()


def record(model_key: str, layers: int, order: str, port: int = 29647) -> list[dict]:
    """Both ranks' inventories after the wrap (and rank 1's recorded allocation events). ``DSADVISE_WRAP_CACHE``
    (a folder): keep the records there and reuse them (to iterate on the comparison without re-running)."""
    cache = os.environ.get("DSADVISE_WRAP_CACHE")
    if cache:
        f = Path(cache) / f"{model_key}-{layers}-{order}.json"
        if f.exists():
            return json.loads(f.read_text())
        out = _record(model_key, layers, order, port)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(out))
        return out
    return _record(model_key, layers, order, port)


def _record(model_key: str, layers: int, order: str, port: int = 29647) -> list[dict]:
    return run_ranks(__file__, [model_key, str(layers), order], port=port, timeout=1800, what="QLoRA wrap")


def replay(events) -> tuple[int, int]:
    """(reserved, allocated) bytes after the recorded sequence through dsadvise's allocator model, with
    ``torch.cuda.empty_cache()`` at the mark (train.py after loading: every free whole segment released)."""
    from advisor.memory.allocator import CachingAllocator

    al = CachingAllocator()
    for op, key, n in events:
        if op == "a":
            al.malloc(tuple(key) if isinstance(key, list) else key, n)
        elif op == "f":
            al.free(tuple(key) if isinstance(key, list) else key)
        elif op == "layer":
            continue
        else:                       # empty_cache: release_cached_blocks -> every unsplit free segment
            for addr, b in list(al._by_addr.items()):
                if b.prev is None and b.next is None:
                    al._remove(b)
                    al.reserved -= b.size
    return al.reserved, al.allocated


def deepen(events, layers: int) -> list:
    """A recorded sequence of a model with 2+ decoder layers made ``layers`` deep: in each phase, the events marked
    as layer 1's (the first layer after the first, in its steady state) repeated for layers 1 ... layers-1, each
    copy with keys of its own for what layer 1 allocated; the events of layer 0 and outside the layers kept in
    place. Checked: no copied event frees a key that layer 1 did not allocate, other than outside-layer keys."""
    events = [tuple(e) for e in events]
    own: set = set()                      # keys layer 1 allocated, in any phase
    at = None
    for op, k, n in events:
        if op == "layer":
            at = k
        elif op == "mark":
            at = None
        elif op == "a" and at == 1:
            own.add(k)
    out: list = []
    block: list = []
    at = None

    def flush():
        nonlocal block
        if at == 1:
            for c in range(1, layers):
                out.extend((op, (c, k) if k in own else k, n) for op, k, n in block)
        elif at is None or at == ROOT or at == 0:
            out.extend(block)
        block = []

    for e in events:
        if e[0] in ("layer", "mark"):
            flush()
            if e[0] == "mark":
                out.append(e)
                at = None
            else:
                at = e[1]
        else:
            block.append(e)
    flush()
    alloc = {k for op, k, n in out if op == "a"}
    bad = [e for e in out if e[0] == "f" and e[1] not in alloc]
    assert not bad, f"{len(bad)} frees of keys never allocated in the deepened sequence"
    return out


def dsadvise_groups(model_key: str, layers: int) -> dict:
    """dsadvise's after-wrap moment for the corpus point's settings on a ``layers``-layer model: the live bytes of
    its sequence by group, and the reserved bytes it simulates (fsdp_after_wrap)."""
    from advisor.api import build_hardware, build_strategy, build_training, estimate
    from advisor.catalog.models import resolve_model
    from advisor.memory.allocator import (_fsdp_unit_buffers, _fsdp_wrap_inputs, fsdp_after_wrap, fsdp_init_events,
                                          loaded_events, simulate)
    from advisor.memory.model_states import fsdp_shard_degree

    resolved = resolve_model(CATALOG[model_key])
    arch = resolved.architecture.model_copy(update={"num_layers": layers})
    resolved = resolved.model_copy(update={"architecture": arch})
    kw = dict(gpus=2, gpu="rtx-3090", strategy="fsdp-full", method="qlora", precision="pure-bf16", seq_len=512,
              micro_batch=1, checkpointing="full", lora_rank=64, lora_targets=tuple(TARGETS), lora_dropout=0.1,
              loss="legacy-inline", torch_version="2.2", transformers_version="4.39")
    est = estimate(resolved, **kw)
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    training = build_training(hw, seq_len=512, micro_batch=1, precision="pure-bf16", method="qlora", lora_rank=64,
                              lora_targets=tuple(TARGETS), lora_dropout=0.1, checkpointing="full",
                              loss="legacy-inline", torch_version="2.2", transformers_version="4.39")
    strategy = build_strategy(hw, "fsdp-full", "none", "none", "auto")
    params = est.per_gpu.parameters
    units, sync, offload, loaded, _ = _fsdp_wrap_inputs(arch, training, strategy, hw, params)
    ubuf, _ = _fsdp_unit_buffers(arch, training, strategy, units)
    world = fsdp_shard_degree(strategy, hw)
    events = loaded_events(loaded, layers) + fsdp_init_events([list(u) for u in units], world, sync, offload, ubuf)
    live: dict = {}
    for op, k, n in events:
        if op == "a":
            live[k] = n
        else:
            live.pop(k, None)
    n_adapter = (len(units) - 1) // max(layers, 1) - 1
    groups: dict[str, int] = {}
    for k, n in live.items():
        if k[0] == "L":
            g = "QuantState tensors"
        elif k[0] == "B":
            g = "buffers: rotary caches (_cos/_sin_cached)"
        elif k[0] == "P":
            u = k[1]
            g = ("flat shard: root" if u == len(units) - 1 else
                 "flat shard: layer units" if u % (n_adapter + 1) == n_adapter else "flat shard: LoRA units")
        else:
            g = "other"
        groups[g] = groups.get(g, 0) + n
    st = fsdp_after_wrap(arch, training, strategy, hw, params)
    gloo = simulate(loaded_events(loaded, layers)
                    + fsdp_init_events([list(u) for u in units], world, sync, offload, ubuf, nccl=False))
    return {"groups": groups, "reserved": st.peak_reserved, "reserved_gloo": gloo.peak_reserved, "events": events}


GROUPS = ["flat shard: layer units", "flat shard: LoRA units", "flat shard: root", "QuantState tensors",
          "buffers: rotary caches (_cos/_sin_cached)", "buffers: inv_freq and other", "module params owning storage",
          "other"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    full = FULL_LAYERS[args.model]
    per: dict[int, dict] = {}
    for n in args.layers:
        recs = {o: record(args.model, n, o) for o in ("rank1", "rank0")}
        ds = dsadvise_groups(args.model, n)
        r1 = recs["rank1"]
        per[n] = {"rank0": r1[0]["inventory"], "rank1": r1[1]["inventory"], "ds": ds,
                  "replay1": replay(r1[1]["events"]), "replay0": replay(recs["rank0"][1]["events"]),
                  "units_equal": r1[1]["units"] == [list(u) for u in _units_of(ds)],
                  "events": {"rank0": recs["rank0"][1]["events"], "rank1": r1[1]["events"]}}
    print(f"Llama-2-{args.model.upper()} shapes, QLoRA r64 (k/q/v/up/down/gate), FULL_SHARD over 2; MiB alive after "
          "FSDP(...) returns")
    for n, d in per.items():
        print(f"\n{n} layer(s); dsadvise's units = the units FSDP built: {d['units_equal']}")
        print(f"{'group':<44}{'rank 0':>10}{'rank 1':>10}{'dsadvise':>10}")
        for g in GROUPS:
            vals = [d["rank0"]["groups"].get(g, 0), d["rank1"]["groups"].get(g, 0), d["ds"]["groups"].get(g, 0)]
            if any(vals):
                print(f"{g:<44}" + "".join(f"{v / MIB:>10.2f}" for v in vals))
        tot = [sum(d["rank0"]["groups"].values()), sum(d["rank1"]["groups"].values()), sum(d["ds"]["groups"].values())]
        print(f"{'total alive':<44}" + "".join(f"{v / MIB:>10.2f}" for v in tot))
        for r in ("rank0", "rank1"):
            if d[r]["other"]:
                print(f"  {r} 'other' ({d[r]['other_count']} storages), largest: "
                      + ", ".join(f"{nb / MIB:.2f} MiB {w}" for nb, w in d[r]["other"][:4]))
        print(f"reserved (allocator model) over rank 1's recorded load + empty_cache + wrap: "
              f"{d['replay1'][0] / MIB:.1f} MiB; in rank 0's order: {d['replay0'][0] / MIB:.1f} MiB; "
              f"dsadvise, same order: {d['ds']['reserved_gloo'] / MIB:.1f} MiB (fsdp_after_wrap, NCCL: "
              f"{d['ds']['reserved'] / MIB:.1f} MiB)")
    if len(per) >= 2:
        a, b = sorted(per)[:2]

        def extra(va, vb):
            slope = (vb - va) / (b - a)
            return va + slope * (full - a)

        print(f"\nextrapolated linearly from {a} and {b} layers to {full} layers (GiB)")
        print(f"{'group':<44}{'rank 0':>10}{'rank 1':>10}{'dsadvise':>10}")
        for g in GROUPS + ["total alive"]:
            vals = []
            for key in ("rank0", "rank1", "ds"):
                get = (lambda d: sum(d[key]["groups"].values())) if g == "total alive" else \
                    (lambda d: d[key]["groups"].get(g, 0))
                vals.append(extra(get(per[a]), get(per[b])))
            if any(abs(v) > 0 for v in vals):
                print(f"{g:<44}" + "".join(f"{v / GIB:>10.3f}" for v in vals))
    deep = max(per)
    if deep >= 2:
        ev = per[deep]["events"]
        ds_full = dsadvise_groups(args.model, full)
        rv = [replay(deepen(ev["rank0"], full))[0], replay(deepen(ev["rank1"], full))[0], ds_full["reserved_gloo"]]
        print(f"\nreserved after the wrap at {full} layers, allocator model over each sequence (GiB): the recorded "
              f"{deep}-layer sequence made {full} deep (layer 1's events repeated), in rank 0's order / rank 1's "
              "order, and dsadvise's sequence, all with gloo's order (a bucket freed when its broadcast returns)")
        print(f"{'':<44}{'rank 0':>10}{'rank 1':>10}{'dsadvise':>10}")
        print(f"{'reserved, gloo order':<44}" + "".join(f"{v / GIB:>10.3f}" for v in rv))
        print(f"{'reserved, NCCL (dsadvise fsdp_after_wrap)':<44}{'':>20}{ds_full['reserved'] / GIB:>10.3f}")
        if args.model == "7b":
            print("measured (Answer.AI, rank 0's reserved_after_model_wrap, corpus answerai-7b-qlora-ctx512-3090-"
                  "after-wrap): 3.72 GiB")


def _units_of(ds: dict) -> list:
    """The per-unit parameter tensor sizes in dsadvise's wrap sequence (the ("init", unit, i) allocations)."""
    units: dict[int, list] = {}
    for op, k, n in ds["events"]:
        if op == "a" and k[0] == "init":
            units.setdefault(k[1], []).append(n)
    return [units[u] for u in sorted(units)]


if __name__ == "__main__":
    main()
