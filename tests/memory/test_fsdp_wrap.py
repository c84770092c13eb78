"""FSDP (v1) wrapping: dsadvise's allocation sequence against the one a real wrap makes (issue 17)."""

from __future__ import annotations

import pytest

MiB = 2 ** 20


@pytest.mark.slow
def test_real_fsdp_wrap_makes_the_sequence_dsadvise_builds():
    # Two gloo processes wrap a 2-layer Llama (hidden 1024, LoRA r16 on every linear, bf16) the way Answer.AI's
    # fsdp_qlora train.py does (low_memory: rank 1 on meta with param_init_fn to_empty, sync_module_states,
    # use_orig_params=False, its wrapping policy: every LoRA leaf linear a unit, every decoder layer a unit).
    # The profiler's allocation events of rank 1 run through the CUDA allocator model give the same reserved
    # bytes as fsdp_init_events for the units FSDP built; with the originals freed before the shard is cloned
    # (dsadvise's order before this change) the built sequence reserved 322 MiB instead of 400.
    from benchmarks.fsdp_wrap_sequence import compare, record

    shape = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=8, num_key_value_heads=8)
    rec = record("lora", 2, lora_rank=16, shape=shape, port=29637)
    # post-order: a layer's 14 adapter units (A then B of q, k, v, o, gate, up, down), the layer, ..., the root
    assert len(rec["units"]) == 2 * 15 + 1
    assert [u[0] for u in rec["units"][:2]] == [1024 * 16 * 2, 16 * 1024 * 2]
    real, built = compare(rec)
    assert built.peak_reserved == real.peak_reserved
    assert abs(built.peak_allocated - real.peak_allocated) < MiB


def test_fsdp_lora_units_are_the_adapters_and_the_whole_base():
    # Llama-2-7B LoRA r64 on every linear, pure bf16, FSDP FULL_SHARD over 2: each decoder layer's 14 adapters are
    # units of their own, wrapped before the layer (PEFT's / Answer.AI's lambda policy, post-order wrapping), and
    # the shards of all units are the estimate's parameter bytes: the whole 16-bit base plus the adapters
    # (6.738e9 base weights + 159.9e6 adapter weights, 2 bytes each, halved).
    from advisor.api import build_hardware, build_strategy, build_training, estimate
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator as A

    train = dict(method="lora", precision="pure-bf16", micro_batch=1, seq_len=512, checkpointing="full",
                 lora_rank=64, lora_targets=("all-linear",))
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    arch = resolve_model("llama-2-7b").architecture
    units = A._fsdp_units(arch, build_training(hw, **train), build_strategy(hw, "fsdp-full"))
    assert len(units) == 32 * 15 + 1
    h, f, r = 4096, 11008, 64
    assert [u[0] for u in units[:14]] == [2 * n for n in (h * r, r * h) * 4 + (h * r, r * f) * 2 + (f * r, r * h)]
    assert len(units[14]) > 1                                      # the layer itself, after its adapters
    shards = sum(-(-sum(u) // 2) for u in units)
    assert shards == pytest.approx((6_738_415_616 + 159_907_840) * 2 / 2, abs=1024)
    est = estimate("llama-2-7b", gpus=2, gpu="rtx-3090", strategy="fsdp-full", **train)
    assert est.per_gpu.parameters == pytest.approx(shards, abs=1024)


def test_after_wrap_moment_holds_the_parameters_and_the_step_only_grows_it():
    # The corpus' 'reserved-after-wrap' point (Answer.AI 7B QLoRA ctx-512, 2 x RTX 3090: 3.72 GiB measured) is
    # compared with fsdp_after_wrap: right after FSDP(...) the allocator holds at least every byte the GPU keeps
    # (the shards, the adapters' shards and the quantization state: per_gpu.parameters), and training never
    # returns a segment (no empty_cache), so the step's max_memory_reserved is at least that moment's.
    import yaml

    from benchmarks.gpu_memory_corpus import CORPUS, after_wrap_reserved, kwargs
    from advisor.api import estimate

    p = next(x for x in yaml.safe_load(CORPUS.read_text())["points"]
             if x["id"] == "answerai-7b-qlora-ctx512-3090-after-wrap")
    assert p["measured"]["kind"] == "reserved-after-wrap"
    est = estimate(**kwargs(p))
    after = after_wrap_reserved(p, est)
    assert est.per_gpu.parameters < after <= est.per_gpu.reserved


def test_fsdp_root_unit_flattens_embed_norm_head_in_module_order():
    # issue 17 (helper D): FSDP flattens and broadcasts the root unit's own parameters in module.parameters() order
    # (torch/distributed/fsdp/_init_utils.py _get_orig_params), which for a transformers Llama is embed_tokens,
    # norm, lm_head (the decoder layers being units of their own). So sync_module_states broadcasts the 250 MiB
    # embedding alone (a view) and flattens [norm, lm_head] into one bucket (benchmarks/fsdp_qlora_wrap.py
    # recorded the units a real wrap builds: the root was the one unit dsadvise listed in another order).
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator as A

    arch = resolve_model("llama-2-7b").architecture
    cfg = LlamaConfig(hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                      num_attention_heads=arch.num_attention_heads, num_hidden_layers=1,
                      vocab_size=arch.vocab_size, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    real = [2 * p.numel() for n, p in model.named_parameters() if ".layers." not in n]
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    train = dict(method="qlora", precision="pure-bf16", micro_batch=1, seq_len=512, checkpointing="full",
                 lora_rank=64, lora_targets=("q_proj",))
    units = A._fsdp_units(arch, build_training(hw, **train), build_strategy(hw, "fsdp-full"))
    assert list(units[-1]) == real
    ev = A.fsdp_init_events([units[-1]], 2, True)
    assert [n for op, k, n in ev if op == "a" and k[0] == "bcast"] == [real[1] + real[2]]


def test_fsdp_sharded_gradients_live_in_the_post_backward_streams_pool():
    # issue 17 (helper D): FSDP (v1) reduce-scatters under its post-backward stream and allocates the gradient shard
    # there (torch/distributed/fsdp/_runtime_utils.py _get_reduce_scatter_tensors: new_sharded_grad =
    # torch.empty_like(chunks[0]); kept as _saved_grad_shard, then .grad), a pool no compute-stream block serves.
    # Llama-2-7B QLoRA r64 on q_proj, pure bf16, FULL_SHARD over 2: per layer one shard per adapter unit, half of
    # lora_A (64 x 4096) and of lora_B (4096 x 64) in bf16: 64 * 4096 * 2 / 2 bytes each; NO_SHARD keeps the whole
    # gradient on the flat parameter (an all-reduce in place: nothing allocated there).
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator as A
    from advisor.memory.bytes_per_param import state_bytes
    from advisor.memory.core import trainable_parameters
    from advisor.memory.model_states import model_states
    from advisor.param_count import count_parameters

    model = resolve_model("llama-2-7b")
    arch = model.architecture

    def model_states_for(arch, train, strategy, hw):
        counts = count_parameters(arch)
        return model_states(arch, counts, trainable_parameters(model, counts, train), state_bytes(train, strategy),
                            train, strategy, hw)

    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    train = build_training(hw, method="qlora", precision="pure-bf16", micro_batch=1, seq_len=512,
                           checkpointing="full", lora_rank=64, lora_targets=("q_proj",))
    full = build_strategy(hw, "fsdp-full")
    shards = A._post_backward_grad_shards(arch, train, full, hw, model_states_for(arch, train, full, hw), 2)
    assert shards == (64 * 4096 * 2 // 2,) * (2 * 32)
    ddp = build_strategy(hw, "fsdp-no-shard")
    assert A._post_backward_grad_shards(arch, train, ddp, hw, model_states_for(arch, train, ddp, hw), 1) == ()
    # CPUOffload(params): the GPU shard is still allocated and kept as _saved_grad_shard until the backward's final
    # callback (prepare_gradient_for_optim), the CPU copy being made from it: the same shards (issue 17, helper D)
    off = build_strategy(hw, "fsdp-full", "cpu", "cpu")
    assert A._post_backward_grad_shards(arch, train, off, hw, model_states_for(arch, train, off, hw), 2) == shards


def test_fsdp_lazy_init_passes_each_units_full_size_through_the_compute_pool():
    # issue 17 (helper D): at the first forward, _lazy_init -> _share_state_and_init_handle_attrs ->
    # init_flat_param_attributes allocates each unit's padded unsharded flat parameter on the compute stream and frees
    # its storage at once, the root first (benchmarks/fsdp_qlora_step.py recorded the root's 500 MiB, then the
    # layer's). Padded to a multiple of the world: 1003 bytes over 2 ranks -> 1004.
    from advisor.memory.allocator import fsdp_lazy_init_events, simulate

    assert fsdp_lazy_init_events([[100, 200], [50], [1000, 3]], 2) == [
        ("a", ("lazy", 2), 1004), ("f", ("lazy", 2), 0),
        ("a", ("lazy", 0), 300), ("f", ("lazy", 0), 0),
        ("a", ("lazy", 1), 50), ("f", ("lazy", 1), 0)]
    assert fsdp_lazy_init_events([[100, 200]], 1) == []          # NO_SHARD: no padded unsharded tensor
    # Alone, the root's 700 MiB takes a segment of its own and the 300 MiB unit then splits that cached block:
    # 700 MiB reserved, not 1000; nothing stays allocated.
    st = simulate(fsdp_lazy_init_events([[300 * MiB], [700 * MiB]], 2))
    assert st.peak_reserved == 700 * MiB
    assert st.peak_allocated == 700 * MiB


def test_fsdp_lora_optimizer_states_are_one_tensor_per_adapter_shard_in_the_small_pool():
    # issue 17 (helper D): AdamW's _init_group builds exp_avg / exp_avg_sq with zeros_like(p) per parameter, and with
    # use_orig_params=False the parameters are the adapter units' flat shards. Llama-2-7B, r64 on q/k/v/gate/up/down:
    # per layer 12 units, lora_A/lora_B of q, k, v (64 x 4096 each), gate and up (A 64 x 4096, B 11008 x 64), down
    # (A 64 x 11008, B 4096 x 64): 9 of 64 * 4096 and 3 of 64 * 11008 elements, 4,472,832 in all. A layer's state
    # of that many bytes splits exactly into those sizes, per state.
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator as A

    arch = resolve_model("llama-2-7b").architecture
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    train = build_training(hw, method="qlora", precision="pure-bf16", micro_batch=1, seq_len=512,
                           checkpointing="full", lora_rank=64,
                           lora_targets=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))
    per_layer = 9 * 64 * 4096 + 3 * 64 * 11008
    assert per_layer == 4_472_832
    dyn = A.StateLayout(persistent_outside=(), persistent_layer=(), lazy_outside=(),
                        lazy_layer=(per_layer, per_layer), step_temp_outside=(), step_temp_layer=())
    out = A._fsdp_adapter_states(arch, train, build_strategy(hw, "fsdp-full"), dyn)
    assert sorted(out.lazy_layer) == sorted([64 * 4096] * 18 + [64 * 11008] * 6)
    # each under 1 MiB: the small pool's 2 MiB segments, which a 20 MiB cached (large) block cannot serve; the two
    # per-layer blocks dsadvise had fit in it and reserved nothing more
    cached = [("a", "w", 20 * MiB), ("f", "w", 0)]
    per_unit = A.simulate(cached + [("a", ("S", i), n) for i, n in enumerate(out.lazy_layer)])
    per_block = A.simulate(cached + [("a", ("S", i), n) for i, n in enumerate(dyn.lazy_layer)])
    assert per_block.peak_reserved == 20 * MiB
    assert per_unit.peak_reserved >= 20 * MiB + 2 * per_layer
    # not FSDP: unchanged
    assert A._fsdp_adapter_states(arch, train, build_strategy(hw, "ddp"), dyn) is dyn
