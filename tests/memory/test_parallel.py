"""Per-rank memory under tensor / sequence / context parallelism (advisor/memory/parallel.py, issue 15).

The measured figures below are what the real engines held on CPU (gloo, torchrun) in
``python benchmarks/parallel_memory.py`` (DeepSpeed 0.19.8 AutoTP with ZeRO-0 bf16; DeepSpeed Ulysses
``UlyssesSPAttentionHF`` over sdpa): per-rank parameter elements and bytes saved for backward in one training
forward, recorded with ``saved_tensors_hooks`` (benchmarks/parallel_probe.py). The estimate must land in
-3 % ... +10 % of them.
"""

from __future__ import annotations

import pytest

from advisor.api import build_hardware, build_strategy, build_training, estimate, layout_fields
from advisor.catalog.models import resolve_model
from advisor.hf_config import architecture_from_hf_config
from advisor.memory.core import estimate_memory
from advisor.memory.parallel import narrow_architecture, rank_parameters, rank_saved_bytes
from advisor.specs import StrategySpec, TrainingSpec

LOW, HIGH = -0.03, 0.10

LLAMA = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
         "intermediate_size": 688, "vocab_size": 1024, "num_hidden_layers": 2, "max_position_embeddings": 4096,
         "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
QWEN2 = {"model_type": "qwen2", "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2,
         "intermediate_size": 704, "vocab_size": 1536, "num_hidden_layers": 2, "max_position_embeddings": 4096,
         "tie_word_embeddings": False, "use_sliding_window": False}

# (config, kind, size, seq_len, batch, measured parameters per rank, measured saved bytes per rank)
MEASURED = [
    (LLAMA, "tp", 2, 256, 1, 1_119_488, 5_522_444),
    (LLAMA, "tp", 4, 256, 1, 691_456, 4_617_228),
    (QWEN2, "tp", 2, 256, 2, 1_296_000, 11_995_140),
    (LLAMA, "sp", 2, 512, 1, 1_975_552, 7_597_068),
    (LLAMA, "sp", 4, 512, 1, 1_975_552, 3_800_588),
    (QWEN2, "sp", 4, 512, 1, 2_197_504, 4_095_500),     # 2 kv heads < sp 4: Ulysses replicates them
]


@pytest.mark.parametrize("cfg, kind, size, seq, batch, params, saved", MEASURED,
                         ids=[f"{c['model_type']}-{k}{n}" for c, k, n, *_ in MEASURED])
def test_rank_matches_the_engines(cfg, kind, size, seq, batch, params, saved):
    arch = architecture_from_hf_config(cfg)
    strategy = StrategySpec(backend="deepspeed", zero_stage=0, **{f"{kind}_size": size})
    training = TrainingSpec(seq_len=seq, micro_batch_size=batch, precision="bf16")
    est_params = rank_parameters(arch, strategy.tp_size)
    est_saved = rank_saved_bytes(arch, training, strategy, "half-bf16")
    assert LOW <= (est_params - params) / params <= HIGH, (est_params, params)
    assert LOW <= (est_saved - saved) / saved <= HIGH, (est_saved, saved)


# ZeRO-1 inside a layout, 4 processes: fp32 master + Adam moments per rank after one real engine step
# (benchmarks/parallel_memory.py, second table). AutoTP: the ZeRO group is world / tp = 2; Ulysses: the whole
# sequence-data-parallel group, 4 (ALST's deepspeed.initialize(..., mpu=...)).
ZERO_MEASURED = [("tp", 2, 6_716_928), ("sp", 2, 5_926_656)]


@pytest.mark.parametrize("kind, size, measured", ZERO_MEASURED, ids=[f"{k}{n}" for k, n, _ in ZERO_MEASURED])
def test_zero_partition_inside_the_layout_matches_the_engine(kind, size, measured):
    from advisor.catalog.models import ResolvedModel

    model = ResolvedModel(name="llama", architecture=architecture_from_hf_config(LLAMA), source="config", note="")
    hw = build_hardware(gpus=4, vram=80)
    est = estimate_memory(model, hw, build_training(hw, seq_len=64, precision="bf16"),
                          build_strategy(hw, "zero1", **layout_fields(**{kind: size})))
    assert LOW <= (est.per_gpu.optimizer_states - measured) / measured <= HIGH


def test_narrowed_architecture_keeps_the_replicated_parts():
    arch = architecture_from_hf_config(LLAMA)
    n = narrow_architecture(arch, 4)
    assert (n.num_attention_heads, n.num_key_value_heads, n.intermediate_size) == (2, 1, 172)
    assert (n.hidden_size, n.vocab_size, n.head_dim) == (arch.hidden_size, arch.vocab_size, arch.head_dim)


@pytest.mark.parametrize("layout, strategy", [
    (dict(tp=8), "zero1"), (dict(tp=2), "zero3"), (dict(sp=4), "zero3"), (dict(sp=8), "zero3"),
    (dict(cp=4, fsdp_version=2), "fsdp-full"), (dict(cp=2, dp_replicate=2, fsdp_version=2), "fsdp-full"),
])
def test_breakdown_sums_and_layout_terms_are_named(layout, strategy):
    est = estimate("llama-3.1-8b", gpus=8, gpu="h100-sxm", seq_len=16384, strategy=strategy, **layout)
    g = est.per_gpu
    assert sum(g.breakdown.values()) == g.total
    dims = [k for k in ("tensor parallel", "sequence parallel", "context parallel") if k.split()[0][0] in
            "".join(d[0] for d in layout if d in ("tp", "sp", "cp"))]
    assert dims and all(any(k.startswith(d) for k in g.breakdown) for d in dims)
    assert est.model.parameters == 8_030_261_248           # the whole model is reported, not one rank's
    assert est.hardware.world_size == 8 and est.strategy.seq_len == 16384


def test_sequence_split_lowers_activation_memory():
    plain = estimate("llama-3.1-8b", gpus=8, gpu="h100-sxm", seq_len=32768, strategy="zero3")
    sp8 = estimate("llama-3.1-8b", gpus=8, gpu="h100-sxm", seq_len=32768, strategy="zero3", sp=8)
    assert sp8.per_gpu.activations < plain.per_gpu.activations / 6
    assert sp8.per_gpu.parameters == plain.per_gpu.parameters       # ZeRO-3 still shards over all 8 GPUs


def test_tensor_parallel_inference_divides_weights_and_kv_cache():
    one = estimate("llama-3.1-70b", gpus=8, gpu="h100-sxm", task="infer", seq_len=8192)
    tp8 = estimate("llama-3.1-70b", gpus=8, gpu="h100-sxm", task="infer", seq_len=8192, tp=8)
    (lay,) = tp8.inference
    assert lay.layout == "tensor-parallel" and tp8.strategy.name == "tensor-parallel"
    full = next(x for x in one.inference if x.layout == "replica-per-gpu")
    assert lay.kv_cache == full.kv_cache // 8                      # 8 kv heads, one per GPU
    # weights: everything but the replicated embedding divides by 8
    embed = 128_256 * 8192 * 2
    assert abs(lay.weights - ((full.weights - embed) / 8 + embed)) < 0.01 * lay.weights
    assert sum(tp8.per_gpu.breakdown.values()) == tp8.per_gpu.total
    (speed,) = tp8.inference_speed                     # one copy over 8 GPUs, each reading 1/8 per token
    split = next(x for x in one.inference_speed if x.layout == "device-map-auto")
    assert speed.copies == 1 and speed.decode_seconds_per_token < split.decode_seconds_per_token / 4


def test_step_time_counts_data_parallel_samples_and_layout_collectives():
    tp = estimate("llama-3.1-8b", gpus=8, gpu="h100-sxm", seq_len=4096, strategy="zero1", tp=4)
    plain = estimate("llama-3.1-8b", gpus=8, gpu="h100-sxm", seq_len=4096, strategy="zero1")
    assert tp.step_time.tokens_per_step == 2 * 4096          # 2 data-parallel ranks x micro-batch 1
    from advisor.recommend.step_time import layout_communication, rates_for

    hw = build_hardware(gpus=8, gpu="h100-sxm")
    tp_comm = layout_communication(resolve_model("llama-3.1-8b").architecture, hw,
                                   build_strategy(hw, "zero1", **layout_fields(tp=4)), rates_for(hw.gpu),
                                   micro_batch=1, seq_len=4096, checkpointing="none", act_bytes=2)
    assert tp.step_time.communication_seconds >= tp_comm["tensor parallel all-reduces"] > 0   # exposed, whole
    assert tp.step_time.tokens_per_second < plain.step_time.tokens_per_second    # TP only slows a 8B


def test_global_batch_counts_data_parallel_ranks_only():
    # sp 4 on 8 GPUs: 2 data-parallel ranks, so global batch 2 = micro 1 x 2 ranks x accumulation 1 is valid
    # although 2 is not a multiple of the 8 GPUs (DeepSpeed config.py: world_size / sequence_parallel_size)
    est = estimate("llama-3.1-8b", gpus=8, gpu="h100-sxm", sp=4, strategy="zero3", global_batch=2, seq_len=4096)
    assert est.step_time.tokens_per_step == 2 * 4096


def test_per_node_cpu_counts_every_process():
    model = resolve_model("llama-3.1-8b")
    hw = build_hardware(gpus=8, gpu="h100-sxm")
    training = build_training(hw, seq_len=2048)
    plain = estimate_memory(model, hw, training, build_strategy(hw, "zero1"))
    tp = estimate_memory(model, hw, training, build_strategy(hw, "zero1", **layout_fields(tp=2)))
    # 8 processes either way; DeepSpeed AutoTP loads the whole model in each before sharding it
    assert tp.per_node_cpu.breakdown["training processes"] == plain.per_node_cpu.breakdown["training processes"]
    key = "model loading (one copy per process)"
    assert tp.per_node_cpu.breakdown[key] == pytest.approx(plain.per_node_cpu.breakdown[key], rel=0.01)


def test_fsdp2_tensor_parallel_says_the_pinned_versions_fail():
    est = estimate("llama-3.1-8b", gpus=8, gpu="h100-sxm", strategy="fsdp-full", fsdp_version=2, tp=2)
    assert any("ReplicateParallel" in n and "AutoTP" in n for n in est.notes)
