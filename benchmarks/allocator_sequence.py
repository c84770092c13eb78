"""The real allocation/free sequence of training steps, run through dsadvise's allocator model.

Run: python benchmarks/allocator_sequence.py [--model llama-3.2-1b --layers 4 --hidden 512 --batch 2 --seq 256
     --steps 3 --loop accelerate] [--method lora --checkpointing full]   (the table: ~2 min on 2 cores)

What it separates: ``per_gpu.reserved`` comes from PyTorch's CUDA caching allocator simulated
(``advisor/memory/allocator.py``) over the allocation sequence dsadvise *builds* (its replay of the step). This
script records the sequence a real step *makes* — a transformers model built from the catalog config, on the
CPU under the harness's CUDA semantics (``benchmarks/harness/semantics.py``: CUDA autocast lists, fused dropout),
the profiler's memory timeline (each tensor storage's CREATE and DESTROY), plus the two cuBLAS workspaces a GPU
allocates where it does (32 MiB each, Hopper's; estimated for an H200) — and feeds it to the same simulator.
If the two reserved figures differ, the built sequence is wrong; if the recorded one's reserved differs from a
GPU's ``max_memory_reserved`` (docs/calibration.md), the allocator model is.

Loops (what the GPU runs of docs/calibration.md ran): ``accelerate`` = ``Accelerator(mixed_precision="bf16")``'s
``prepare`` (autocast around the forward and ``convert_outputs_to_fp32`` on its output: accelerate
utils/operations.py), the output held through ``optimizer.step()``; ``plain`` = autocast, only the loss kept.
AdamW with torch's default ``foreach`` (what a CUDA run gets; forced here because the CPU default is the
for-loop). The model states that exist before the first step are allocated first, in parameter order.
Printed: reserved (and allocated) of the recorded sequence vs dsadvise's ``per_gpu`` for the same settings,
and the large segments of each simulation.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2 ** 30


MARK_BYTES = 7_777_777     # an odd size no tensor of these runs has


def record_steps(cfg: dict, *, layers: int, batch: int, seq: int, method: str, steps: int, loop: str,
                 checkpointing: str = "none", lora_rank: int = 16,
                 workspace: int = 32 << 20, loss: str = "current") -> list[tuple[str, object, int]]:
    """The allocation sequence (``("a", key, bytes)`` / ``("f", key, 0)``) of ``steps`` real training steps:
    the tensors alive before the first one first (never freed), then every storage the steps create and
    destroy, in the profiler's order. ``loss``: ``current`` = the model's own (transformers >= 4.46
    ForCausalLMLoss: 16-bit logits held, upcast inside the loss, labels shifted); ``inline-4.37`` = what
    ``LlamaForCausalLM.forward`` of transformers 4.37 computed inline (src/transformers/models/llama/
    modeling_llama.py v4.37.2: ``logits = logits.float()``, which the output holds; ``shift_logits =
    logits[..., :-1, :].contiguous()``; ``CrossEntropyLoss()``), rebuilt here on the model's 16-bit logits."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    from benchmarks.harness.models import instantiate, make_config, sdpa_no_attn_dropout
    from benchmarks.harness.semantics import cuda_semantics

    config = make_config(cfg, "sdpa", layers, **sdpa_no_attn_dropout(cfg))
    full = method == "full"
    model = instantiate(config, "sdpa", torch.float32 if full else torch.bfloat16, 0)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=32, target_modules="all-linear",
                                                 lora_dropout=0.0))
    if checkpointing == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method == "lora":
            model.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    forward = model.forward
    if loop == "accelerate":
        from accelerate.utils import convert_outputs_to_fp32

        forward = convert_outputs_to_fp32(model.forward)    # what Accelerator.prepare_model installs
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    # Where a GPU allocates its two cuBLAS workspaces (advisor.memory.allocator.BLAS_WORKSPACE_KEYS): the
    # forward's first matmul and the output projection's backward. A marker allocation of an odd size is made
    # there in the first step and replaced by the workspace below; the CPU has no cuBLAS.
    marks: list = []

    def mark(*_):
        if len(marks) < 2:
            marks.append(len(marks))
            torch.empty(MARK_BYTES, dtype=torch.uint8)

    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_pre_hook(lambda *a: mark())
    head = model.get_output_embeddings()

    def on_logits(mod, inp, out):
        if out.requires_grad:
            out.register_hook(mark)

    head.register_forward_hook(on_logits)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if loss == "inline-4.37":
                logits = forward(input_ids=ids).logits.float()         # the output holds the fp32 logits
                shift = logits[..., :-1, :].contiguous()
                out = type("Out", (), {})()
                out.logits = logits
                out.loss = torch.nn.functional.cross_entropy(shift.view(-1, shift.size(-1)),
                                                             ids[..., 1:].contiguous().view(-1))
                del logits, shift
            else:
                out = forward(input_ids=ids, labels=ids)
        loss_t = out.loss
        if loop == "plain":
            del out
        loss_t.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss_t
        if loop in ("accelerate", "hold"):
            del out

    gc.collect()
    with cuda_semantics("autocast-bf16"):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            for _ in range(steps):
                step()
    events: list[tuple[str, object, int]] = []
    first: list[tuple[str, object, int]] = []
    alive: dict = {}
    for _, action, key_version, size in prof._memory_profile().timeline:
        key = key_version[0] if isinstance(key_version, tuple) else key_version
        if action == Action.PREEXISTING:
            first.append(("a", ("pre", key), size))
        elif action == Action.CREATE:
            if key in alive:                    # a storage id reused without a DESTROY seen: close the old one
                events.append(("f", alive.pop(key), 0))
            k = (key, len(events))
            alive[key] = k
            events.append(("a", k, size))
        elif action == Action.DESTROY:
            if key in alive:
                events.append(("f", alive.pop(key), 0))
    return first + with_workspaces(events, workspace)


def with_workspaces(events: list, workspace: int) -> list:
    """``events`` with the two marker allocations (see :func:`record_steps`) replaced by the cuBLAS workspaces:
    the forward's at its marker, the backward's after the next allocation (the matmul's output is allocated
    before cuBLAS takes its handle's workspace); both never freed."""
    from advisor.memory.allocator import BLAS_WORKSPACE_KEYS

    marker_keys = [k for op, k, n in events if op == "a" and n == MARK_BYTES]
    out: list = []
    pending = None
    for op, k, n in events:
        if k in marker_keys:
            if op == "a":
                i = marker_keys.index(k)
                if i == 0:
                    out.append(("a", BLAS_WORKSPACE_KEYS[0], workspace))
                elif i == 1:
                    pending = ("a", BLAS_WORKSPACE_KEYS[1], workspace)
            continue
        out.append((op, k, n))
        if pending is not None and op == "a":
            out.append(pending)
            pending = None
    return out


def dsadvise_estimate(cfg: dict, *, layers: int, batch: int, seq: int, method: str, checkpointing: str,
                      lora_rank: int, loss: str = "current"):
    from advisor.api import estimate
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config

    c = dict(cfg)
    c["num_hidden_layers"] = layers
    model = ResolvedModel(name="sequence", architecture=architecture_from_hf_config(c), source="config", note="")
    kw = dict(lora_rank=lora_rank) if method == "lora" else {}
    return estimate(model, gpu="h200", precision="bf16", seq_len=seq, micro_batch=batch, method=method,
                    checkpointing=checkpointing, loss="legacy-inline" if loss == "inline-4.37" else "plain", **kw)


def segments(events, min_mib: int = 100) -> list[int]:
    """Sizes (MiB) of the segments of at least ``min_mib`` a simulation of ``events`` cudaMallocs."""
    from advisor.memory.allocator import CachingAllocator

    al = CachingAllocator()
    sizes: list[int] = []
    orig = al._new_segment

    def seg(size, small):
        sizes.append(size)
        return orig(size, small)

    al._new_segment = seg
    for op, key, n in events:
        al.malloc(key, n) if op == "a" else al.free(key)
    return sorted((s >> 20 for s in sizes if s >= min_mib << 20), reverse=True)


TABLE = (("lora", "none"), ("lora", "full"), ("full", "none"), ("full", "full"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512, help="hidden size (the catalog's at 0); intermediate x4")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--method", choices=("full", "lora"), help="one case (default: the table of TABLE)")
    ap.add_argument("--checkpointing", choices=("none", "full"), default="none")
    ap.add_argument("--loop", choices=("accelerate", "plain", "hold"), default="accelerate",
                    help="hold: the model's output kept through optimizer.step, no fp32 copy (Answer.AI fsdp_qlora "
                         "train.py: 'output = None' after the step)")
    ap.add_argument("--loss", choices=("current", "inline-4.37"), default="current",
                    help="the recorded step's loss (see record_steps); dsadvise: --loss plain / legacy-inline")
    ap.add_argument("--compare-loss", action="store_true",
                    help="record each case with transformers' current loss and 4.37's inline loss and print "
                         "what the inline one adds, in fp32 N x V logit blocks (issue 17, Answer.AI rows)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lora-rank", type=int, default=16)
    a = ap.parse_args()
    from advisor.memory.allocator import simulate
    from benchmarks.harness.models import catalog_config

    cfg = catalog_config(a.model)
    if a.hidden:
        heads = max(a.hidden // 64, 1)
        cfg.update(hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_attention_heads=heads,
                   num_key_value_heads=max(heads // 4, 1), head_dim=64)
    print(f"{a.model} x{a.layers} layers, hidden {cfg['hidden_size']}, V {cfg['vocab_size']}, {a.batch}x{a.seq} "
          f"tokens, bf16, {a.loop} loop, {a.steps} steps (CPU, CUDA semantics); GiB")
    cases = [(a.method, a.checkpointing)] if a.method else TABLE
    if a.compare_loss:
        block = a.batch * a.seq * cfg["vocab_size"] * 4
        print(f"{'case':<22}{'loss':<13}{'rec alloc':>10}{'rec resv':>10}  added (fp32 logit blocks of "
              f"{block / 2**20:.1f} MiB)")
        for method, ckpt in cases:
            base = None
            for loss in ("current", "inline-4.37"):
                rec = simulate(record_steps(cfg, layers=a.layers, batch=a.batch, seq=a.seq, method=method,
                                            steps=a.steps, loop=a.loop, checkpointing=ckpt,
                                            lora_rank=a.lora_rank, loss=loss))
                added = "" if base is None else (f"  {(rec.peak_allocated - base.peak_allocated) / block:+.2f} "
                                                 f"allocated, {(rec.peak_reserved - base.peak_reserved) / block:+.2f}"
                                                 f" reserved")
                print(f"{method + (' + ckpt' if ckpt != 'none' else ''):<22}{loss:<13}"
                      f"{rec.peak_allocated / GIB:>10.3f}{rec.peak_reserved / GIB:>10.3f}{added}", flush=True)
                base = base or rec
        return
    print(f"{'case':<22}{'rec alloc':>10}{'est alloc':>10}{'err %':>7}{'rec resv':>10}{'est resv':>10}{'err %':>7}"
          f"  segments >= 100 MiB of the recorded sequence (MiB)")
    for method, ckpt in cases:
        events = record_steps(cfg, layers=a.layers, batch=a.batch, seq=a.seq, method=method, steps=a.steps,
                              loop=a.loop, checkpointing=ckpt, lora_rank=a.lora_rank, loss=a.loss)
        rec = simulate(events)
        est = dsadvise_estimate(cfg, layers=a.layers, batch=a.batch, seq=a.seq, method=method,
                                checkpointing=ckpt, lora_rank=a.lora_rank, loss=a.loss).per_gpu
        print(f"{method + (' + ckpt' if ckpt != 'none' else ''):<22}{rec.peak_allocated / GIB:>10.3f}"
              f"{est.allocated / GIB:>10.3f}{100 * (est.allocated / rec.peak_allocated - 1):>+7.1f}"
              f"{rec.peak_reserved / GIB:>10.3f}{est.reserved / GIB:>10.3f}"
              f"{100 * (est.reserved / rec.peak_reserved - 1):>+7.1f}  {segments(events)}", flush=True)


if __name__ == "__main__":
    main()
