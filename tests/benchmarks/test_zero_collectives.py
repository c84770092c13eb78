"""The ZeRO kind's CUDA semantics for gloo's collectives (``cuda_semantics_of_gloo_collectives``), in 2 real gloo
processes: the patched gather / reduce-scatter / coalesced all-reduce give the collectives' results, allocate
no temporaries of their own, and an input dropped after its collective returns is freed on the caller's thread
(recorded by the profiler before the next marker), as NCCL with the caching allocator's record_stream frees it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N = 1 << 20                  # elements of each test tensor (2 MiB in bf16)
REPEATS = 8                 # collectives whose dropped input must be freed on the caller's thread


def _worker(out: str) -> None:
    sys.path.insert(0, str(ROOT))
    from collections import Counter

    import torch
    import torch.distributed as dist

    from benchmarks.harness.kinds.zero import cuda_semantics_of_gloo_collectives
    from benchmarks.harness.profiling import MARK_BYTES, mark, profiled, raw_curve

    calls: Counter = Counter()
    cuda_semantics_of_gloo_collectives(calls)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    bf16 = torch.bfloat16
    res: dict = {}

    x = torch.full((N,), float(rank + 1), dtype=bf16)
    gathered = torch.empty(world * N, dtype=bf16)
    res["gather"] = dist.all_gather_into_tensor(gathered, x) is None and \
        [gathered[r * N:(r + 1) * N].unique().tolist() for r in range(world)]
    handle = dist.all_gather_into_tensor(torch.empty(world * N, dtype=bf16), x, async_op=True)
    res["async_wait"] = handle.wait()
    # ZeRO-1/2's all-gather of updated partitions: the input is this rank's own chunk of the output
    flat = torch.full((world * N,), -1.0, dtype=bf16)
    flat[rank * N:(rank + 1) * N] = rank + 1
    dist.all_gather_into_tensor(flat, flat[rank * N:(rank + 1) * N])
    res["gather_in_place"] = [flat[r * N:(r + 1) * N].unique().tolist() for r in range(world)]

    # ZeRO-3's reduce_scatter_coalesced: the output is this rank's chunk of the input
    buf = torch.arange(world * N, dtype=torch.float32).to(bf16) * 0 + (rank + 1)
    dist.reduce_scatter_tensor(buf.chunk(world)[rank], buf)
    res["scatter_in_place"] = buf.chunk(world)[rank].unique().tolist()
    out_t = torch.empty(N, dtype=bf16)
    dist.reduce_scatter_tensor(out_t, torch.full((world * N,), float(rank + 1), dtype=bf16))
    res["scatter"] = out_t.unique().tolist()
    ts = [torch.full((n,), float(rank + 1)) for n in (3, N)]
    dist.all_reduce_coalesced(ts)
    res["coalesced"] = [t.unique().tolist() for t in ts]

    # allocations inside each patched collective (the caller's buffers exist before): none
    a, b = torch.empty(world * N, dtype=bf16), torch.ones(N, dtype=bf16)
    with profiled() as prof:
        mark()
        dist.all_gather_into_tensor(a, b)
        dist.reduce_scatter_tensor(b, a)
        dist.all_reduce(a)
        mark()
    curve, marks = raw_curve(prof)
    res["allocated_inside"] = max(curve[marks[0] + 2:marks[1]] or [0]) - (curve[marks[0]] - MARK_BYTES)

    # an input dropped when its collective has returned is freed before the next marker, every time
    freed = 0
    for _ in range(REPEATS):
        with profiled() as prof:
            mark()
            g = torch.ones(N, dtype=bf16)
            dist.all_reduce(g)
            del g
            mark()
        curve, marks = raw_curve(prof)
        freed += curve[marks[1]] - MARK_BYTES == curve[marks[0]] - MARK_BYTES
    res["freed_on_return"] = freed
    res["calls"] = dict(calls)
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_patched_gloo_collectives_have_cuda_semantics():
    from benchmarks.harness.launch import run_ranks

    r = run_ranks(__file__, [], port=29731, timeout=300, what="gloo collectives test")
    assert r["gather"] == [[1.0], [2.0]]
    assert r["async_wait"] is True
    assert r["gather_in_place"] == [[1.0], [2.0]]
    assert r["scatter_in_place"] == [3.0] and r["scatter"] == [3.0]
    assert r["coalesced"] == [[3.0], [3.0]]
    assert r["allocated_inside"] == 0
    assert r["freed_on_return"] == REPEATS
    assert r["calls"]["gloo all_gather_single"] >= 4 and r["calls"]["gloo reduce_scatter_single"] == 3


if __name__ == "__main__":
    assert sys.argv[1] == "--worker"
    _worker(sys.argv[-1])
