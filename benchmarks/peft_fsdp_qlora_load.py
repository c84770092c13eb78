"""Does the loading order of the PEFT docs' FSDP+QLoRA stack change the reserved bytes dsadvise simulates?

Run: python benchmarks/peft_fsdp_qlora_load.py [corpus point ids]      (~5 s; default: the two PEFT FSDP rows)

dsadvise's FSDP (v1) compute-stream pool (advisor.memory.allocator ``_fsdp_default_pool_stats``) starts from what
loading left on the GPU: every layer's bitsandbytes QuantState tensors (``loaded_events``), then the wrap
(``fsdp_init_events``: each unit's tensors come to the GPU whole, broadcast, flatten, shard), then the step. The
stack of the corpus rows peft-docs-llama-2-70b-qlora-fsdp-* (PEFT 6008f272, transformers 4.39.0, accelerate 0.28,
TRL of 2024-03-13, bitsandbytes 0.43) orders that differently, read from its sources:

* transformers 4.39.0 ``modeling_utils._load_state_dict_into_meta_model``: a quantized model loads on every rank;
  each Linear4bit is quantized on the GPU (``Params4bit.cuda`` -> ``quantize_4bit``: the QuantState's absmax,
  offset, state2 there) and its packed data moved to the CPU (``value.data.to("cpu")``); the non-quantized
  tensors (embed_tokens, the norms, lm_head) go to the GPU (``set_module_tensor_to_device`` with the bnb
  quantizer's device_map ``{"": torch.cuda.current_device()}``) and stay there until the root unit is wrapped;
* examples/sft/utils.py ``resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)``: 32008 rows (ChatML
  tokens), the new embedding and lm_head allocated on the GPU next to the old ones;
* PEFT (src/peft/tuners/lora/layer.py ``update_layer``: ``self.to(weight.device, dtype=weight.dtype)``, the
  weight's device being the CPU) moves every adapted Linear4bit's QuantState to the CPU (bitsandbytes 0.43
  ``Params4bit.to`` -> ``QuantState.to``: absmax, offset, state2.absmax, state2.code; the NF4 code stays);
* Trainer 4.39 ``_inner_training_loop`` starts with ``accelerator.free_memory()`` (accelerate 0.28
  ``release_memory``: ``torch.cuda.empty_cache()``): the loading's free segments are released;
* FSDP's ``_move_module_to_device`` (torch 2.2 ``_init_param_handle_from_module``) moves each unit's CPU
  parameters to the GPU with ``tensor.to(device)``: ``Params4bit.to`` moves its QuantState back first, then the
  packed data, so the QuantStates are allocated unit by unit, interleaved with the wrap's transients.

Printed per point: the compute pool's reserved peak for dsadvise's sequence and for the same sequence in the
stack's order (the root's embeddings and lm_head from loading, at 32008 rows; the QuantStates re-allocated
linear by linear at their unit's wrap, bitsandbytes 0.43 sizes: absmax n/64 B, offset 4 B, state2.absmax
n/4096 B, state2.code 1 KiB). Found (before dsadvise modelled the move): +0.22 / +0.21 GiB on the two rows.
dsadvise now brings each layer's QuantStates back at its unit's wrap under PEFT < 0.12 (advisor.stacks
``quant_states_moved_at_wrap``; allocator ``fsdp_init_events(loaded_per_layer=...)``, the unit's QuantStates
ahead of its tensors), the "dsadvise order" here; what remains is the resized embeddings and the per-linear
interleaving. Either way the loading phase explains a few per cent of the rows' gap at most (see
benchmarks/peft_fsdp_qlora_step.py for the step).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2 ** 30
ROWS = ("peft-docs-llama-2-70b-qlora-fsdp-offload-2x24g", "peft-docs-llama-2-70b-qlora-fsdp-2gpus")
VOCAB_RESIZED = 32008


def _pool_args(point: dict):
    """The positional and keyword arguments the estimate passes to the compute pool's simulation."""
    import advisor.memory.allocator as A
    from advisor.api import estimate
    from benchmarks.gpu_memory_corpus import kwargs

    seen: list = []
    orig = A._fsdp_default_pool_stats

    def spy(*a, **k):
        seen.append((a, k))
        return orig(*a, **k)

    A._fsdp_default_pool_stats = spy
    try:
        estimate(**kwargs(point))
    finally:
        A._fsdp_default_pool_stats = orig
    # the order with the QuantStates brought back at the wrap (PEFT < 0.12), where the estimate simulated it
    return next((c for c in seen if c[1].get("loaded_at_wrap")), seen[0])


def _quant_state_to(n: int) -> list[int]:
    """Bytes of the tensors ``QuantState.to(device)`` allocates for an ``n``-element NF4 weight with nested
    quantization (bitsandbytes 0.43 functional.py QuantState.to: absmax, offset, state2.absmax, state2.code)."""
    return [n // 64, 4, n // 4096, 1024]


def sequences(a: tuple, k: dict, hidden: int) -> tuple[list, list]:
    """(dsadvise's compute-pool events, the same in the PEFT stack's order) for the pool arguments ``a``/``k``."""
    import advisor.memory.allocator as A

    init, world, sync, offload, outside, per_layer, layers, arch, tt, mode, ckpt, dyn, held_fp32, ws, loaded = a
    ub, cb = k.get("unit_buffers", ()), k.get("cast_buffers", ())

    def rest() -> list:
        ev = [e for u, bufs in enumerate(cb) for i, n in enumerate(bufs) for e in (("a", ("B16", u, i), n),
                                                                                   ("f", ("B", u, i), 0))]
        ev += [("a", ("Q", i), n) for i, n in enumerate(outside)]
        ev += [("a", ("Q", l, i), n) for l in range(layers) for i, n in enumerate(per_layer)]
        ev += A.fsdp_lazy_init_events([list(u) for u in init], world)
        segs, leftovers, held = A._activation_segments(arch, tt, mode, ckpt, layers)
        return ev + A.churn_events(segs, leftovers, held, layers, dyn, held_fp32=held_fp32, blas_workspace=ws)

    if k.get("loaded_at_wrap"):    # dsadvise's order under PEFT < 0.12: each layer's QuantStates ahead of its unit
        ours = A.fsdp_init_events([list(u) for u in init], world, sync, offload, ub, loaded_per_layer=loaded,
                                  layers=layers) + rest()
    else:
        ours = A.loaded_events(loaded, layers) + A.fsdp_init_events([list(u) for u in init], world, sync, offload,
                                                                    ub) + rest()
    # the stack's order: the root (wrapped last) holds the resized embeddings and lm_head, on the GPU from loading
    root = len(init) - 1
    emb = VOCAB_RESIZED * hidden * 2
    units = [list(u) for u in init]
    units[root] = [emb if n == max(init[root]) else n for n in init[root]]
    wrap = A.fsdp_init_events(units, world, sync, offload, ub)
    pre = [e for e in wrap if e[0] == "a" and e[1][0] == "init" and e[1][1] == root]
    wrap = [e for e in wrap if e not in pre]
    # a decoder layer's unit: its quantized linears' packed data (n / 2 bytes each in bf16 storage), then norms
    layer_units = {u for u, t in enumerate(init) if len(t) > 2}
    out = []
    for e in wrap:
        if e[0] == "a" and e[1][0] == "init" and e[1][1] in layer_units:
            n = init[e[1][1]][e[1][2]] * 2                   # the weight's elements (4 bits each)
            if n >= 64 * 1024:                                # a quantized linear, not a norm
                out += [("a", ("qs", e[1][1], e[1][2], j), b) for j, b in enumerate(_quant_state_to(n))]
        out.append(e)
    return ours, pre + out + rest()


def main() -> None:
    os.environ.setdefault("DSADVISE_CACHE_DIR", "off")
    import yaml

    from advisor.memory.allocator import _fsdp_default_pool_stats, simulate

    ap = argparse.ArgumentParser()
    ap.add_argument("points", nargs="*", default=list(ROWS))
    args = ap.parse_args()
    corpus = {p["id"]: p for p in yaml.safe_load(
        (Path(__file__).with_name("gpu_memory_corpus.yaml")).read_text())["points"]}
    print(f"{'point':<52}{'dsadvise order':>16}{'stack order':>14}{'diff':>9}   (compute pool reserved, GiB)")
    for pid in args.points:
        a, k = _pool_args(corpus[pid])
        ours, stack = sequences(a, k, a[7].hidden_size)
        r0, r1 = simulate(ours).peak_reserved, simulate(stack).peak_reserved
        # the first is the estimate's own pool, rebuilt here: the same bytes
        assert r0 == _fsdp_default_pool_stats.__wrapped__.uncached(*a, **k).peak_reserved, "sequence drifted" 
        print(f"{pid:<52}{r0 / GIB:>16.3f}{r1 / GIB:>14.3f}{(r1 - r0) / GIB:>+9.3f}")


if __name__ == "__main__":
    main()
