"""ZeRO-3's gathered parameters: dsadvise's replay of DeepSpeed's coordinator (advisor/memory/zero3_gather.py)
on hand-built traces whose peak follows from the rules by hand, and against the bytes a real engine gathered."""

from __future__ import annotations

import pytest

from advisor.api import estimate
from advisor.hf_config import architecture_from_hf_config
from advisor.memory.zero3_gather import gathered_peak, gathered_peaks, gathered_pool, module_trace
from advisor.memory.zero_sizes import DeepSpeedSizes
from advisor.specs import LoraSpec, TrainingSpec

GATHERED = "ZeRO-3 gathered parameters (module + prefetch)"
POOL = "ZeRO-3 all-gather stream: cached free blocks (reserved - allocated)"


def _sizes(prefetch: int, max_live: int, reuse: int, persistence: int = 0) -> DeepSpeedSizes:
    return DeepSpeedSizes(1000, 1000, prefetch, max_live, persistence, 10 ** 9, True, reuse)


def test_no_prefetch_no_reuse_holds_one_module_at_a_time():
    # three modules of 100, 300 and 200 elements, each used once, then the "embedding" (never released in the
    # backward: the last module); world 1, 2-byte elements: the largest module, 600 bytes
    numel = [100, 300, 200, 50]
    trace = [[0], [1], [2], [3]]
    assert gathered_peak(numel, trace, _sizes(prefetch=0, max_live=10 ** 9, reuse=0), 1, 2) == 600


def test_prefetch_overshoots_the_bucket_by_one_whole_parameter():
    # at module 0's fetch the prefetch loop takes module 1's 300 elements although the bucket is 10: both gathered
    numel = [100, 300, 200, 50]
    trace = [[0], [1], [2], [3]]
    peak = gathered_peak(numel, trace, _sizes(prefetch=10, max_live=10 ** 9, reuse=0), 1, 2)
    assert peak == (300 + 200) * 2      # module 1 in use while module 2 is prefetched (module 0 released by then)


def test_coalesced_gather_keeps_its_flat_buffer_beside_the_copies():
    # module 0's fetch prefetches parameters 1 and 2 in one call (bucket 50: 1 has 20 elements, below it, so 2's
    # 100 join); module 1's wait copies both out of the flat buffer, which lives until parameter 2's module has
    # waited too; module 1's prefetch then gathers parameter 3 (5) on top
    numel = [10, 20, 100, 5]
    trace = [[0], [1], [2], [3]]
    peak = gathered_peak(numel, trace, _sizes(prefetch=50, max_live=10 ** 9, reuse=0), 1, 1)
    assert peak == (20 + 100) + (20 + 100) + 5     # flat buffer + both copies + the next prefetch


def test_world_size_pads_a_single_gather_to_a_multiple_of_the_world():
    numel = [101, 7]
    trace = [[0], [1]]
    assert gathered_peak(numel, trace, _sizes(prefetch=0, max_live=10 ** 9, reuse=0), 4, 1) == 104


def test_reuse_distance_keeps_a_parameter_used_again_soon():
    # parameter 0 is used at modules 0 and 2; with a window of 1000 elements it stays gathered across module 1
    numel = [100, 300, 5]
    trace = [[0], [1], [0], [2]]
    kept = gathered_peak(numel, trace, _sizes(prefetch=0, max_live=10 ** 9, reuse=1000), 1, 1)
    released = gathered_peak(numel, trace, _sizes(prefetch=0, max_live=10 ** 9, reuse=0), 1, 1)
    assert (kept, released) == (400, 300)


def test_carry_over_lets_prefetch_run_past_max_live():
    # embedding E (30, first and last module: its backward release never fires), A (60), B (50), persistent P (10);
    # max_live 60, bucket 1, no reuse window. A first step holds at most E + A = 90 (at A's fetch the count is
    # 60 = max_live: no prefetch). step() then releases E and P after the count was reset: the next step starts
    # at -40, so at A's fetch the count is 20 and B is prefetched: A + B = 110
    numel = [30, 60, 50, 10]
    trace = [[0], [1], [2], [3], [0]]
    sizes = _sizes(prefetch=1, max_live=60, reuse=0, persistence=10)
    assert gathered_peak(numel, trace, sizes, 1, 1) == 110


def test_the_all_gather_streams_pool_keeps_its_segments():
    # a 30 MiB weight (bf16) and then a 10-byte one, each used once: the first gets a 30 MiB segment (above 10 MiB:
    # rounded to 2 MiB), the second a 2 MiB small-pool segment (below 1 MiB); freed blocks stay cached in the
    # all-gather stream's pool: reserved 32 MiB while at most 30 MiB are gathered at once
    numel = [15 * 2 ** 20, 5]
    trace = [[0], [1]]
    old, new, reserved = gathered_pool(numel, trace, _sizes(prefetch=0, max_live=10 ** 9, reuse=0), 1, 2)
    assert (old, new, reserved) == (30 * 2 ** 20, 30 * 2 ** 20, 32 * 2 ** 20)


# Llama-2-70B's shape / 16 in width (benchmarks/zero3_live_params.py), knobs / 256 (persistence / 16): the bytes
# rank 0 gathered at most in a real engine, DeepSpeed 0.13.3, 2 CPU processes, reentrant checkpointing
# (python benchmarks/zero3_live_params.py --deepspeed-site DIR --reentrant [--full], 2026-11-30)
SMALL_70B = dict(model_type="llama", hidden_size=512, intermediate_size=1792, num_hidden_layers=4,
                 num_attention_heads=16, num_key_value_heads=2, vocab_size=2000, tie_word_embeddings=False,
                 max_position_embeddings=4096)
SMALL_70B_SIZES = DeepSpeedSizes(500_000_000 // 256, 500_000_000, 50_000_000 // 256, 1_000_000_000 // 256,
                                 100_000 // 16, 10 ** 9, True, 1_000_000_000 // 256)


@pytest.mark.parametrize("method,measured", [("lora", 13_910_016), ("full", 12_189_696)])
def test_replay_equals_the_real_engine(method, measured):
    training = TrainingSpec(seq_len=64, micro_batch_size=1, method=method, lora=LoraSpec(rank=8),
                            activation_checkpointing="full")
    numel, trace = module_trace(architecture_from_hf_config(SMALL_70B), training)
    assert gathered_peak(numel, trace, SMALL_70B_SIZES, 2, 2) == measured


def test_replay_without_carry_over_equals_deepspeed_0_19():
    # DeepSpeed >= 0.16 resets the count at each forward: 9,830,400 B measured on 0.19.8 (full fine-tuning,
    # non-reentrant checkpointing; with LoRA its recompute attribution releases frozen weights sooner)
    training = TrainingSpec(seq_len=64, micro_batch_size=1, method="full", activation_checkpointing="full")
    numel, trace = module_trace(architecture_from_hf_config(SMALL_70B), training)
    assert gathered_peaks(numel, trace, SMALL_70B_SIZES, 2, 2) == (12_189_696, 9_830_400)


def test_llama_70b_lora_gathers_more_than_max_live():
    est = estimate("llama-2-70b", gpus=8, gpu="h100-sxm", strategy="zero3", method="lora", precision="bf16",
                   micro_batch=8, seq_len=2048, checkpointing="full", bucket_sizes="default", lora_rank=8)
    b = est.per_gpu.breakdown
    # stage3_max_live_parameters (1e9 elements, 2 bytes) is what was counted before; the replay holds ~3.3 GiB
    assert b[GATHERED] > 1.5 * 2e9
    assert b[POOL] > 0                               # the all-gather stream's own cached blocks
    # only the adapters have gradients: the largest is gate/up's B or down's A, 28672 x 8 elements, fp32 on a
    # zero.Init'ed base from DeepSpeed 0.19.2 (no --deepspeed-version: that side), 16-bit on 0.18
    assert b["ZeRO-3 unpartitioned module gradients"] == 28672 * 8 * 4
    old = estimate("llama-2-70b", gpus=8, gpu="h100-sxm", strategy="zero3", method="lora", precision="bf16",
                   micro_batch=8, seq_len=2048, checkpointing="full", bucket_sizes="default", lora_rank=8,
                   deepspeed_version="0.18").per_gpu.breakdown
    assert old["ZeRO-3 unpartitioned module gradients"] == 28672 * 8 * 2


def test_the_all_gather_pool_is_reserved_not_allocated():
    """The cached free blocks of ZeRO-3's all-gather stream are in max_memory_reserved, never in
    max_memory_allocated; total is reserved + CUDA context + NCCL, also when a QLoRA base's loading peak sets
    the reserved floor (the side stream cannot reuse the loading's cached blocks)."""
    from advisor.api import estimate
    from advisor.memory.buffers import ZERO3_GATHER_POOL_CACHED

    for kw in (dict(gpus=8, gpu="h100-sxm", method="lora"), dict(gpus=2, gpu="a100-40g", method="qlora")):
        p = estimate("llama-2-70b", strategy="zero3", checkpointing="full", **kw).per_gpu
        pool = p.breakdown[ZERO3_GATHER_POOL_CACHED]
        outside = sum(v for k, v in p.breakdown.items() if k == "CUDA context" or k.startswith("NCCL"))
        assert pool > 0 and p.reserved - p.allocated >= pool
        assert p.total == p.reserved + outside == sum(p.breakdown.values())
