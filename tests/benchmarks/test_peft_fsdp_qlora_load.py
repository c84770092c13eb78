"""benchmarks/peft_fsdp_qlora_load.py: the PEFT docs' FSDP+QLoRA loading order against dsadvise's own sequence."""

import yaml

from benchmarks import peft_fsdp_qlora_load as L
from benchmarks.gpu_memory_corpus import CORPUS


def _kind(e) -> str | None:
    return e[1][0] if isinstance(e[1], tuple) else None


def _point(pid: str) -> dict:
    return {p["id"]: p for p in yaml.safe_load(CORPUS.read_text())["points"]}[pid]


def test_rebuilt_sequence_is_the_estimates_pool_and_the_stack_order_reallocates_each_quant_state():
    from advisor.memory.allocator import _fsdp_default_pool_stats, simulate

    a, k = L._pool_args(_point(L.ROWS[0]))
    ours, stack = L.sequences(a, k, a[7].hidden_size)
    # the benchmark's premise: its "dsadvise order" is the estimate's own compute-pool sequence
    assert simulate(ours).peak_reserved == _fsdp_default_pool_stats.__wrapped__.uncached(*a, **k).peak_reserved
    # Llama-2-70B: 80 layers x 7 quantized linears, each QuantState.to allocating absmax, offset, state2's absmax
    # and code (bitsandbytes 0.43) right before its packed weight comes to the GPU at the wrap
    qs = [e for e in stack if e[0] == "a" and _kind(e) == "qs"]
    assert len(qs) == 80 * 7 * 4
    first = stack.index(qs[0])
    assert _kind(stack[first + 4]) == "init" and stack[first + 4][1][1:3] == qs[0][1][1:3]
    # the root's embeddings and lm_head (32008 rows, bf16) are on the GPU before any unit is wrapped
    root = len(a[0]) - 1
    head = [e for e in stack[:3] if _kind(e) == "init" and e[1][1] == root]
    assert sorted(e[2] for e in head)[-2:] == [32008 * 8192 * 2] * 2
    # the QuantState bytes the stack re-allocates are the ones dsadvise loads up front (to 1 KiB per linear)
    loaded = sum(a[-1]) * 80
    assert abs(sum(e[2] for e in qs) - loaded) <= 80 * 7 * 1028
