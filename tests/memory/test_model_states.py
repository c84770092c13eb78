"""Bytes-per-parameter arithmetic of the model states, against hand derivations from the ZeRO paper,
the optimizers' definitions and PEFT/QLoRA's storage formats."""

from __future__ import annotations

import pytest

from advisor.api import estimate
from advisor.catalog.models import resolve_model
from advisor.param_count import count_parameters, linear_shapes

MODEL = "llama-2-7b"
PSI = count_parameters(resolve_model(MODEL).architecture).total


def states(**kw):
    kw.setdefault("vram", 80)
    e = estimate(MODEL, **kw)
    return e, e.per_gpu.parameters, e.per_gpu.gradients, e.per_gpu.optimizer_states


def test_fp32_adamw_single_gpu_is_16_bytes_per_param():
    _, p, g, o = states(precision="fp32")
    assert (p, g, o) == (4 * PSI, 4 * PSI, 8 * PSI)


def test_autocast_mixed_precision_keeps_fp32_weights_and_grads():
    # accelerate's mixed_precision (DDP/single) = torch.autocast over fp32 weights: 4 + 4 + 8.
    _, p, g, o = states(precision="bf16")
    assert (p, g, o) == (4 * PSI, 4 * PSI, 8 * PSI)


def test_deepspeed_mixed_precision_is_2_2_16():
    # ZeRO paper: 2Ψ + 2Ψ + KΨ with K=12, plus the fp32 gradient copy of the step (DeepSpeed's 18 = 2+4+4+8).
    _, p, g, o = states(precision="bf16", strategy="zero0")
    assert (p, g, o) == (2 * PSI, 2 * PSI, 16 * PSI)


def test_pure_bf16_has_no_master_copy():
    _, p, g, o = states(precision="pure-bf16", strategy="zero0")
    assert (p, g, o) == (2 * PSI, 2 * PSI, 4 * PSI)


@pytest.mark.parametrize("optimizer,per_param", [("sgd", 4), ("lion", 4), ("lamb", 8), ("adamw", 8)])
def test_optimizer_moments(optimizer, per_param):
    _, _, _, o = states(precision="fp32", optimizer=optimizer)
    assert o == per_param * PSI


def test_adamw_8bit_is_about_2_bytes():
    _, _, _, o = states(precision="fp32", optimizer="adamw-8bit")
    assert 2 * PSI <= o <= 2.01 * PSI


def test_adafactor_is_factored():
    arch = resolve_model(MODEL).architecture
    _, _, _, o = states(precision="fp32", optimizer="adafactor")
    # rows+cols per matrix instead of rows*cols: far below one fp32 copy of the model.
    assert o < 0.01 * 4 * PSI
    one_layer_matrices = sum(i + o_ for i, o_, c in linear_shapes(arch).values())
    assert o >= 4 * arch.num_layers * one_layer_matrices


# Persistent states: 16-bit weights and gradients, fp32 master + Adam moments 12 bytes. The fp32 gradient
# partition (4 bytes) exists only during the optimizer step (stage_1_and_2.step / stage3 sub groups): it is a
# step transient, not a model state.
@pytest.mark.parametrize("stage,expected", [
    (1, 2 + 2 + 12 / 8), (2, 2 + (2 + 12) / 8), (3, (2 + 2 + 12) / 8)])
def test_zero_stages_partition_over_world(stage, expected):
    _, p, g, o = states(precision="bf16", strategy=f"zero{stage}", gpus=8)
    assert (p + g + o) == pytest.approx(expected * PSI, rel=1e-6)


def test_fsdp_hybrid_shards_within_node_only():
    full = estimate(MODEL, gpus=8, nodes=2, vram=80, strategy="fsdp-full").per_gpu
    hybrid = estimate(MODEL, gpus=8, nodes=2, vram=80, strategy="fsdp-hybrid").per_gpu
    assert hybrid.optimizer_states == pytest.approx(2 * full.optimizer_states, rel=1e-6)


def test_cpu_offload_moves_optimizer_to_cpu_ram():
    on_gpu = estimate(MODEL, gpus=4, vram=80, strategy="zero2")
    off = estimate(MODEL, gpus=4, vram=80, strategy="zero2", offload_optimizer="cpu", cpu_ram=512)
    assert off.per_gpu.optimizer_states == 0 and off.per_gpu.gradients == 0
    moved = off.per_node_cpu.total - on_gpu.per_node_cpu.total
    # All 4 ranks' (2 grads + 16 optimizer) / 4 bytes land in the node's RAM, plus DeepSpeed's buffers.
    assert moved >= 18 * PSI
    assert off.per_node_cpu.fits


def test_offload_that_does_not_fit_cpu_ram_is_reported():
    off = estimate(MODEL, gpus=4, vram=80, strategy="zero3", offload_optimizer="cpu", offload_param="cpu",
                   cpu_ram=32)
    assert not off.per_node_cpu.fits and not off.fits


def test_lora_trains_adapters_only_and_keeps_base_in_16_bit():
    e, p, g, o = states(method="lora", lora_rank=16)
    t = e.model.trainable_parameters
    assert 0 < t < 0.01 * PSI
    assert g == 4 * t and o == 8 * t           # fp32 adapters: grads + Adam moments
    # the adapters come on top of the whole 16-bit base (PEFT adds lora_A / lora_B; the base keeps its PSI weights)
    assert p == pytest.approx(2 * PSI + 4 * t)


def test_qlora_base_is_4_bit_nf4():
    arch = resolve_model(MODEL).architecture
    e, p, _, _ = states(method="qlora", lora_rank=16)
    t = e.model.trainable_parameters
    linear = arch.num_layers * sum(i * o * c for i, o, c in linear_shapes(arch).values())
    # QLoRA paper: 4.127 bits per quantized parameter with double quantization.
    expected = linear * 4.127 / 8 + (PSI - linear) * 2 + 4 * t
    assert p == pytest.approx(expected, rel=1e-3)


def test_freeze_trains_last_layers():
    arch = resolve_model(MODEL).architecture
    e = estimate(MODEL, vram=80, method="freeze", freeze_layers=2)
    assert e.model.trainable_parameters == 2 * count_parameters(arch).per_layer


def test_ddp_adds_reducer_bucket_copy():
    e = estimate(MODEL, gpus=2, vram=80, strategy="ddp", precision="bf16")
    assert e.per_gpu.breakdown["DDP reducer buckets (copy of gradients)"] == 4 * PSI


def test_total_is_the_sum_of_its_parts():
    for strategy in ("single", "zero3", "fsdp-full"):
        g = estimate(MODEL, gpus=1 if strategy == "single" else 4, vram=80, strategy=strategy).per_gpu
        assert g.total == (g.parameters + g.gradients + g.optimizer_states + g.activations + g.temporaries
                           + g.buffers + g.overhead - g.phase_overlap)


def test_bf16_refused_on_gpu_without_it():
    from advisor.errors import InputError
    with pytest.raises(InputError, match="bf16"):
        estimate(MODEL, gpu="v100-32g", precision="bf16")
    assert estimate(MODEL, gpu="v100-32g").strategy.precision == "fp16"


def test_inference_kv_cache_formula():
    arch = resolve_model("mistral-7b-v0.1").architecture
    e = estimate("mistral-7b-v0.1", task="infer", vram=80, seq_len=4096, micro_batch=2)
    kv = arch.num_layers * 2 * arch.num_key_value_heads * arch.head_dim * 4096 * 2 * 2
    assert e.inference[0].kv_cache == kv
    assert e.inference[0].weights == 2 * count_parameters(arch).total


def test_inference_device_map_splits_layers():
    e = estimate("llama-2-70b", task="infer", gpus=4, vram=80)
    layouts = {x.layout: x for x in e.inference}
    assert not layouts["replica-per-gpu"].fits
    assert layouts["device-map-auto"].fits
    assert e.fits and e.strategy.name == "device-map-auto"


def test_largest_micro_batch_is_the_fitting_boundary():
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.memory.core import estimate_memory, largest_micro_batch

    model = resolve_model(MODEL)
    hw = build_hardware(gpus=4, vram=40)
    tr = build_training(hw, checkpointing="full")
    st = build_strategy(hw, "zero3")
    best = largest_micro_batch(model, hw, tr, st, margin=0.05)
    assert best >= 1

    def total(b):
        return estimate_memory(model, hw, tr.model_copy(update={"micro_batch_size": b}), st).per_gpu.total

    assert total(best) <= 0.95 * hw.vram_bytes < total(best + 1)
    assert largest_micro_batch(model, build_hardware(gpus=1, vram=8), tr, build_strategy(build_hardware(vram=8))) == 0


def test_zero3_qlora_goes_whole_onto_each_gpu_before_partitioning():
    # transformers builds a quantized model without zero.Init, so DeepSpeedEngine._configure_distributed_model
    # moves it whole to the GPU (module.to(device)) and ZeRO-3 partitions it afterwards, one parameter at a time.
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.memory.allocator import simulate
    from advisor.memory.model_states import zero3_whole_model_placement

    arch = resolve_model(MODEL).architecture
    counts = count_parameters(arch)
    hw = build_hardware(2, 1, None, "a100-40g", None, None, None)
    kw = dict(task="train", seq_len=512, micro_batch=1, global_batch=None, precision="bf16", optimizer="adamw",
              lora_rank=8, lora_dropout=0.0, lora_targets=("all-linear",), checkpointing="full", attention="sdpa",
              freeze_layers=2, prompt_len=None, loss="plain", loss_chunks=8, offload_activations=False,
              expandable_segments=False, double_quant=True, tiled_mlp=False)
    qlora, lora = build_training(hw, method="qlora", **kw), build_training(hw, method="lora", **kw)
    z3, fsdp = build_strategy(hw, "zero3"), build_strategy(hw, "fsdp-full")
    events = zero3_whole_model_placement(arch, counts, qlora, z3, hw)
    assert zero3_whole_model_placement(arch, counts, lora, z3, hw) == []      # built under zero.Init
    assert zero3_whole_model_placement(arch, counts, qlora, fsdp, hw) == []   # FSDP wraps unit by unit
    # by hand: every decoder linear as NF4 (half a byte) + its quant state, LoRA A/B and the rest in bf16
    matrices = sum(i * o * c for i, o, c in linear_shapes(arch).values())
    lora = sum(8 * (i + o) * c for i, o, c in linear_shapes(arch).values())
    whole = arch.num_layers * (matrices * 0.5 + lora * 2 + (counts.per_layer - matrices) * 2) \
        + (counts.embedding + counts.lm_head + counts.final) * 2
    qs = arch.num_layers * matrices * (8 / 64 + 32 / (64 * 256)) / 8     # 8-bit absmax per 64, fp32 per 256 blocks
    allocs = [n for op, k, n in events if op == "a" and k[0] != "part"]
    assert sum(allocs) == pytest.approx(whole + qs, rel=1e-3)
    parts = [n for op, k, n in events if op == "a" and k[0] == "part"]
    assert sum(parts) == pytest.approx(whole / 2, rel=1e-3)                   # ceil(numel / world) each
    stats = simulate(events)
    # the peak is the whole model plus the partitions made before the first whole tensor could be reused
    assert whole + qs <= stats.peak_requested <= whole + qs + max(parts)
    e = estimate(MODEL, gpus=2, gpu="a100-40g", strategy="zero3", method="qlora", precision="bf16", lora_rank=8,
                 checkpointing="full", seq_len=512)
    assert e.per_gpu.allocated >= stats.peak_allocated and e.per_gpu.reserved >= stats.peak_reserved


def test_fsdp_pre_unshard_shard_copy():
    # FSDP's pre_unshard copies this rank's shard to the GPU (CPU offload) or casts it to 16 bit (MixedPrecision
    # over fp32 shards) before each all-gather: the largest unit's shard, in its own stream's pool.
    name = "FSDP shard copied to the GPU before each all-gather (pre-unshard stream)"
    c = count_parameters(resolve_model(MODEL).architecture)
    root = (c.embedding + c.lm_head + c.final) * 2              # bf16 embeddings + lm_head + final norm
    assert root > c.layer_gathered * 2                          # Llama-2-7B: the root unit is the largest
    off = estimate(MODEL, gpus=2, gpu="rtx-4090", strategy="fsdp-full", offload_param="cpu", offload_optimizer="cpu", method="lora",
                   precision="pure-bf16", checkpointing="full", seq_len=512)
    assert off.per_gpu.breakdown[name] == -(-root // 2)
    full = estimate(MODEL, gpus=4, vram=80, strategy="fsdp-full", precision="bf16", checkpointing="full", seq_len=512)
    assert full.per_gpu.breakdown[name] == -(-root // 4)
    lora = estimate(MODEL, gpus=2, gpu="rtx-4090", strategy="fsdp-full", method="lora", precision="pure-bf16",
                    checkpointing="full", seq_len=512)
    assert name not in lora.per_gpu.breakdown                 # 16-bit shards all-gathered as they are


def test_zero3_loading_note_only_where_the_loading_sets_the_peak():
    # the loading floor's bytes and its note belong to QLoRA under ZeRO-3 only; a single-GPU LoRA estimate (whose
    # CPU-side model loading is also called "loading" in core.estimate_memory) must carry neither
    from advisor.api import estimate

    def zero3_note(est):
        return [n for n in est.notes if n.startswith("ZeRO-3 with a QLoRA base")]

    single = estimate("llama-2-7b", gpus=1, gpu="a100-80g", method="lora", seq_len=512)
    assert zero3_note(single) == []
    assert "model loading: the whole quantized model" not in " ".join(single.per_gpu.breakdown)
    z3 = estimate("llama-2-70b", gpus=2, gpu="a100-40g", method="qlora", strategy="zero3", seq_len=512,
                  checkpointing="full")
    assert len(zero3_note(z3)) == 1
    assert any(k.startswith("model loading: the whole quantized model") and v > 0
               for k, v in z3.per_gpu.breakdown.items())
