"""The PEFT docs' FSDP+QLoRA run (examples/sft at PEFT 6008f272) replicated on the CPU stand-in, step by step.

Run: python benchmarks/peft_fsdp_qlora_step.py [--variants peft aai ...] [--layers 2 3]     (~1 min per run)

The stack of the corpus rows peft-docs-llama-2-70b-qlora-fsdp-offload-2x24g / -fsdp-2gpus, from its own sources,
in two gloo processes (the CPU standing for the GPU; bitsandbytes 0.50.2 quantizes there), with OLD libraries in
``$DSADVISE_PEFT_SITE`` (default /work/site-P: ``pip install --no-deps --target /work/site-P transformers==4.39.0
accelerate==0.28.0``, PEFT src/peft at 6008f272 and TRL trl/ at 4fe8b027f (main of 2024-03-13) copied there from
their repositories) ahead of the venv's:

* load (transformers 4.39.0 modeling_utils ``_load_state_dict_into_meta_model``): a quantized model loads on EVERY
  rank (``_load_pretrained_model``: the rank>0 shortcut is ``... and not is_quantized``); each Linear4bit's bf16
  weight is quantized on the device and its packed data moved to the CPU (``param_to = "cpu"``, no meta in 4.39.0);
  the embeddings, norms and lm_head go to the device (the bnb quantizer's ``update_device_map``: the current
  device). Here: the same placements, the device being the CPU, random weights;
* ``resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)`` (examples/sft/utils.py: ChatML tokens,
  32000 -> 32008);
* TRL SFTTrainer (trl/trainer/sft_trainer.py at 4fe8b027f): ``is_sharded_qlora`` (a Params4bit's data on the
  CPU) -> no prepare_model_for_kbit_training, ``enable_input_require_grads()`` (gradient checkpointing, reentrant),
  ``get_peft_model`` (LoRA r8 alpha16 dropout 0.1 all-linear; PEFT's update_layer ``self.to(weight.device,
  dtype=weight.dtype)``: bf16 adapters, the QuantStates follow the packed data to the CPU);
* Trainer 4.39 ``_inner_training_loop``: ``gradient_checkpointing_enable({"use_reentrant": True})`` (HF's
  checkpoint around each decoder layer's ``__call__``, i.e. OUTSIDE its FSDP unit), ``_fsdp_qlora_plugin_updates``
  (PEFT ``fsdp_auto_wrap_policy``, ``MixedPrecision`` bf16 for param/reduce/buffer), accelerate 0.28
  ``prepare_model``: ``FSDP(FULL_SHARD, use_orig_params=False, sync_module_states=True, limit_all_gathers=True,
  backward_prefetch=BACKWARD_PRE, device_id)`` (no CPUOffload on the CPU stand-in), forward under autocast bf16
  (accelerate ``autocast`` + ``convert_outputs_to_fp32``);
* two micro-batches (gradient_accumulation_steps 2: the first under ``no_sync``), each ``model(input_ids,
  labels)`` -> ``loss / 2`` -> ``backward``; then ``clip_grad_norm_(1.0)``, AdamW step, zero_grad.

``aai`` is Answer.AI's train.py step on the same model (benchmarks/fsdp_qlora_step.py: checkpoint_wrapper inside
each decoder-layer unit, no autocast, no MixedPrecision, one micro-batch), for a difference of stacks measured in
one harness; ``peft-1mb``, ``peft-noamp``, ``peft-wrapper`` change one of the three. Every allocation of rank 1 is
recorded (the profiler's events: benchmarks/fsdp_qlora_wrap._Recorder) per phase; printed: the live bytes at the
start and the peak of each phase (gloo's extra all-gather copies included: an upper bound of the GPU's), their
growth per decoder layer between two depths, and dsadvise's estimate of the same settings on the same model.
Shapes: ``small`` (hidden 1024, 2 x 1024 tokens, ~3 min per run on 2 busy cores), ``wide`` (hidden 2048, a
1024-token vocabulary so that a decoder layer's backward, not the loss, makes the peak; 2 x 2048 tokens) and
``70b`` (Llama-2-70B's layer and vocabulary at 1 x 256 tokens: its weight-sized terms; 1 layer ran in ~10 min,
2 layers need more than the ~18 GiB of RAM this machine had free).
``DSADVISE_WRAP_CACHE`` (a folder) keeps the records.

Found (issue 17; every run under benchmarks.harness.semantics.cuda_semantics; MiB):
* small, 2 / 3 layers: the PEFT docs' stack and Answer.AI's step hold the same bytes: step peak 967.7 / 975.8
  (peft) vs 969.1 / 977.0 (aai), at the loss; live at the start of backward 463.1 / 471.0 vs 462.5 / 470.1; per
  decoder layer 8.1 MiB (one checkpointed bf16 hidden state, 4 MiB, plus the layer's shard, QuantState and rotary
  caches). HF's reentrant checkpoint around the FSDP unit, autocast + MixedPrecision(bf16) and the no_sync
  micro-batch add nothing (peft-wrapper 969.8 / 978.0, peft-noamp 967.7 / 975.8, peft-1mb 974.5 / 975.0, recorded
  before the semantics patch, which moves these peaks by < 0.2 MiB). dsadvise: 1228.3 / 1238.2 MiB of tensors
  (allocated 1245.3 / 1256.1), 9.9 per layer.
* wide, 2 layers (the peak in a decoder layer's backward): 808.3 recorded (860.4 without the patch: CPU dropout
  saves a bf16 noise tensor where CUDA saves a bool mask) vs dsadvise's 834.9 of tensors (allocated 852.7).
* 70b, 1 layer, 1 x 256 tokens (every weight-sized term at full size: the 1000 MiB root, the 408 MiB layer
  unit, the 448 MiB dequantized MLP weight): live at the step's start 720.4 (dsadvise's parameters 719.6), step
  peak 2735.6 vs dsadvise's 3197.7 of tensors (allocated 3240.5).
So the step of this stack is not where the two corpus rows' 4.4-5.1 GiB are (docs/memory-model.md, the PEFT docs
FSDP+QLoRA paragraph; benchmarks/peft_fsdp_qlora_load.py for the loading order).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fsdp_qlora_wrap import SHAPES as _AAI_SHAPES  # noqa: E402
from benchmarks.harness.launch import run_ranks  # noqa: E402

MIB = 2 ** 20
SITE = os.environ.get("DSADVISE_PEFT_SITE", "/work/site-P")
BNB = os.environ.get("DSADVISE_BNB_PATH", "/work/litgpt-site")
# A small Llama with Llama-2-70B's ratios (GQA 8:1, intermediate 3.5 x hidden) and its vocabulary.
SHAPES = {
    "small": dict(hidden_size=1024, intermediate_size=3584, num_attention_heads=16, num_key_value_heads=2,
                  vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
    # a small vocabulary: the loss's bytes out of the way of a decoder layer's backward
    "wide": dict(hidden_size=2048, intermediate_size=7168, num_attention_heads=16, num_key_value_heads=2,
                 vocab_size=1024, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "70b": _AAI_SHAPES["70b"],       # meta-llama/Llama-2-70b-hf config.json (one copy: fsdp_qlora_wrap.py)
}
RESIZED = {"small": 32008, "wide": 1032, "70b": 32008}     # resize_token_embeddings(..., pad_to_multiple_of=8)
RUN = {"small": dict(seq=1024, batch=2, steps=2), "wide": dict(seq=2048, batch=2, steps=1),
       "70b": dict(seq=256, batch=1, steps=1)}
VARIANTS = {
    # name: (HF checkpoint outside the unit, autocast + MixedPrecision bf16, micro-batches)
    "peft": dict(hf_ckpt=True, autocast=True, micro=2),
    "peft-1mb": dict(hf_ckpt=True, autocast=True, micro=1),
    "peft-noamp": dict(hf_ckpt=True, autocast=False, micro=2),
    "peft-wrapper": dict(hf_ckpt=False, autocast=True, micro=2),
    "aai": dict(hf_ckpt=False, autocast=False, micro=1),
}


def _worker(variant: str, shape: str, layers: int, out_path: str) -> None:
    sys.path[:0] = [SITE, BNB]
    import functools

    import torch
    import torch.distributed as dist
    import torch.distributed.fsdp._init_utils as init_utils
    from accelerate import init_empty_weights
    from bitsandbytes.nn import Linear4bit, Params4bit
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import BackwardPrefetch, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import LlamaConfig, LlamaForCausalLM
    import bitsandbytes
    import transformers.integrations.bitsandbytes as hf_bnb
    from transformers.pytorch_utils import Conv1D
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.utils.quantization_config import BitsAndBytesConfig

    from benchmarks.fsdp_qlora_wrap import _Recorder, _layer_of

    v = VARIANTS[variant]
    SHAPE, run = SHAPES[shape], RUN[shape]
    SEQ, BATCH = run["seq"], run["batch"]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    init_utils._check_module_states_for_sync_module_states = lambda states: None     # gloo: CPU tensors
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=layers, use_cache=False, torch_dtype=torch.bfloat16,
                      attn_implementation="sdpa", **SHAPE)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                             bnb_4bit_use_double_quant=True, bnb_4bit_quant_storage=torch.bfloat16)
    torch.set_default_dtype(torch.bfloat16)            # from_pretrained(torch_dtype=bf16)
    with init_empty_weights():
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    # 4.39 imports these only where is_bitsandbytes_available(), i.e. with CUDA
    hf_bnb.bnb, hf_bnb.torch, hf_bnb.nn, hf_bnb.Conv1D = bitsandbytes, torch, torch.nn, Conv1D
    model = hf_bnb.replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=bnb)
    rec = _Recorder()
    names = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    with rec.phase():
        for name, shp in sorted(names):                       # safetensors: each shard's keys sorted
            rec.layer(_layer_of(name))
            mod_name, _, attr = name.rpartition(".")
            sub = model.get_submodule(mod_name)
            old = getattr(sub, attr)
            if isinstance(old, Params4bit):
                w = torch.empty(shp, dtype=torch.bfloat16).normal_(0, 0.02)
                new = Params4bit(w, requires_grad=False, **old.__dict__)._quantize("cpu")
                new = type(new)(new.data.to("cpu"), **new.__dict__)
            else:
                new = torch.nn.Parameter(torch.empty(shp, dtype=torch.bfloat16).normal_(0, 0.02),
                                         requires_grad=old.requires_grad)
            setattr(sub, attr, new)
            w = new = None
        model.resize_token_embeddings(RESIZED[shape], pad_to_multiple_of=8)
    model.config.use_cache = False
    # TRL SFTTrainer (is_sharded_qlora: no prepare_model_for_kbit_training) and PEFT
    if v["hf_ckpt"]:
        model.enable_input_require_grads()
    lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, bias="none", task_type="CAUSAL_LM",
                      target_modules="all-linear")
    model = get_peft_model(model, lcfg)
    if v["hf_ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    layer_of = {id(m): _layer_of(n) for n, m in model.named_modules()}
    mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16,
                        buffer_dtype=torch.bfloat16) if v["autocast"] else None
    with rec.phase():
        model = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=fsdp_auto_wrap_policy(
            model), mixed_precision=mp, sync_module_states=True, backward_prefetch=BackwardPrefetch.BACKWARD_PRE,
            forward_prefetch=False, use_orig_params=False, limit_all_gathers=True, device_id=torch.device("cpu"))
    if not v["hf_ckpt"]:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                                 apply_activation_checkpointing,
                                                                                 checkpoint_wrapper)
        model.enable_input_require_grads() if hasattr(model, "enable_input_require_grads") else \
            model.module.enable_input_require_grads()
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=functools.partial(
            checkpoint_wrapper, checkpoint_impl=CheckpointImpl.REENTRANT),
            check_fn=lambda m: isinstance(m, LlamaDecoderLayer))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(rank)
    model.train()
    # CUDA's dropout (a bool mask, a one-allocation backward) and autocast op lists on the CPU stand-in
    from benchmarks.harness.semantics import cuda_semantics

    sem = cuda_semantics("autocast-bf16" if v["autocast"] else "half-bf16")
    sem.__enter__()
    for step in range(run["steps"]):
        for mb in range(v["micro"]):
            ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ), generator=g)
            sync = mb == v["micro"] - 1
            ctx = model.no_sync() if not sync else __import__("contextlib").nullcontext()
            with ctx:
                rec.mark(f"s{step} mb{mb} forward")
                with rec.phase():
                    amp = torch.autocast("cpu", dtype=torch.bfloat16) if v["autocast"] else \
                        __import__("contextlib").nullcontext()
                    with amp:     # accelerate 0.28 prepare_model: autocast around the forward
                        out = model(input_ids=ids, labels=ids)
                    loss = out.loss.float() / v["micro"]
                    del out
                rec.mark(f"s{step} mb{mb} backward")
                with rec.phase():
                    loss.backward()
                    del loss
        rec.mark(f"s{step} optimizer")
        with rec.phase():
            model.clip_grad_norm_(1.0)
            opt.step()
            opt.zero_grad()
    sem.__exit__(None, None, None)
    res = {"rank": rank, "events": rec.events if rank == 1 else None, "variant": variant, "layers": layers}
    Path(f"{out_path}.{rank}").write_text(json.dumps(res))
    dist.barrier()
    if rank == 0:
        Path(out_path).write_text(json.dumps([json.loads(Path(f"{out_path}.{r}").read_text()) for r in range(2)]))
    dist.barrier()
    dist.destroy_process_group()


def phase_peaks(events) -> list[tuple[str, int, int]]:
    """Per recorded phase: (name, live bytes at its start, peak live bytes in it), live = recorded allocations
    not yet freed (the load's transients included: nothing here empties a cache)."""
    out, name, live, start, peak = [], "load+wrap", 0, 0, 0
    sizes = {}
    for op, key, n in events:
        key = tuple(key) if isinstance(key, list) else key
        if op == "a":
            sizes[key] = n
            live += n
            peak = max(peak, live)
        elif op == "f":
            live -= sizes.pop(key)
        elif op == "mark":
            out.append((name, start, peak))
            name, start, peak = key, live, live
    out.append((name, start, peak))
    return out


def dsadvise(shape: str, layers: int) -> dict:
    """dsadvise for the replicated settings on the same model (a config.json of the shape, 32008 rows): the tensor
    bytes of its breakdown (the peak's items, without context, workspaces, allocator and NCCL) and
    max_memory_allocated per GPU (bytes)."""
    import tempfile

    from advisor.api import estimate

    sh, run = SHAPES[shape], RUN[shape]
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=layers, hidden_act="silu",
               tie_word_embeddings=False, torch_dtype="bfloat16", **{**sh, "vocab_size": RESIZED[shape]})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(json.dumps(cfg))
        est = estimate(str(path), gpus=2, gpu="a100-80g", strategy="fsdp-full", method="qlora", precision="bf16",
                       micro_batch=run["batch"], seq_len=run["seq"], global_batch=4 * run["batch"],
                       checkpointing="full", attention="sdpa", lora_rank=8, lora_targets=("all-linear",),
                       lora_dropout=0.1, loss="legacy-inline", double_quant=True, torch_version="2.2",
                       transformers_version="4.39")
    pg = est.per_gpu
    device = ("CUDA context", "cuBLAS", "allocator:", "NCCL")        # not tensors of the step
    tensors = sum(v for k, v in pg.breakdown.items() if not k.startswith(device))
    return {"tensors at the peak": tensors, "allocated": pg.allocated}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["peft", "aai"], choices=sorted(VARIANTS))
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--shape", default="small", choices=sorted(SHAPES))
    args = ap.parse_args()
    cache = os.environ.get("DSADVISE_WRAP_CACHE")
    res = {}
    for var in args.variants:
        for n in args.layers:
            f = Path(cache) / f"peft-step-{args.shape}-{var}-{n}.json" if cache else None
            if f is not None and f.exists():
                recs = json.loads(f.read_text())
            else:
                recs = run_ranks(__file__, [var, args.shape, str(n)], port=29661, timeout=1800, what="PEFT QLoRA step")
                if f is not None:
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(json.dumps(recs))
            res[(var, n)] = phase_peaks(recs[1]["events"])
    for var in args.variants:
        print(f"\n{var} ({VARIANTS[var]}): rank 1's live bytes (MiB), start / peak of each phase")
        for n in args.layers:
            print(f"  {n} layers: " + "; ".join(f"{nm} {s / MIB:.1f}/{p / MIB:.1f}" for nm, s, p in res[(var, n)]))
        if len(args.layers) >= 2:
            a, b = args.layers[:2]
            pa = max(p for _, _, p in res[(var, a)][1:])
            pb = max(p for _, _, p in res[(var, b)][1:])
            print(f"  step peak {pa / MIB:.1f} -> {pb / MIB:.1f} MiB: {(pb - pa) / (b - a) / MIB:.2f} MiB per layer")
    print("\ndsadvise, same settings and model (fsdp-full over 2, QLoRA r8 all-linear, dropout 0.1, bf16, sdpa, "
          "GAS 2, legacy-inline loss, --torch-version 2.2 --transformers-version 4.39), MiB:")
    ds = {n: dsadvise(args.shape, n) for n in args.layers}
    for n in args.layers:
        print(f"  {n} layers: " + ", ".join(f"{k} {v / MIB:.1f}" for k, v in ds[n].items()))
    if len(args.layers) >= 2:
        a, b = args.layers[:2]
        print("  per layer: " + ", ".join(f"{k} {(ds[b][k] - ds[a][k]) / (b - a) / MIB:.2f}" for k in ds[a]))


if __name__ == "__main__":
    main()
