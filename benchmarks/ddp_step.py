"""Whole-step peak of DDP training (2 CPU processes, gloo) against dsadvise's ``ddp`` estimate.

Usage::

    python benchmarks/ddp_step.py                 # the table of cases below (~20 s each)
    torchrun --nproc_per_node 2 benchmarks/ddp_step.py --worker ATTN SEQ VOCAB   # one case, JSON on rank 0

Each worker trains a small Llama (2 layers, untied, fp32, AdamW foreach) under
``torch.nn.parallel.DistributedDataParallel`` for two steps and records the profiler's peak of the second
one. DDP rebuilds its gradient buckets at the start of the second iteration, so the buckets are allocated
inside the profiled window: parameters + Adam states + the window's peak is the whole per-process peak.
Estimated = ``per_gpu.total - per_gpu.overhead`` for ``--strategy ddp`` on 2 GPUs.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import two_process  # noqa: E402

CASES = [("eager", 1024, 1000), ("sdpa", 512, 32000), ("sdpa", 64, 8000), ("eager", 512, 16000)]


def small_llama(vocab: int) -> dict:
    return dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                num_attention_heads=8, num_key_value_heads=8, vocab_size=vocab, tie_word_embeddings=False)


def estimated(attn: str, seq: int, vocab: int) -> tuple[int, str, int]:
    """(total - overhead, peak moment, phase overlap) of dsadvise's ddp estimate on 2 GPUs."""
    from advisor.api import estimate
    from advisor.catalog.models import ResolvedModel
    from advisor.hf_config import architecture_from_hf_config

    model = ResolvedModel(name="small-llama", architecture=architecture_from_hf_config(small_llama(vocab)),
                          source="config", note="")
    g = estimate(model, gpus=2, vram=80, seq_len=seq, precision="fp32", attention=attn, strategy="ddp").per_gpu
    return g.total - g.overhead, g.peak_moment, g.phase_overlap


def worker(attn: str, seq: int, vocab: int) -> None:
    import torch
    import torch.distributed as dist

    import measure
    from measure import _MARK_BYTES, _live_curve, _mark
    from torch.profiler import ProfilerActivity, profile

    dist.init_process_group("gloo")
    config = measure.make_config(small_llama(vocab), attn, 2)
    model = measure._instantiate(config, attn, torch.float32, 0)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-5, foreach=True)
    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(dist.get_rank()))

    def step() -> None:
        out = ddp(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()                      # the output stays alive through the step, as in accelerate's loop
        opt.zero_grad(set_to_none=True)
        del out

    with measure.cuda_semantics("fp32"):
        step()
        gc.collect()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            _mark()
            step()
            _mark()
    curve, marks = _live_curve(prof)
    base = curve[marks[0]] - _MARK_BYTES
    peak = max(curve[marks[0] + 2:marks[1]]) - base
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    states = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor) and t.dim() > 0)
    if dist.get_rank() == 0:
        two_process.report({"world": dist.get_world_size(), "measured": params + states + peak,
                            "params": params, "adam_states": states})
    dist.destroy_process_group()


def measure_case(attn: str, seq: int, vocab: int) -> dict:
    """Launch one 2-process case with torchrun; rank 0's measured bytes."""
    return two_process.launch(__file__, ["--worker", attn, str(seq), str(vocab)], port_base=29500, timeout=600)


def run_case(attn: str, seq: int, vocab: int, measured: dict | None = None) -> dict:
    """Measured (launched now unless given) and estimated bytes of one case, and the error."""
    r = dict(measured or measure_case(attn, seq, vocab))
    r["estimated"], r["moment"], r["overlap"] = estimated(attn, seq, vocab)
    r["error"] = (r["estimated"] - r["measured"]) / r["measured"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, metavar=("ATTN", "SEQ", "VOCAB"))
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), int(a.worker[2]))
        return 0
    print("| case | world | measured MiB | estimated MiB | error | peak moment | not alive together MiB |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for attn, seq, vocab in CASES:
        r = run_case(attn, seq, vocab)
        print(f"| small llama {attn} s={seq} V={vocab} | {r['world']} | {r['measured'] / 2**20:.1f} "
              f"| {r['estimated'] / 2**20:.1f} | {r['error'] * 100:+.2f}% | {r['moment']} "
              f"| {r['overlap'] / 2**20:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
