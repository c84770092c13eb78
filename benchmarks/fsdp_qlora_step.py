"""The allocation sequence of Answer.AI fsdp_qlora's training step on the CPU stand-in, vs dsadvise's FSDP step sequence.

Run: python benchmarks/fsdp_qlora_step.py [--layers 1 2] [--ckpt reentrant|non-reentrant] [--foreach]   (7B shapes)

The model is benchmarks/fsdp_qlora_wrap.py's replication of train.py's load-and-wrap (2 gloo processes, the CPU
standing for the GPU, Llama-2-7B shapes, QLoRA r64 on k/q/v/up/down/gate, FSDP FULL_SHARD, use_orig_params=False,
no MixedPrecision: train.py's --precision bf16 sets none). After the wrap, train.py's step (train.py at 50efa1e):
``apply_activation_checkpointing`` on every LlamaDecoderLayer (``checkpoint_wrapper``, REENTRANT with
``enable_input_require_grads`` as the corpus row assumes, or NO_REENTRANT), ``AdamW`` over ``model.parameters()``,
then for each of two steps: ``model(input_ids, labels=...)`` at 512 tokens (micro batch 1), ``loss.backward()``,
``optimizer.step()``, ``optimizer.zero_grad()`` (AdamW as train.py builds it: betas (0.9, 0.95), eps 1e-5, weight decay
0.1; ``--foreach``: torch's foreach implementation, the default on CUDA, forced on the CPU, whose default is the
per-tensor loop). Every allocation and free of the CPU allocator (the profiler's
events, :class:`benchmarks.fsdp_qlora_wrap._Recorder`) is recorded on rank 1, phase by phase (a mark between
forward, backward, optimizer step and zero_grad), after its load and wrap.

Printed: the allocator model (advisor.memory.allocator.CachingAllocator, one pool: the CPU has no streams) over the
recorded sequence, peak allocated and reserved per phase; the same sequence split into the GPU's two pools
(:func:`split_pools`: the all-gathers' destinations in the unshard stream's, gloo's own all-gather copies dropped);
dsadvise's pools for the same depth (compute, unshard, post-backward) and its compute pool right after the wrap.
``DSADVISE_WRAP_CACHE`` (a folder) keeps the records. ~3 minutes per depth on 2 busy cores.

Found (1 and 2 layers, issue 17): (1) at the first forward FSDP's lazy init allocates and frees each unit's padded
unsharded size on the compute stream, the root first (500 MiB, then each unit's): dsadvise now has it
(allocator.fsdp_lazy_init_events; it fits in the wrap's cached blocks: no corpus row moved); (2) the step adds
reserved bytes to the compute pool where dsadvise's step added none: +16 MiB at 1 layer, +28 at 2, +10 MiB per
layer in the first optimizer step: AdamW's exp_avg / exp_avg_sq are one tensor per adapter unit's flat shard, each
under 1 MiB, so they come from the small pool's 2 MiB segments, which the wrap's cached (large) blocks cannot serve;
dsadvise allocated one block per layer per state, which fitted there (fixed: allocator._fsdp_adapter_states;
answerai-7b-qlora-ctx512-3090 -7.1 -> -1.5 %): now dsadvise's compute pool grows by 8 / 16 MiB over its
after-wrap reserved and its post-backward pool (the gradient shards, in the one CPU pool here) holds 6 / 10 MiB:
14 / 26 MiB vs the recorded 16 / 28 at 1 / 2 layers. The unshard stream's pool: recorded 696 MiB allocated at 2 layers
(root 500 + two layer units + adapters), dsadvise 790 (one more freed layer block pending its stream event, which
the CPU cannot show). Not recorded: CPUOffload (its pinned copies need CUDA); read from the source instead (see
allocator._post_backward_grad_shards).

Found (issue 17, helper A; ``--foreach --layers 1``): the optimizer phase of the second step allocates one tensor per
adapter unit's flat shard, of its size (9 x 256 KiB + 3 x 688 KiB = 4.27 MiB at 1 layer), all alive at once, then
frees them: ``_multi_tensor_adam``'s ``torch._foreach_sqrt(device_exp_avg_sqs)``; the CPU's default per-tensor loop
makes two at a time instead (``sqrt``, then the division). dsadvise counted these temporaries as one block per layer,
which fitted in the wrap's cached blocks; they are now one per shard (small pool: allocator._fsdp_adapter_states).
Printed below as "optimizer phases".

The unshard stream (issue 17, helper A): the recorded order of all-gathers and frees (gloo frees at once), with the
release a GPU makes (each freed block parked behind its record_stream event until the CPU synchronizes on a later
free event at the rate limiter, or between steps: :func:`rate_limited`), peaks at 697.5 / 698.7 MiB allocated and
702 / 702 MiB reserved at 1 / 2 layers; dsadvise's own sequence for it (allocator.fsdp_stream_events, built from
the engine's rules) at 695.0 / 695.0 and 700 / 700 (the 1-layer run holds a few more 512 KiB adapters at once).
Llama-2-70B shapes (``--model 70b --layers 1 --foreach``, ~8 min): unshard stream 1830.8 MiB allocated / 1852 reserved
recorded (rate-limited release) vs 1820.6 / 1846; the compute stream's pool grows by 12 MiB in the step over the
wrap's 3786 MiB (gloo order), dsadvise's by 10 over 4482 (NCCL order; 3774 in gloo's, fsdp_qlora_wrap.py); the
second optimizer step makes the 12 shards' temporaries (8.88 MiB) at once. So at one layer and 512 tokens the 70B
shapes agree within ~15 MiB: what the answerai-70b-qlora-offload row lacks (1.3 GiB) is not in these pools' rules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fsdp_qlora_wrap import (BNB_PATH, CATALOG, MIB, TARGETS, _worker,  # noqa: E402
                                        replay)
from benchmarks.harness.launch import run_ranks  # noqa: E402

SEQ = 512
STEPS = 2


def _step(ckpt: str, foreach: bool = False):
    def after_wrap(model, rec, rank):
        import functools

        import torch
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                                 apply_activation_checkpointing,
                                                                                 checkpoint_wrapper)
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        from transformers.models.llama.modeling_llama import LlamaModel, LlamaRotaryEmbedding

        # transformers 5's forward needs its model-level rotary module (the wrap left an empty one, 4.39 having none;
        # its inv_freq: 64 fp32 values, and cos/sin computed per forward instead of 4.39's per-layer cache slices)
        for m in model.modules():
            if isinstance(m, LlamaModel):
                m.rotary_emb = LlamaRotaryEmbedding(config=m.config)
        impl = CheckpointImpl.REENTRANT if ckpt == "reentrant" else CheckpointImpl.NO_REENTRANT
        if ckpt == "reentrant":
            model.enable_input_require_grads()
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper,
                                                                                      checkpoint_impl=impl),
                                       check_fn=lambda m: isinstance(m, LlamaDecoderLayer))
        # train.py get_optimizer: AdamW(lr, betas=(0.9, 0.95), eps=1e-5, weight_decay=args["wd"] = 0.1). On CUDA
        # torch picks the foreach implementation by default (torch/optim/optimizer.py _default_to_fused_or_foreach:
        # foreach when every parameter is a CUDA tensor), on the CPU the per-tensor loop: ``foreach`` forces CUDA's.
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1,
                                foreach=True if foreach else None)
        g = torch.Generator().manual_seed(rank)
        ids = torch.randint(0, 32000, (1, SEQ), generator=g)
        peaks = []
        model.train()
        for s in range(STEPS):
            rec.mark(f"step {s} forward")
            with rec.phase():
                out = model(ids, labels=ids, attention_mask=None)
                loss = out.loss
            rec.mark(f"step {s} backward")
            with rec.phase():
                loss.backward()
                del out, loss
            rec.mark(f"step {s} optimizer")
            with rec.phase():
                opt.step()
            rec.mark(f"step {s} zero_grad")
            with rec.phase():
                opt.zero_grad()
        return {"steps": STEPS}

    return after_wrap


def replay_phases(events) -> list[tuple[str, int, int, int, int]]:
    """Per recorded phase: (name, allocated at its start, peak allocated, peak reserved, reserved at its end),
    the allocator model over the whole sequence (empty_cache at the load's mark, as fsdp_qlora_wrap.replay)."""
    from advisor.memory.allocator import CachingAllocator

    al = CachingAllocator()
    out = []
    name, start, pa, pr = "load+wrap", 0, 0, 0
    for op, key, n in events:
        key = tuple(key) if isinstance(key, list) else key
        if op == "a":
            al.malloc(key, n)
            pa, pr = max(pa, al.allocated), max(pr, al.reserved)
        elif op == "f":
            al.free(key)
        elif op == "mark":
            if key == "empty_cache":
                for addr, b in list(al._by_addr.items()):
                    if b.prev is None and b.next is None:
                        al._remove(b)
                        al.reserved -= b.size
                continue
            out.append((name, start, pa, pr, al.reserved))
            name, start, pa, pr = key, al.allocated, al.allocated, al.reserved
    out.append((name, start, pa, pr, al.reserved))
    return out


def optimizer_phases(events) -> list[tuple[str, int, int, int]]:
    """Per recorded optimizer phase: (name, allocations of 64 KiB or more, their bytes, the most of them alive at
    once), the parameter-sized tensors the step makes (states at the first step, then its temporaries)."""
    out, name, live, cur, peak, count, total = [], None, {}, 0, 0, 0, 0
    for op, key, n in [tuple(e) for e in events] + [("mark", "end", 0)]:
        key = tuple(key) if isinstance(key, list) else key
        if op == "mark":
            if name is not None and "optimizer" in str(name):
                out.append((name, count, total, peak))
            name, live, cur, peak, count, total = key, {}, 0, 0, 0, 0
        elif op == "a" and n >= 64 * 1024:
            live[key] = n
            cur += n
            peak, count, total = max(peak, cur), count + 1, total + n
        elif op == "f" and key in live:
            cur -= live.pop(key)
    return out


def split_pools(events, units) -> tuple[list, list, int]:
    """The recorded sequence split into the GPU's pools: (compute stream's, unshard stream's events, gloo
    transients dropped). An all-gather's destination is an allocation of a unit's padded unsharded size
    (``_full_param_padded``'s storage resized under the unshard stream) made while the step runs; the two more of
    that size that gloo allocates and frees right after it (ProcessGroupGloo's flattened all-gather output and
    its copy; NCCL gathers in place) are dropped; the lazy init's allocate-and-free of each unit's size
    (fsdp_lazy_init_events), made while no gather of that size is alive, stays in the compute pool."""
    fulls = {-(-sum(u) // 2) * 2 for u in units} - {0}
    events = [tuple(e) for e in events]
    compute, unshard, dropped = [], [], 0
    gathered: dict = {}           # key -> size, alive gathers
    where: dict = {}
    in_step = False
    for j, e in enumerate(events):
        op, key, n = e[0], tuple(e[1]) if isinstance(e[1], list) else e[1], e[2]
        if op == "mark":
            in_step = in_step or str(key).startswith("step")
            compute.append((op, key, n))
            continue
        if op == "a" and in_step and n in fulls:
            nxt = events[j + 1] if j + 1 < len(events) else None
            pair = nxt is not None and nxt[0] == "f" and (tuple(nxt[1]) if isinstance(nxt[1], list) else nxt[1]) == key
            if pair and n in gathered.values():
                where[key] = "drop"
                dropped += 1
                continue
            if pair:                # the lazy init's (fsdp_lazy_init_events): compute stream
                compute.append((op, key, n))
                continue
            gathered[key] = n
            where[key] = "u"
            unshard.append((op, key, n))
            continue
        if op == "f" and key in where:
            w = where.pop(key)
            gathered.pop(key, None)
            if w == "u":
                unshard.append((op, key, n))
            continue
        compute.append((op, key, n))
    return compute, unshard, dropped


def rate_limited(events, unshard) -> list:
    """The recorded unshard stream's sequence (``unshard``, from :func:`split_pools`) as a GPU would release it: a
    freed block is parked behind its record_stream event and reusable once the CPU has synchronized on a later free
    event -- at an all-gather that finds 2 or more free events queued (FSDP's rate limiter, ``_FreeEventQueue``) --
    or at the loop's synchronization between steps (``loss.item()``), taken at each step's start. The same rule as
    advisor.memory.allocator.fsdp_stream_events, applied to the real engine's order (gloo frees at once)."""
    order = [(e[0], tuple(e[1]) if isinstance(e[1], list) else e[1], e[2]) for e in unshard]
    seq, j = [], 0
    for e in events:
        key = tuple(e[1]) if isinstance(e[1], list) else e[1]
        if e[0] == "mark":
            if str(key).startswith("step") and str(key).endswith("forward"):
                seq.append(("sync", None, 0))
        elif j < len(order) and (e[0], key, e[2]) == order[j]:
            seq.append(order[j])
            j += 1
    out, parked, queue, t = [], [], [], 0
    for op, key, n in seq:
        if op == "sync":
            out += [("f", k, 0) for _, k in parked]
            parked = []
            continue
        t += 1
        if op == "a":
            if len(queue) >= 2:
                limit = queue.pop(0)
                out += [("f", k, 0) for tk, k in parked if tk <= limit]
                parked = [(tk, k) for tk, k in parked if tk > limit]
            out.append((op, key, n))
        else:
            parked.append((t, key))
            queue.append(t)
    return out + [("f", k, 0) for _, k in parked]


def dsadvise(layers: int, ckpt: str, model: str = "7b") -> dict:
    from advisor.api import estimate
    from advisor.catalog.models import resolve_model

    resolved = resolve_model(CATALOG[model])
    arch = resolved.architecture.model_copy(update={"num_layers": layers})
    resolved = resolved.model_copy(update={"architecture": arch})
    est = estimate(resolved, gpus=2, gpu="rtx-3090", strategy="fsdp-full", method="qlora", precision="pure-bf16",
                   seq_len=SEQ, micro_batch=1, checkpointing="full", lora_rank=64, lora_targets=tuple(TARGETS),
                   lora_dropout=0.1, loss="legacy-inline", torch_version="2.2", transformers_version="4.39")
    pg = est.per_gpu
    return {k: getattr(pg, k, None) for k in ("parameters", "gradients", "optimizer_states", "activations",
                                               "buffers", "allocated", "reserved", "total")}


pools: list = []


def after_wrap(layers: int, model: str = "7b"):
    """dsadvise's compute-stream pool right after the wrap for the same depth (fsdp_after_wrap)."""
    from benchmarks.fsdp_qlora_wrap import dsadvise_groups  # noqa: F401  (same settings)
    from advisor.api import build_hardware, build_strategy, build_training, estimate
    from advisor.catalog.models import resolve_model
    from advisor.memory.allocator import fsdp_after_wrap

    resolved = resolve_model(CATALOG[model])
    arch = resolved.architecture.model_copy(update={"num_layers": layers})
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    training = build_training(hw, seq_len=SEQ, micro_batch=1, precision="pure-bf16", method="qlora", lora_rank=64,
                              lora_targets=tuple(TARGETS), lora_dropout=0.1, checkpointing="full",
                              loss="legacy-inline", torch_version="2.2", transformers_version="4.39")
    strategy = build_strategy(hw, "fsdp-full", "none", "none", "auto")
    est = estimate(resolved.model_copy(update={"architecture": arch}), gpus=2, gpu="rtx-3090", strategy="fsdp-full",
                   method="qlora", precision="pure-bf16", seq_len=SEQ, micro_batch=1, checkpointing="full",
                   lora_rank=64, lora_targets=tuple(TARGETS), lora_dropout=0.1, loss="legacy-inline",
                   torch_version="2.2", transformers_version="4.39")
    return fsdp_after_wrap(arch, training, strategy, hw, est.per_gpu.parameters)


def _spy() -> None:
    """Record dsadvise's pool simulations (compute, unshard, post-backward) as estimate runs them."""
    import advisor.memory.allocator as A

    for name in ("_fsdp_default_pool_stats", "_unshard_pool_stats", "_fsdp_stream_stats"):
        f = getattr(A, name)

        def w(*a, _f=f, _n=name, **k):
            r = _f(*a, **k)
            for i, one in enumerate(r if isinstance(r, tuple) else (r,)):     # _fsdp_stream_stats: two pools
                label = {"_fsdp_stream_stats": ("unshard stream", "pre-unshard stream")}.get(_n, (_n,))[i]
                if k.get("loaded_at_wrap"):     # issue 17 (helper P): the PEFT < 0.12 order, simulated beside
                    label += " (QuantStates at the wrap)"
                pools.append((label, one.peak_allocated, one.peak_reserved))
            return r
        setattr(A, name, w)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        tag, _, model = sys.argv[3].partition("@")
        ckpt, _, opt = tag.partition("+")
        _worker(model or "7b", int(sys.argv[2]), "rank1", sys.argv[4], after_wrap=_step(ckpt, opt == "foreach"))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ckpt", default="reentrant", choices=["reentrant", "non-reentrant"])
    ap.add_argument("--model", default="7b", choices=sorted(CATALOG), help="Llama-2 shapes (fsdp_qlora_wrap.SHAPES)")
    ap.add_argument("--foreach", action="store_true",
                    help="AdamW's foreach implementation, CUDA's default (the CPU's is the per-tensor loop)")
    args = ap.parse_args()
    tag = args.ckpt + ("+foreach" if args.foreach else "") + ("" if args.model == "7b" else "@" + args.model)
    cache = os.environ.get("DSADVISE_WRAP_CACHE")
    _spy()
    for n in args.layers:
        f = Path(cache) / f"step-{args.model}-{n}-{tag.split('@')[0]}.json" if cache else None
        if f is not None and f.exists():
            recs = json.loads(f.read_text())
        else:
            recs = run_ranks(__file__, [str(n), tag], port=29651, timeout=3600, what="QLoRA step")
            if f is not None:
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps(recs))
        ev = recs[1]["events"]
        print(f"\n{n} layer(s), {args.ckpt} checkpointing: allocator model over rank 1's recorded sequence (MiB)")
        print(f"{'phase':<22}{'alloc start':>12}{'peak alloc':>12}{'peak resv':>12}{'resv end':>12}")
        for name, s, pa, pr, re in replay_phases(ev):
            print(f"{name:<22}" + "".join(f"{v / MIB:>12.1f}" for v in (s, pa, pr, re)))
        for name, count, total, peak in optimizer_phases(ev):
            print(f"  optimizer phases: {name}: {count} allocations >= 64 KiB, {total / MIB:.2f} MiB, "
                  f"{peak / MIB:.2f} MiB alive at once")
        compute, unshard, dropped = split_pools(ev, recs[1]["units"])
        rc, ru = replay_phases(compute), replay_phases(unshard)
        print(f"two pools (gloo's {dropped} extra all-gather buffers dropped): compute stream peak allocated "
              f"{max(r[2] for r in rc) / MIB:.1f}, reserved {max(r[3] for r in rc) / MIB:.1f}; unshard stream peak "
              f"allocated {max(r[2] for r in ru) / MIB:.1f}, reserved {max(r[3] for r in ru) / MIB:.1f}")
        from advisor.memory.allocator import simulate

        lim = simulate([(op, k, n) for op, k, n in rate_limited(ev, unshard)])
        print(f"  unshard stream in the recorded order with the GPU's rate-limited release (rate_limited): peak "
              f"allocated {lim.peak_allocated / MIB:.1f}, reserved {lim.peak_reserved / MIB:.1f}")
        for what, rows in (("compute stream", rc), ("unshard stream", ru)):
            print(f"  {what}: " + "; ".join(f"{nm} {pa / MIB:.1f}/{pr / MIB:.1f}" for nm, _, pa, pr, _ in rows[:5]))
        del pools[:]
        ds = dsadvise(n, args.ckpt, args.model)
        for name, a, r in pools[:5]:      # issue 17 (helper P): the compute pool in both QuantState orders
            print(f"  dsadvise {name}: peak allocated {a / MIB:.1f}, reserved {r / MIB:.1f}")
        aw = after_wrap(n, args.model)
        print(f"  dsadvise compute stream after the wrap (fsdp_after_wrap, NCCL order): allocated "
              f"{aw.peak_allocated / MIB:.1f}, reserved {aw.peak_reserved / MIB:.1f}")
        print("dsadvise per GPU (MiB): " + ", ".join(f"{k} {v / MIB:.1f}" for k, v in ds.items()
                                                   if isinstance(v, (int, float))))


if __name__ == "__main__":
    main()
