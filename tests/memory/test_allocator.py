"""The caching-allocator simulator against sequences whose peaks are derived by hand from the rules of
c10/cuda/CUDACachingAllocator.cpp (see advisor/memory/allocator.py), plus properties on random sequences."""

from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.memory.allocator import CachingAllocator, _simulate_default, allocation_size, round_size, simulate

KiB, MiB = 1 << 10, 1 << 20


def run(events, **kw):
    return simulate([(e[0], e[1], e[2] if len(e) > 2 else 0) for e in events], **kw)


def test_round_size_and_segment_size():
    assert round_size(1) == 512 and round_size(512) == 512 and round_size(513) == 1024
    assert allocation_size(512) == 2 * MiB            # small pool: 2 MiB segment
    assert allocation_size(1 * MiB) == 2 * MiB        # exactly kSmallSize is still small
    assert allocation_size(1 * MiB + 512) == 20 * MiB  # 1-10 MiB: 20 MiB segment
    assert allocation_size(10 * MiB) == 10 * MiB      # >= 10 MiB: rounded to 2 MiB
    assert allocation_size(11 * MiB) == 12 * MiB


def test_small_request_packs_into_a_2mib_segment():
    # 100 B -> 512 B, small pool, new 2 MiB segment, the rest (2 MiB - 512 >= 512) split off.
    # A second 100 B request takes 512 B of the split remainder: no new segment.
    s = run([("a", 1, 100), ("a", 2, 100)])
    assert (s.peak_allocated, s.peak_reserved, s.segments) == (1024, 2 * MiB, 1)


def test_medium_requests_share_a_20mib_segment_and_large_ones_round_to_2mib():
    # 3 MiB: new 20 MiB segment, rest 17 MiB > 1 MiB -> split.   5 MiB: best fit is the 17 MiB block -> 12 MiB
    # free.  13 MiB: no free block >= 13 MiB -> new segment round_up(13, 2) = 14 MiB; the 1 MiB rest is not
    # > kSmallSize, so it is not split and the whole 14 MiB counts as allocated.
    s = run([("a", 1, 3 * MiB), ("a", 2, 5 * MiB), ("a", 3, 13 * MiB)])
    assert s.peak_reserved == 20 * MiB + 14 * MiB
    assert s.peak_allocated == 3 * MiB + 5 * MiB + 14 * MiB
    assert s.peak_requested == 21 * MiB


def test_freed_hole_too_small_forces_a_new_segment():
    # A, B: two 30 MiB segments. Free A. C = 40 MiB: the 30 MiB hole does not fit -> third segment.
    s = run([("a", "A", 30 * MiB), ("a", "B", 30 * MiB), ("f", "A"), ("a", "C", 40 * MiB)])
    assert s.peak_reserved == 100 * MiB and s.peak_allocated == 70 * MiB


def test_split_blocks_merge_back_on_free():
    # A (30 MiB) freed; B (10 MiB) splits it (20 MiB rest > 1 MiB); freeing B merges 10 + 20 back into one
    # 30 MiB block, which C (30 MiB) reuses: still one segment.
    s = run([("a", "A", 30 * MiB), ("f", "A"), ("a", "B", 10 * MiB), ("f", "B"), ("a", "C", 30 * MiB)])
    assert (s.peak_reserved, s.segments) == (30 * MiB, 1)


def test_best_fit_picks_the_smallest_block():
    # Holes of 40 and 24 MiB (separate segments). 22 MiB goes to the 24 MiB hole (rest 2 MiB > 1 MiB: split);
    # 38 MiB then still fits the 40 MiB hole: no new segment.
    s = run([("a", "A", 40 * MiB), ("a", "B", 24 * MiB), ("f", "A"), ("f", "B"),
             ("a", "C", 22 * MiB), ("a", "D", 38 * MiB)])
    assert (s.peak_reserved, s.segments) == (64 * MiB, 2)


def test_unsplit_remainder_counts_as_allocated():
    # 12 MiB segment freed; 11.5 MiB takes it, the 0.5 MiB rest is not > 1 MiB: allocated = 12 MiB.
    al = CachingAllocator()
    al.malloc("A", 12 * MiB)
    al.free("A")
    al.malloc("B", 11 * MiB + 512 * KiB)
    assert al.allocated == 12 * MiB and al.requested == 11 * MiB + 512 * KiB


def test_max_split_size_keeps_oversize_blocks_whole():
    # max_split_size 20 MiB. A 40 MiB hole may not serve a 10 MiB request (below max_split_size) -> new
    # 10 MiB segment. A 60 MiB hole may not serve 30 MiB (60 >= 30 + 20) -> new 30 MiB segment.
    s = run([("a", "A", 40 * MiB), ("f", "A"), ("a", "B", 10 * MiB)], max_split_size=20 * MiB)
    assert s.peak_reserved == 50 * MiB
    s = run([("a", "A", 60 * MiB), ("f", "A"), ("a", "B", 30 * MiB)], max_split_size=20 * MiB)
    assert s.peak_reserved == 90 * MiB
    # 45 MiB hole, 30 MiB request: 45 < 30 + 20 -> reused whole (oversize blocks are not split).
    al = CachingAllocator(max_split_size=20 * MiB)
    al.malloc("A", 45 * MiB)
    al.free("A")
    al.malloc("B", 30 * MiB)
    assert al.reserved == 46 * MiB and al.allocated == 46 * MiB


def test_expandable_segments_map_pages_at_the_tail():
    # Large pool pages are 20 MiB. A = 11 MiB maps one page (20), split: tail 9 MiB free. B = 11 MiB does not
    # fit the 9 MiB tail: one more page extends it to 29 MiB, B takes 11, tail 18. Reserved 40 MiB.
    s = run([("a", "A", 11 * MiB), ("a", "B", 11 * MiB)], expandable_segments=True)
    assert (s.peak_reserved, s.peak_allocated, s.segments) == (40 * MiB, 22 * MiB, 1)
    # Without expandable segments: two 12 MiB segments, each handed out whole (rest 1 MiB not split).
    s = run([("a", "A", 11 * MiB), ("a", "B", 11 * MiB)])
    assert (s.peak_reserved, s.peak_allocated) == (24 * MiB, 24 * MiB)


def test_expandable_segments_grow_over_a_free_tail_instead_of_a_new_segment():
    # 30, 30 MiB: mapped 60 (pages of 20: A maps 40, rest 10; B needs 20 more: one page, tail 0).
    # Free B (the tail), C = 50 MiB: the free tail of 30 MiB grows by one page to 50: reserved 80 MiB,
    # where plain segments need 30 + 30 + 50 = 110 MiB.
    ev = [("a", "A", 30 * MiB), ("a", "B", 30 * MiB), ("f", "B"), ("a", "C", 50 * MiB)]
    assert run(ev, expandable_segments=True).peak_reserved == 80 * MiB
    assert run(ev).peak_reserved == 110 * MiB


def test_expandable_best_fit_ranks_the_growable_tail_last():
    # A = 30 MiB maps 2 pages (40), rest 10; B = 10 MiB takes that rest exactly; C = 20 MiB maps one more page.
    # Free A (a 30 MiB hole at the start) and C (a free 20 MiB tail). D = 20 MiB: by size the tail fits best,
    # but get_free_block ranks the tail by the size it can grow to, so D splits the hole (20 + 10 free).
    # E = 30 MiB then fits nowhere and the tail grows by one page (20 + 20 = 40): reserved 80 MiB.
    # (Had D taken the tail, E would have reused the hole and reserved stayed at 60 MiB.)
    ev = [("a", "A", 30 * MiB), ("a", "B", 10 * MiB), ("a", "C", 20 * MiB), ("f", "A"), ("f", "C"),
          ("a", "D", 20 * MiB), ("a", "E", 30 * MiB)]
    s = run(ev, expandable_segments=True)
    assert (s.peak_reserved, s.segments) == (80 * MiB, 1)


sizes = st.one_of(st.integers(1, 4096), st.integers(4096, 2 * MiB), st.integers(2 * MiB, 64 * MiB))


@st.composite
def sequences(draw):
    n = draw(st.integers(1, 60))
    live, events, k = [], [], 0
    for _ in range(n):
        if live and draw(st.booleans()):
            key = live.pop(draw(st.integers(0, len(live) - 1)))
            events.append(("f", key, 0))
        else:
            k += 1
            live.append(k)
            events.append(("a", k, draw(sizes)))
    return events


@settings(max_examples=150, deadline=None)
@given(sequences(), st.booleans())
def test_properties(events, expandable):
    al = CachingAllocator(expandable_segments=expandable)
    for op, key, n in events:
        al.malloc(key, n) if op == "a" else al.free(key)
        assert al.requested <= al.allocated <= al.reserved
        assert al.reserved % (2 * MiB) == 0                 # segments / pages are multiples of 2 MiB
    # every free block is back in a pool: freeing everything leaves allocated at 0, reserved unchanged
    reserved = al.reserved
    for key in list(al._live):
        al.free(key)
    assert al.allocated == 0 and al.requested == 0 and al.reserved == reserved
    # with everything free, each pool's free blocks add up to that pool's segments (merging lost nothing)
    assert sum(size for pool in al._free.values() for size, _ in pool) == reserved
    s = al.stats()
    assert s.peak_requested <= s.peak_allocated <= s.peak_reserved


@settings(max_examples=150, deadline=None)
@given(sequences())
def test_inlined_default_simulation_matches_the_class(events):
    al = CachingAllocator()
    for op, key, n in events:
        al.malloc(key, n) if op == "a" else al.free(key)
    assert _simulate_default(events) == al.stats()


def test_capacity_releases_cached_segments_then_retries():
    # A and B: 40 MiB segments each; free both (cached, unsplit). C = 60 MiB with capacity 100 MiB: a new
    # 60 MiB segment would make 140 > 100, so the allocator releases both cached segments (reserved 0) and
    # cudaMallocs 60 MiB. Peak reserved stays 80 MiB; 80 MiB were released.
    ev = [("a", "A", 40 * MiB), ("a", "B", 40 * MiB), ("f", "A", 0), ("f", "B", 0), ("a", "C", 60 * MiB)]
    s = _simulate_default(ev, capacity=100 * MiB)
    assert (s.oom, s.peak_reserved, s.released) == (False, 80 * MiB, 80 * MiB)
    # A split segment cannot be released: A (40) is split by D (10 MiB, rest 30 MiB free), so with B live
    # nothing is releasable and C = 60 MiB is out of memory at capacity 100 MiB.
    ev = [("a", "A", 40 * MiB), ("a", "B", 40 * MiB), ("f", "A", 0), ("a", "D", 10 * MiB), ("a", "C", 60 * MiB)]
    assert _simulate_default(ev, capacity=100 * MiB).oom
    assert not _simulate_default(ev).oom


def _canonical(events):
    """Events with keys renamed by order of first allocation (two sequences equal up to key names compare
    equal)."""
    ids, out = {}, []
    for op, key, n in events:
        if op == "a":
            ids[key] = len(ids)
        out.append((op, ids.get(key, key) if op in ("a", "f", "h") else key, n))
    return out


import pytest  # noqa: E402


@pytest.mark.parametrize("model,ckpt,method,mode", [
    ("llama-3-8b", "none", "lora", "autocast-bf16"),
    ("llama-3-8b", "full", "full", "half-bf16"),
    ("gpt2", "selective", "full", "autocast-bf16"),
    ("mixtral-8x7b", "full", "qlora", "half-bf16"),
])
def test_repeated_layer_sequence_equals_the_direct_trace(model, ckpt, method, mode):
    """allocation_trace builds deep stacks from a 4-layer trace by repeating its third layer; the result must
    be the sequence a trace of every layer produces, up to key names."""
    from advisor.catalog.models import resolve_model
    from advisor.memory import activations as act
    from advisor.specs import TrainingSpec

    arch = resolve_model(model).architecture
    t = TrainingSpec(seq_len=64, micro_batch_size=2, activation_checkpointing=ckpt, method=method,
                     attention="eager" if ckpt == "selective" else "sdpa")
    key, c = act.allocation_key(arch, t)
    direct = act._trace_events(arch, key, mode, c, 7)
    repeated = act._replicate_layers(*act._trace_events(arch, key, mode, c, 4, return_sections=True), 7)
    assert repeated is not None                                     # no fallback to the direct trace
    assert _canonical(repeated) == _canonical(direct)


def test_fsdp_wrapping_sequence_leaves_its_transients_cached():
    # One unit of two 30 MiB parameters, 2 ranks, sync_module_states (torch FSDP _init_param_handle_from_module):
    # the two parameters on the GPU (two 30 MiB segments), one 60 MiB broadcast bucket (< 250 MiB: a third
    # segment), freed; the flattened 60 MiB copy takes the bucket's block; the 30 MiB shard is cloned while the
    # originals still live (managed_params holds them until the handle is built and sharded: the order a real
    # wrap makes, benchmarks/fsdp_wrap_sequence.py), so it needs a fourth segment; then the flat copy and the
    # originals are freed. Reserved: 30 + 30 + 60 + 30 MiB; live: the shard alone. A later 25 MiB tensor (the
    # step's) splits a cached block: no new segment.
    from advisor.memory.allocator import fsdp_init_events

    ev = fsdp_init_events([[30 * MiB, 30 * MiB]], world=2, sync_module_states=True, nccl=False)
    assert [(op, k[0]) for op, k, _ in ev] == [("a", "init"), ("a", "init"), ("a", "bcast"), ("f", "bcast"),
                                               ("a", "flat"), ("a", "P"), ("f", "flat"), ("f", "init"),
                                               ("f", "init")]
    s = simulate(ev)
    assert (s.peak_reserved, s.peak_allocated, s.segments) == (150 * MiB, 150 * MiB, 4)
    s2 = simulate(ev + [("a", "step", 25 * MiB)])
    assert (s2.peak_reserved, s2.segments) == (150 * MiB, 4)
    # NO_SHARD (one shard) over 2 processes: still broadcast, then the flattened copy itself stays (no clone).
    ev1 = fsdp_init_events([[30 * MiB, 30 * MiB]], world=1, sync_module_states=True, nccl=False)
    assert [(op, k[0]) for op, k, _ in ev1] == [("a", "init"), ("a", "init"), ("a", "bcast"), ("f", "bcast"),
                                                ("a", "P"), ("f", "init"), ("f", "init")]
    # On NCCL (a GPU run, the default) the bucket is parked behind its broadcast's event until the unit's end
    # (ProcessGroupNCCL recordStream of the input; CUDACachingAllocator insert_events): the flattened copy cannot
    # take its block and needs a 60 MiB segment of its own: 30 + 30 + 60 + 60 + 30 MiB reserved, 5 segments.
    evn = fsdp_init_events([[30 * MiB, 30 * MiB]], world=2, sync_module_states=True)
    assert [(op, k[0]) for op, k, _ in evn] == [("a", "init"), ("a", "init"), ("a", "bcast"), ("a", "flat"),
                                                ("a", "P"), ("f", "flat"), ("f", "init"), ("f", "init"),
                                                ("f", "bcast")]
    sn = simulate(evn)
    assert (sn.peak_reserved, sn.segments) == (210 * MiB, 5)
    # Buckets close at 250 MiB: three 200 MiB parameters -> a 400 MiB bucket (flattened: allocated) and a
    # one-tensor bucket, which flatten_dense_tensors returns as a view (allocates nothing).
    ev2 = fsdp_init_events([[200 * MiB] * 3], world=2, sync_module_states=False)
    assert not any(k[0] == "bcast" for _, k, _ in ev2)
    ev3 = fsdp_init_events([[200 * MiB] * 3], world=2, sync_module_states=True)
    assert [n for op, k, n in ev3 if op == "a" and k[0] == "bcast"] == [400 * MiB]
    ev4 = fsdp_init_events([[300 * MiB]], world=2, sync_module_states=True)
    assert not any(k[0] == "bcast" for _, k, _ in ev4)


def test_fsdp_reserved_keeps_the_wrapping_cache():
    # Llama-2-7B QLoRA, FSDP FULL_SHARD over 2 GPUs, batch 1 x 512 (the Answer.AI point): what the wrapping alone
    # reserves (its own simulation) plus the unshard stream's gathered units is a floor of the estimate's reserved.
    # Answer.AI measured 3.72 GiB reserved after wrapping (benchmarks_03_2024.md 'reserved_after_model_wrap').
    from advisor.api import build_hardware, build_strategy, build_training, estimate
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator as A

    train = dict(method="qlora", precision="pure-bf16", micro_batch=1, seq_len=512, checkpointing="full",
                 lora_rank=64, lora_targets=("all-linear",))
    est = estimate("llama-2-7b", gpus=2, gpu="rtx-3090", strategy="fsdp-full", **train)
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    units = A._fsdp_units(resolve_model("llama-2-7b").architecture, build_training(hw, **train),
                          build_strategy(hw, "fsdp-full"))
    wrap = A.simulate(A.fsdp_init_events([list(u) for u in units], 2, True))
    # the units alone (base layers, their LoRA adapters, the root; the quantization state comes before them):
    # below what Answer.AI measured
    assert 2.8 * 2**30 < wrap.peak_reserved < 3.72 * 2**30
    gathered = sum(v for k, v in est.per_gpu.breakdown.items() if k.startswith("FSDP gathered"))
    assert est.per_gpu.reserved >= wrap.peak_reserved + gathered


def test_accelerate_fp32_logits_are_allocated_where_accelerate_makes_them():
    """accelerate's convert_outputs_to_fp32 copies the 16-bit logits to fp32 when the forward returns; the loop
    holds the copy through the step and the 16-bit output dies. A real LoRA step recorded on the CPU
    (benchmarks/allocator_sequence.py: llama-3.2-1b at width 512, 4 layers, 2 x 256 tokens, accelerate loop)
    runs through the simulator with four fp32 N x V segments (252 MiB), as the H200's allocator snapshot of the
    same loop shows four (docs/calibration.md); without the copy in the sequence there were three."""
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory import allocator as A
    from advisor.memory.activations import allocation_key
    from advisor.datafiles import load_data
    from advisor.specs import TrainingSpec

    cfg = dict(next(m for m in load_data("models.yaml")["models"] if m["name"] == "llama-3.2-1b")["config"])
    cfg.update(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
               num_hidden_layers=4)
    arch = architecture_from_hf_config(cfg)
    t = TrainingSpec(seq_len=256, micro_batch_size=2, method="lora", precision="bf16")
    key, ckpt = allocation_key(arch, t)
    segs, leftovers, held = A._activation_segments(arch, key, "autocast16-bf16", ckpt, 4)
    logits16 = 2 * 256 * arch.vocab_size * 2
    fp32_seg = -(-2 * logits16 // A.K_ROUND_LARGE) * A.K_ROUND_LARGE

    def fp32_segments(held_fp32: int) -> tuple[int, list]:
        events = A.churn_events(segs, leftovers, held, 4, A.StateLayout(), held_fp32=held_fp32)
        al, sizes = A.CachingAllocator(), []
        new = al._new_segment
        al._new_segment = lambda size, small: sizes.append(size) or new(size, small)
        for op, k, n in events:
            al.malloc(k, n) if op == "a" else al.free(k)
        return sizes.count(fp32_seg), events

    count, events = fp32_segments(logits16)
    assert count == 4
    i = events.index(("a", A.ACCELERATE_FP32_LOGITS, 2 * logits16))
    assert events[i + 1] == ("f", held, 0)                         # the 16-bit output is dropped at once
    assert events[-1] == ("f", A.ACCELERATE_FP32_LOGITS, 0)         # the copy lives through the step
    assert fp32_segments(0)[0] == 3

    # the cuBLAS workspaces: the forward's after its first allocation, the backward's after the output
    # projection's input gradient (2 x 256 tokens x 512 bf16), which comes after the loss's logit gradients
    ws = A.churn_events(segs, leftovers, held, 4, A.StateLayout(), held_fp32=logits16, blas_workspace=32 << 20)
    fwd, bwd = (ws.index(("a", k, 32 << 20)) for k in A.BLAS_WORKSPACE_KEYS)
    assert ws[fwd - 1][0] == "a" and not any(e[0] == "a" for e in ws[:fwd - 1])
    assert ws[bwd - 1][0] == "a" and ws[bwd - 1][2] == 2 * 256 * 512 * 2
    assert ws.index(("a", A.ACCELERATE_FP32_LOGITS, 2 * logits16)) < bwd
    assert not any(e[0] == "f" and e[1] in A.BLAS_WORKSPACE_KEYS for e in ws)      # kept


def test_two_cublas_workspaces_per_gpu_sized_by_generation():
    """CublasHandlePool.cpp: one workspace per (handle, stream) from the caching allocator, 4096 * 8 * 1024 bytes
    on Hopper/Blackwell, 4096 * 1024 * 2 + 16 * 1024 * 8 before; the forward thread's and autograd's each."""
    from advisor.api import estimate
    from advisor.memory.allocator import blas_workspace_bytes

    class Gpu:
        def __init__(self, generation):
            self.generation = generation

    class Hw:
        def __init__(self, generation):
            self.gpu = Gpu(generation)

    assert blas_workspace_bytes(Hw("hopper")) == blas_workspace_bytes(Hw("blackwell")) == 33_554_432
    assert blas_workspace_bytes(Hw("ampere")) == blas_workspace_bytes(Hw("ada")) == 8_519_680
    assert blas_workspace_bytes(Hw("cdna3")) == 134_217_728
    for gpu, each in (("h100-sxm", 33_554_432), ("a100-80g", 8_519_680)):
        g = estimate("gpt2", gpu=gpu, seq_len=256).per_gpu
        assert g.breakdown["cuBLAS workspaces (forward and backward thread)"] == 2 * each
        assert g.allocated >= 2 * each + g.parameters


def test_qlora_quant_state_is_bitsandbytes_tensors_loaded_before_the_wrapping():
    # Llama-2-7B: q_proj is 4096 x 4096, so quantize_4bit's absmax has 4096*4096/64 = 262144 blocks, one byte
    # each with double quantization and four without; the blocks of a layer sum to what they are given.
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator as A

    arch = resolve_model("llama-2-7b").architecture
    total = 4 * 2**20          # above the layer's absmax bytes (202M weights / 64)
    dq = A.qlora_quant_state_tensors(arch, True, total)
    assert dq[0] == 262144 and sum(dq) == total
    assert A.qlora_quant_state_tensors(arch, False, 4 * total)[0] == 4 * 262144
    # allocated first, never freed: the wrapping that follows cannot place them in its freed blocks
    ev = A.loaded_events(dq, 2) + A.fsdp_init_events([[300 * 2**20]], world=2, sync_module_states=True)
    assert [op for op, _, _ in ev[:2 * len(dq)]] == ["a"] * (2 * len(dq))
    assert not any(op == "f" and k[0] == "L" for op, k, _ in ev)
    alone = A.simulate(A.fsdp_init_events([[300 * 2**20]], world=2, sync_module_states=True))
    assert A.simulate(ev).peak_reserved > alone.peak_reserved


def test_legacy_inline_loss_adds_what_the_recorded_step_adds():
    # transformers <= 4.45's in-model loss (fp32 logits held, shifted contiguous copy) against today's
    # ForCausalLMLoss, recorded on the CPU allocator (benchmarks/gpu_memory_corpus_legacy_loss.py: +1.99 bytes
    # per logit at the peak; benchmarks/allocator_sequence.py --compare-loss: +0.50 fp32 logit block allocated,
    # +1.00 reserved). Llama-2-7B LoRA, FSDP over 2 GPUs, pure bf16 (no accelerate copy), 4 x 2048 tokens.
    from advisor.api import estimate

    kw = dict(gpus=2, gpu="rtx-3090", strategy="fsdp-full", method="lora", precision="pure-bf16", micro_batch=4,
              seq_len=2048, checkpointing="full", lora_rank=64, lora_targets=("all-linear",))
    plain = estimate("llama-2-7b", loss="plain", **kw).per_gpu
    legacy = estimate("llama-2-7b", loss="legacy-inline", **kw).per_gpu
    block = 4 * 2048 * 32000 * 4
    assert 0.45 * block < legacy.allocated - plain.allocated < 0.55 * block
    assert 0.9 * block < legacy.reserved - plain.reserved < 1.1 * block


def test_full_finetune_head_copy_and_gradient_follow_the_recorded_step():
    """issue 17 (G4): under autocast over fp32 weights the head's 16-bit weight copy is allocated just before the
    16-bit logits and freed in the head's backward, where the fp32 head gradient is formed after the 16-bit
    weight gradient (the order a real step recorded at the H200's shape makes: benchmarks/allocator_sequence.py).
    With it, the full fine-tune of the committed H200 run (llama-3.2-1b x 4 layers, 2 x 1024 tokens, bf16,
    accelerate loop) lands in band against the GPU's max_memory_reserved; before: -4.4 %."""
    import json

    from advisor.memory import allocator as A
    from benchmarks import gpu_calibrate as gc

    run = json.loads((gc.RUNS / "h200-2026-11-30.json").read_text())
    measured = next(r for r in run["rows"] if r["case"] == "full-accelerate")
    alloc, reserved, _ = gc.estimate_case(run["settings"], "full-accelerate", 141.0)     # an H200's card
    assert -0.03 <= reserved / measured["reserved"] - 1 <= 0.10
    assert -0.03 <= alloc / measured["allocated"] - 1 <= 0.10

    hc, dw = A.HEAD_COPY_KEYS
    fwd = [("a", 1, 8 << 20), ("a", "logits", 500 << 20), ("f", 1, 0)]
    assert A._with_head_copy(fwd, "logits", 400 << 20)[1] == ("a", hc, 400 << 20)
    bwd = [("a", "gl", 1000 << 20), ("a", "gl16", 500 << 20), ("f", "gl", 0), ("a", "dx", 8 << 20),
           ("a", ("tmp", 9), 500 << 20), ("f", ("tmp", 9), 0), ("f", "gl16", 0), ("a", "next", 16 << 20)]
    out = A._head_backward(bwd, 500 << 20, 400 << 20, [(("G", "head", 0), 800 << 20)])
    assert out[out.index(("a", "dx", 8 << 20)) + 1] == ("a", dw, 400 << 20)
    g = out.index(("a", ("G", "head", 0), 800 << 20))
    assert out.index(("f", "gl16", 0)) < out.index(("f", hc, 0)) < g < out.index(("f", dw, 0)) \
        < out.index(("a", "next", 16 << 20))


def test_fsdp_run_over_the_card_with_cached_blocks_kept_fits_by_the_oom_retry():
    """issue 17: Answer.AI's Llama-2-7B QLoRA, FSDP FULL_SHARD + CPU offload on 2 RTX 4090, batch 12 x 2048
    (benchmarks_03_2024.md) ran with 22.38 GiB max_memory_reserved. With every cached block kept, the compute
    stream's sequence reserves more than the card (the 16-bit logits' segment, freed by the legacy loss's
    ``.float()``, and the forward's fp32 MLP segments stay cached while the fp32 logit gradients need segments of
    their own): 25.1 GiB on a 23.99 GiB card. CUDACachingAllocator ``malloc`` then frees every unsplit cached
    segment (``release_cached_blocks`` -> ``release_blocks``) and retries cudaMalloc, so reserved is bounded by
    what cudaMalloc can give: the card less the CUDA context and NCCL. The estimate is that bound, says the
    retry, fits, and is not below the measurement."""
    from advisor.api import estimate

    train = dict(method="qlora", precision="pure-bf16", seq_len=2048, checkpointing="full", loss="legacy-inline",
                 lora_rank=64, lora_targets=("all-linear",), lora_dropout=0.1, offload_optimizer="cpu",
                 offload_param="cpu")
    est = estimate("llama-2-7b", gpus=2, gpu="rtx-4090", strategy="fsdp-full", micro_batch=12, **train)
    pg = est.per_gpu
    limit = est.hardware.vram_bytes - pg.breakdown["CUDA context"] - pg.breakdown["NCCL communicators"]
    assert pg.reserved == limit and pg.total == est.hardware.vram_bytes and est.fits
    assert any("retries when cudaMalloc fails" in n for n in est.notes)
    assert pg.reserved >= 22.38 * 2**30 > pg.allocated
    # batch 4 stays below the card: no retry, reserved below the bound
    small = estimate("llama-2-7b", gpus=2, gpu="rtx-4090", strategy="fsdp-full", micro_batch=4, **train)
    assert small.per_gpu.reserved < limit and not any("retries when cudaMalloc" in n for n in small.notes)


def test_oom_retry_reserved_is_the_limit_on_every_engine_path():
    """A run over the card with every cached block kept that completes by the allocator's OOM retry reports the
    limit as max_memory_reserved on the non-FSDP path too, not the capped replay's own reserved peak (which was
    24.47 GiB here: the real retry comes wherever the true free memory makes a cudaMalloc fail, so only the
    limit bounds reserved; allocator.oom_retry_reserved, the rule the FSDP path uses as well)."""
    from advisor.api import estimate

    est = estimate("llama-2-7b", vram=26.5, method="qlora", precision="pure-bf16", micro_batch=12, seq_len=2048,
                   checkpointing="full", loss="legacy-inline")
    pg = est.per_gpu
    assert est.strategy.backend != "fsdp" and any("retries when cudaMalloc fails" in n for n in est.notes)
    limit = est.hardware.vram_bytes - pg.breakdown["CUDA context"]
    assert pg.reserved == limit and pg.total == est.hardware.vram_bytes and est.fits
    assert pg.breakdown["allocator: cached free blocks (reserved - allocated)"] == limit - pg.allocated
