"""FSDP (v1)'s unshard and pre-unshard streams' pools and the foreach optimizer temporaries, on sequences derived by
hand from the engine's rules (torch/distributed/fsdp _runtime_utils.py, _limiter_utils.py, _exec_order_utils.py,
_flat_param.py; torch/optim/adam.py _multi_tensor_adam) and from CUDACachingAllocator's (advisor/memory/allocator.py)."""

from advisor.memory.allocator import fsdp_stream_events, simulate

MiB = 1 << 20


def _names(events, units):
    return [(op, units[k[1]] if k[0] == "gathered" else k[0]) for op, k, _ in events]


def test_unshard_stream_follows_prefetch_and_the_rate_limiter():
    # Two decoder layers (100 MiB gathered), one LoRA adapter unit each (2 MiB), the root (50 MiB); one rank, no
    # checkpointing, one step. Wrap order [A0, L0, A1, L1, R]; post-forward order the same, so the backward
    # prefetches: root -> L1, L1 -> A1, A1 -> L0, L0 -> A0. Each gather first dequeues the oldest free event when 2
    # are queued, and the CPU's synchronize() on it releases every block freed up to it:
    #   forward: R, L0, A0, A0 freed (event e1), L0 freed (e2); L1: dequeue e1 -> A0 released, then L1; A1 (one
    #   event queued: no dequeue), A1 freed (e3), L1 freed (e4);
    #   backward: the root prefetches L1': dequeue e2 -> L0 released; L1 prefetches A1': dequeue e3 -> A1 released;
    #   A1's pre-backward prefetches L0' with one event queued (e4): no dequeue, the forward's L1 still held;
    #   A1' freed (e5), L1' freed (e6); L0 prefetches A0': dequeue e4 -> L1 released; A0', L0', R freed; the loop's
    #   loss.item() releases the rest.
    units = {0: "A0", 1: "L0", 2: "A1", 3: "L1", 4: "R"}
    u, c = fsdp_stream_events((2 * MiB, 100 * MiB, 2 * MiB, 100 * MiB, 50 * MiB), (2, 2), world=1, copies=False,
                              recompute=False, steps=1)
    assert c == []
    assert _names(u, units) == [
        ("a", "R"), ("a", "L0"), ("a", "A0"), ("f", "A0"), ("a", "L1"), ("a", "A1"),
        ("f", "L0"), ("a", "L1"), ("f", "A1"), ("a", "A1"), ("a", "L0"),
        ("f", "L1"), ("a", "A0"),
        ("f", "A1"), ("f", "L1"), ("f", "A0"), ("f", "L0"), ("f", "R")]
    s = simulate(u)
    # at L0's prefetch: the root, L1 (freed, not released), L1', A1', L0': 50 + 3 x 100 + 2 MiB; segments: 50 MiB,
    # three of 100 MiB (L1' takes L0's freed block, L0' finds none) and a 20 MiB one (kLargeBuffer) for the 2 MiB
    # adapters, which each later adapter reuses
    assert s.peak_allocated == 352 * MiB
    assert s.peak_reserved == 370 * MiB


def test_pre_unshard_copies_wait_for_their_all_gather():
    # One layer (100 MiB gathered, 50 MiB shard on each of 2 ranks), the root (50 / 25 MiB), CPU offload: before
    # each all-gather the pre-unshard stream copies the shard to the GPU; the copy is recorded on the unshard
    # stream and is reusable only once that all-gather is known complete. In one step only two frees are queued
    # before the backward's prefetch, so no synchronize() runs before the loop's loss.item(): the three copies
    # (root, layer, layer again in backward) are all held, 25 + 50 + 50 MiB, in a pool of their own; the unshard
    # stream holds the root and the layer twice (the forward's block not yet released), 50 + 100 + 100 MiB.
    u, c = fsdp_stream_events((100 * MiB, 50 * MiB), (1,), world=2, copies=True, recompute=False, steps=1)
    assert [(op, n // MiB) for op, _, n in u if op == "a"] == [("a", 50), ("a", 100), ("a", 100)]
    assert [(op, n // MiB) for op, _, n in c if op == "a"] == [("a", 25), ("a", 50), ("a", 50)]
    assert [op for op, _, _ in c] == ["a", "a", "a", "f", "f", "f"]
    # 25 + 50 + 50 MiB requested; the 25 MiB copy gets a 26 MiB segment (>= 10 MiB: rounded to 2 MiB) whose 1 MiB
    # remainder is not split off (large pool: only a remainder above 1 MiB is), so it counts whole as allocated
    assert (simulate(c).peak_requested, simulate(c).peak_allocated) == (125 * MiB, 126 * MiB)
    assert simulate(u).peak_allocated == 250 * MiB
    # no offload: no copies
    assert fsdp_stream_events((100 * MiB, 50 * MiB), (1,), 2, False, False, 1)[1] == []


def test_recompute_gathers_the_adapters_again_but_the_prefetched_one():
    # Two adapter units per layer (Aa, Ab; 2 and 3 MiB), layers of 100 MiB, the root 50 MiB. Without checkpointing
    # each adapter is gathered twice per step: in the forward, and by the backward prefetch of the unit after it in
    # post-forward order (a layer prefetches Ab, Ab prefetches Aa). With it, the layer's recomputed forward gathers
    # and frees Aa once more before its backward gathers it again, while Ab, prefetched (its handle in BACKWARD_PRE),
    # is skipped by _pre_forward / _post_forward and stays gathered: Aa 3 times, Ab 2, layers 2, root 1.
    units = (2 * MiB, 3 * MiB, 100 * MiB, 2 * MiB, 3 * MiB, 100 * MiB, 50 * MiB)

    def gathers(recompute):
        u, _ = fsdp_stream_events(units, (3, 3), 1, False, recompute, steps=1)
        return [sum(1 for op, k, _ in u if op == "a" and k[1] == x) for x in range(len(units))]

    assert gathers(False) == [2, 2, 2, 2, 2, 2, 1]
    assert gathers(True) == [3, 2, 2, 3, 2, 2, 1]
    # later steps find the first one's blocks cached: the second and third reserve the same
    s2, s3 = (simulate(fsdp_stream_events(units, (3, 3), 1, False, True, steps=k)[0]) for k in (2, 3))
    assert s2.peak_reserved == s3.peak_reserved


def test_foreach_adamw_temporaries_are_one_per_adapter_shard():
    # torch's foreach AdamW (CUDA's default) makes exp_avg_sq.sqrt() for every parameter it holds
    # (_multi_tensor_adam: torch._foreach_sqrt(device_exp_avg_sqs)); under FSDP with use_orig_params=False these are
    # the adapter units' flat shards. Llama-2-7B, LoRA r64 on q/k/v/gate/up/down, bf16, 2 ranks: a layer's units
    # are q_A/q_B/k_A/k_B/v_A/v_B (4096 x 64 each) and gate_A/gate_B/up_A/up_B (4096 x 64, 64 x 11008) and
    # down_A/down_B (11008 x 64, 64 x 4096); a shard is half a unit: 4096 * 64 * 2 / 2 = 262144 bytes, or
    # 11008 * 64 * 2 / 2 = 704512; the layer's 4472832 bytes split in that proportion, in module order.
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory.allocator import StateLayout, _fsdp_adapter_states

    arch = resolve_model("llama-2-7b").architecture
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    training = build_training(hw, seq_len=512, micro_batch=1, precision="pure-bf16", method="qlora", lora_rank=64,
                              lora_targets=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))
    strategy = build_strategy(hw, "fsdp-full")
    layer = 4472832
    out = _fsdp_adapter_states(arch, training, strategy, StateLayout(lazy_layer=(layer, layer),
                                                                      step_temp_layer=(layer,)))
    small, big = 262144, 704512
    one = (small,) * 7 + (big, small, big, big, small)
    assert out.step_temp_layer == one and sum(one) == layer
    assert out.lazy_layer == one * 2
    # each under 1 MiB: small-pool blocks, 12 per layer, 4.27 MiB; in 2 MiB segments
    assert all(n <= MiB for n in out.step_temp_layer)
