"""Whole-step peak of real DeepSpeed ZeRO training (2 CPU processes, gloo) against dsadvise's estimate.

Usage::

    python benchmarks/zero_step.py            # the table of cases below (~1 minute each)

Each case renders dsadvise's own ``ds_config.json`` for the configuration (``advisor.render.render_files``:
the bucket sizes the estimator counts), trains a small Llama (bf16, DeepSpeed's mixed precision: 16-bit
model, fp32 master partitions) for two steps under ``deepspeed.initialize`` with ``DS_ACCELERATOR=cpu``, and
records the bytes of every tensor storage alive before the second step (a ``gc`` scan: parameters and
partitions, master weights, optimizer states, persistent buffers) plus rank 0's allocator peak during the
second step (``torch.profiler(profile_memory=True)``). Measured = that sum.
Estimated = ``per_gpu.total - per_gpu.overhead`` (no CUDA context, no fragmentation on CPU).

The optimizer is an in-place chunked Adam (``ChunkedAdam`` below) standing in for DeepSpeed's FusedAdam,
which CPU cannot build: FusedAdam's multi_tensor_apply kernel updates in place with no step temporaries (as
the estimator assumes), while torch's AdamW on CPU would allocate partition-sized temporaries a GPU run
never sees.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import two_process  # noqa: E402

# stage, sequence length, vocabulary
CASES = [(1, 256, 8000), (2, 256, 8000), (3, 256, 8000), (2, 1024, 32000), (3, 1024, 32000)]


def small_llama(vocab: int) -> dict:
    return dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=8, vocab_size=vocab, tie_word_embeddings=False)


def plan(stage: int, seq: int, vocab: int):
    """(model, hardware, training, strategy) of a case, as dsadvise's API builds them."""
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config
    from advisor.specs import HardwareSpec, StrategySpec, TrainingSpec

    arch = architecture_from_hf_config(small_llama(vocab))
    model = ResolvedModel(name="small-llama", architecture=arch, source="config", note="")
    hw = HardwareSpec(gpus_per_node=2, nodes=1, vram_bytes=80 << 30)
    tr = TrainingSpec(seq_len=seq, micro_batch_size=1, precision="bf16", attention="sdpa")
    return model, hw, tr, StrategySpec(backend="deepspeed", zero_stage=stage)


def estimated(stage: int, seq: int, vocab: int) -> dict:
    from advisor.memory.core import estimate_memory

    g = estimate_memory(*plan(stage, seq, vocab)).per_gpu
    return {"estimated": g.total - g.overhead, "breakdown": {k: v for k, v in g.breakdown.items() if v}}


def ds_config(stage: int, seq: int, vocab: int) -> dict:
    """dsadvise's rendered ds_config.json for the case."""
    from advisor.render.render import render_files

    files = render_files(*plan(stage, seq, vocab), gradient_accumulation_steps=1)
    return json.loads(files["ds_config.json"])


def _chunked_adam():
    import torch

    class ChunkedAdam(torch.optim.Optimizer):
        """AdamW updating in place, 1M elements at a time: FusedAdam's memory behaviour (no step temporaries
        beyond a chunk)."""

        def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    st = self.state[p]
                    if not st:
                        st["step"] = 0
                        st["exp_avg"] = torch.zeros_like(p)
                        st["exp_avg_sq"] = torch.zeros_like(p)
                    st["step"] += 1
                    c1, c2 = 1 - b1 ** st["step"], 1 - b2 ** st["step"]
                    flat = [t.view(-1) for t in (p, p.grad, st["exp_avg"], st["exp_avg_sq"])]
                    for i in range(0, flat[0].numel(), 1 << 20):
                        w, g, m, v = (t[i:i + (1 << 20)] for t in flat)
                        w.mul_(1 - group["lr"] * group["weight_decay"])
                        m.lerp_(g, 1 - b1)
                        v.mul_(b2).addcmul_(g, g, value=1 - b2)
                        w.addcdiv_(m, (v / c2).sqrt_().add_(group["eps"]), value=-group["lr"] / c1)

    return ChunkedAdam


def _raw_curve(prof, mark_bytes: int) -> tuple[list[int], list[int]]:
    """Live-byte changes after each allocator event of the window (the profiler's raw ``[memory]`` events in
    time order; frees of older blocks count too), and the marker indices. The memory timeline's data-flow
    pass (``measure._live_curve``) trips on DeepSpeed's in-place partition ops."""
    mem = []
    for e in prof.profiler.kineto_results.events():
        try:
            if e.name() == "[memory]":
                mem.append((e.start_ns(), e.nbytes()))
        except UnicodeDecodeError:          # an op name kineto cannot decode: not an allocator event
            continue
    mem.sort(key=lambda x: x[0])
    live, curve, marks = 0, [], []
    for _, nbytes in mem:
        if nbytes == mark_bytes:
            marks.append(len(curve))
        live += nbytes
        curve.append(live)
    return curve, marks


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage Python can reach (parameters and their ZeRO partitions,
    master weights, optimizer states, gradient and bucket buffers): what exists before a profiled step."""
    import torch

    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except Exception:   # noqa: BLE001 - meta tensors, fakes: nothing allocated
            continue
    return sum(seen.values())


def worker(stage: int, seq: int, vocab: int, config_path: str) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig, AutoModelForCausalLM

    from measure import _MARK_BYTES, _mark

    config = json.loads(Path(config_path).read_text())
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(rank))
    hf = AutoConfig.for_model(**small_llama(vocab))
    hf._attn_implementation = "sdpa"
    if stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=config):
            model = AutoModelForCausalLM.from_config(hf)
    else:
        model = AutoModelForCausalLM.from_config(hf)
    opt = _chunked_adam()(model.parameters(), lr=1e-5)
    config = {**config, "zero_allow_untested_optimizer": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

    def step() -> None:
        out = engine(input_ids=ids, labels=ids)
        engine.backward(out.loss)
        engine.step()
        del out

    step()
    gc.collect()
    before = live_tensor_bytes()
    if rank != 0:                          # rank 0 is measured; the others only keep the collectives going
        step()
        engine.destroy()
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        _mark()
        step()
        _mark()
    curve, marks = _raw_curve(prof, _MARK_BYTES)
    base = curve[marks[0]] - _MARK_BYTES
    peak = before + max(curve[marks[0] + 2:marks[1]]) - base
    if rank == 0:
        two_process.report({"world": engine.world_size, "measured": peak, "before_step": before})
    engine.destroy()


def measure_case(stage: int, seq: int, vocab: int) -> dict:
    """Launch one 2-process case with torchrun; rank 0's measured bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "ds_config.json"
        cfg_path.write_text(json.dumps(ds_config(stage, seq, vocab)))
        return two_process.launch(__file__, ["--worker", str(stage), str(seq), str(vocab), str(cfg_path)],
                                  port_base=29600, timeout=900, env={"DS_ACCELERATOR": "cpu"})


def run_case(stage: int, seq: int, vocab: int, measured: dict | None = None) -> dict:
    """Measured (launched now unless given) and estimated bytes of one case, and the error."""
    r = dict(measured or measure_case(stage, seq, vocab))
    r.update(estimated(stage, seq, vocab))
    r["error"] = (r["estimated"] - r["measured"]) / r["measured"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, metavar=("STAGE", "SEQ", "VOCAB", "CONFIG"))
    ap.add_argument("--verbose", action="store_true", help="print the estimate's breakdown per case")
    a = ap.parse_args()
    if a.worker:
        worker(int(a.worker[0]), int(a.worker[1]), int(a.worker[2]), a.worker[3])
        return 0
    print("| case | world | measured MiB | estimated MiB | error |")
    print("|---|---:|---:|---:|---:|")
    for stage, seq, vocab in CASES:
        r = run_case(stage, seq, vocab)
        print(f"| small llama ZeRO-{stage} bf16 s={seq} V={vocab} | {r['world']} | {r['measured'] / 2**20:.1f} "
              f"| {r['estimated'] / 2**20:.1f} | {r['error'] * 100:+.2f}% |", flush=True)
        if a.verbose:
            for k, v in sorted(r["breakdown"].items(), key=lambda kv: -abs(kv[1])):
                print(f"    {k:<60}{v / 2**20:10.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
