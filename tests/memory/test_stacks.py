"""The software stack a run states (--torch-version, --transformers-version; advisor/data/stacks.yaml): what each
version adds, counted from the engines' sources, and that without a version nothing changes (issue 17)."""

from __future__ import annotations

import pytest

from advisor.api import build_hardware, build_strategy, build_training, estimate
from advisor.catalog.models import resolve_model
from advisor.errors import InputError
from advisor.memory import allocator as A
from advisor.memory.overhead import nccl_nvls_bytes_per_communicator

MiB = 2**20
# Answer.AI fsdp_qlora 7B QLoRA ctx-512 on 2 x RTX 3090 (the corpus point answerai-7b-qlora-ctx512-3090)
QLORA_7B = dict(gpus=2, gpu="rtx-3090", strategy="fsdp-full", method="qlora", precision="pure-bf16", micro_batch=1,
                seq_len=512, checkpointing="full", lora_rank=64, lora_dropout=0.1, loss="legacy-inline")
# PEFT docs Llama-2-70B LoRA ZeRO-3 on 8 x H100 (peft-docs-llama-2-70b-lora-zero3-8xh100)
LORA_70B_Z3 = dict(gpus=8, gpu="h100-sxm", strategy="zero3", method="lora", micro_batch=8, global_batch=256,
                   seq_len=2048, checkpointing="full", attention="flash", lora_rank=8, lora_dropout=0.1,
                   bucket_sizes="default", loss="legacy-inline")


def _rotary(est) -> int:
    return sum(v for k, v in est.per_gpu.breakdown.items() if k.startswith("per-layer rotary caches"))


def test_without_versions_the_estimate_is_what_it_was():
    # Recorded before the stack fields existed (commit a1ee026, `git stash` of this change), same calls:
    # estimate("llama-2-7b", **QLORA_7B) and estimate("llama-2-70b", **LORA_70B_Z3), per_gpu total/reserved/allocated.
    # issue 17 (helper D): FSDP's broadcast buckets parked behind their NCCL event until the unit's end, the root
    # unit's [norm, lm_head] bucket (module order), and the gradient shards in the post-backward stream's pool:
    # reserved and total +534773760 (allocated unchanged); was (5619318784, 4315938816, 3878821892).
    # Then (helper D, the step: benchmarks/fsdp_qlora_step.py) AdamW's states one tensor per adapter unit's shard,
    # in the small pool: +333447168 more; was (6154092544, 4850712576, 3878821892).
    # Then (issue 17, helper A) FSDP's unshard and pre-unshard streams over the engine's order (allocator.
    # fsdp_stream_events): reserved and total -96468992, allocated -860160 (the pool's block rounding); and AdamW's
    # foreach temporaries one per adapter shard, in the small pool: reserved and total +167772160; was
    # (6487539712, 5184159744, 3878821892).
    # Then (issue 17, session 10, helper C) the RTX 3090's own CUDA context + NCCL (advisor/data/overhead.yaml
    # ampere-consumer: 548 + 56 MiB instead of the H200's 685 + 558): total -670040064; was (6558842880, ...).
    a = estimate("llama-2-7b", **QLORA_7B).per_gpu
    assert (a.total, a.reserved, a.allocated) == (5888802816, 5255462912, 3877961732)
    # issue 17 (Z, session 9): ZeRO-3's gathered parameters replayed from DeepSpeed's coordinator (1.86 -> 3.29 GiB),
    # the all-gather stream pool's cached blocks (+1.38 GiB), the module gradient of LoRA's largest adapter, not of
    # a frozen module (-0.49 GiB): +2489319424 (advisor/memory/zero3_gather.py); was
    # (63985156287, 62144905407, 58123154111).
    # Then the pool's cached blocks counted as reserved only, not allocated (allocated -1478754304, the pool; the
    # allocator's replay without them as persistent blocks: reserved and total -1835008); was
    # (66474475711, 64634224831, 60611097279).
    # Then (helper C) NCCL at 8 x H100 NVLink: 688 MiB (NVIDIA/nccl#964, 3+ GPUs) instead of 558: total +136314880;
    # was (66472640703, ...).
    # Then (session 10) the LoRA adapters' ZeRO-3 partitions and param.grad fp32 (DeepSpeed >= 0.19.2 keeps a
    # zero.Init'ed model's fp32 adapters, #8066; no --deepspeed-version: that side): 103,546,880 adapter elements
    # x 2 more bytes / 8 GPUs = +25,886,720 parameters, 28672 x 8 x 2 = +458,752 module gradient; the allocator's
    # cached free blocks absorb them (reserved and total +33 B); was (66608955583, 64632389823, 59132342975).
    # Then (session 10, helper C) DeepSpeed's two NCCL communicators (its cloned data-parallel group and the world
    # group: benchmarks/nccl_communicators.py): total +721420288, one more 688 MiB; was (66608955616, ...).
    b = estimate("llama-2-70b", **LORA_70B_Z3).per_gpu
    assert (b.total, b.reserved, b.allocated) == (67330375904, 64632389856, 59158639328)


def test_rotary_caches_per_layer_from_the_source_shapes():
    # transformers 4.37-4.40 LlamaRotaryEmbedding: cos and sin, max_position_embeddings x head_dim each, in
    # torch's default dtype (fp32 for a QLoRA model built with from_config, as Answer.AI does), in every one of the
    # decoder layers: Llama-2-7B 2 x 4096 x 128 x 4 B = 4 MiB per layer x 32
    for v in ("4.37", "4.38.2", "4.39", "4.40"):
        assert _rotary(estimate("llama-2-7b", transformers_version=v, **QLORA_7B)) == 2 * 4096 * 128 * 4 * 32
    # Llama-2-70B (head_dim 128 too) x 80 layers: a LoRA base counted 16-bit (loaded with torch_dtype=bf16) builds
    # them in bf16, 160 MiB; a base loaded in fp32 (--base-dtype fp32) in fp32, 320 MiB (DeepSpeed 0.19.8 keeps them)
    assert _rotary(estimate("llama-2-70b", transformers_version="4.39", **LORA_70B_Z3)) == 2 * 4096 * 128 * 2 * 80
    assert _rotary(estimate("llama-2-70b", transformers_version="4.39", base_dtype="fp32", **LORA_70B_Z3)) == 320 * MiB
    # transformers 4.41 keeps only inv_freq in Llama's rotary module; dsadvise's default: none
    assert _rotary(estimate("llama-2-7b", transformers_version="4.41", **QLORA_7B)) == 0
    assert _rotary(estimate("llama-2-7b", **QLORA_7B)) == 0
    # Mistral 4.34-4.41: MistralRotaryEmbedding with max_position_embeddings 32768: 2 x 32768 x 128 x 4 B x 32 = 1 GiB
    mistral = dict(QLORA_7B, gpu="rtx-4090", strategy="fsdp-full", micro_batch=1)
    assert _rotary(estimate("mistral-7b-v0.2", transformers_version="4.41", **mistral)) == 2 * 32768 * 128 * 4 * 32
    assert _rotary(estimate("mistral-7b-v0.2", transformers_version="4.42", **mistral)) == 0


def test_fsdp_mixed_precision_casts_them_to_16_bit():
    # accelerate's MixedPrecision(buffer_dtype=bf16): FSDP's lazy init casts every buffer (mixed bf16): 2 bytes
    mixed = dict(QLORA_7B, precision="bf16")
    est = estimate("llama-2-7b", transformers_version="4.39", **mixed)
    assert _rotary(est) == 2 * 4096 * 128 * 2 * 32
    assert any("cast to 16-bit by FSDP's MixedPrecision" in n for n in est.notes)


def test_the_allocator_knows_the_buffer_names():
    # allocator.py keeps the names as literals (it imports nothing heavy): they must be the ones buffers.py writes
    from advisor.memory import buffers as B

    assert A.ROTARY_CACHES == B.ROTARY_CACHES_BUFFER and A._MODULE_BUFFERS == (B.ROTARY_CACHES_BUFFER,
                                                                               B.CAUSAL_MASK_BUFFER)


def test_wrapping_moves_each_layers_buffers_with_its_unit_and_keeps_them_whole():
    # one unit of 8 MiB of parameters and two 2 MiB buffers, sharded over 2, no broadcast: the parameters pass
    # through whole, the flat copy and the shard are made, the originals go; the buffers stay, unsharded
    ev = A.fsdp_init_events([(8 * MiB,)], 2, False, buffers=[(2 * MiB, 2 * MiB)])
    assert ev == [("a", ("init", 0, 0), 8 * MiB), ("a", ("B", 0, 0), 2 * MiB), ("a", ("B", 0, 1), 2 * MiB),
                  ("a", ("flat", 0), 8 * MiB), ("a", ("P", 0), 4 * MiB), ("f", ("flat", 0), 0),
                  ("f", ("init", 0, 0), 0)]
    # with sync_module_states the two buffers form a broadcast bucket of their own dtype (4 MiB, freed)
    ev = A.fsdp_init_events([(8 * MiB,)], 2, True, buffers=[(2 * MiB, 2 * MiB)])
    assert ("a", ("bcast", 0, 0), 4 * MiB) in ev and ("f", ("bcast", 0, 0), 0) in ev


def test_after_wrap_moment_holds_the_layers_buffers():
    # fsdp_after_wrap (the corpus' reserved-after-wrap): transformers 4.39's caches are on the GPU after FSDP(...)
    arch = resolve_model("llama-2-7b").architecture
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    strategy = build_strategy(hw, "fsdp-full")
    base = dict(seq_len=512, micro_batch=1, precision="pure-bf16", method="qlora", lora_rank=64,
                lora_targets=("all-linear",), checkpointing="full", loss="legacy-inline")
    params = estimate("llama-2-7b", **QLORA_7B).per_gpu.parameters
    old = A.fsdp_after_wrap(arch, build_training(hw, transformers_version="4.39", **base), strategy, hw, params)
    new = A.fsdp_after_wrap(arch, build_training(hw, **base), strategy, hw, params)
    assert old.peak_allocated - new.peak_allocated == 2 * 4096 * 128 * 4 * 32


def test_nvls_buffers_follow_the_nccl_of_the_stated_torch():
    # nvls.cc: 16 channels x per-channel bytes x 8 local ranks; torch 2.1/2.2 wheels: NCCL 2.18.1/2.19.3,
    # 2 x (4 MiB + 2 MiB); 2.3/2.4: 2.20.5, the same; 2.5/2.6: 2.21.5, 2 x (1 + 2 MiB); 2.7+: 2 x 1 MiB
    hw = build_hardware(gpus=8, gpu="h100-sxm")
    assert nccl_nvls_bytes_per_communicator(hw, "2.2") == 16 * 12 * MiB * 8 == 1536 * MiB
    assert nccl_nvls_bytes_per_communicator(hw, "2.4.1") == 1536 * MiB
    assert nccl_nvls_bytes_per_communicator(hw, "2.5") == 16 * 6 * MiB * 8
    assert nccl_nvls_bytes_per_communicator(hw, "2.13") == 256 * MiB
    assert nccl_nvls_bytes_per_communicator(hw) == 256 * MiB                  # no version: the floor, as before
    assert nccl_nvls_bytes_per_communicator(build_hardware(gpus=2, gpu="rtx-3090"), "2.2") == 0
    z3 = estimate("llama-2-70b", torch_version="2.2", **LORA_70B_Z3)
    assert sum(v for k, v in z3.per_gpu.breakdown.items() if k.startswith("NCCL NVLS")) == 2 * 1536 * MiB


def test_old_transformers_implies_the_inline_loss_unless_given():
    hw = build_hardware(gpus=1, gpu="a100-80g")
    assert build_training(hw, transformers_version="4.39").loss == "legacy-inline"
    assert build_training(hw, transformers_version="4.45.2").loss == "legacy-inline"
    assert build_training(hw, transformers_version="4.46").loss == "plain"
    assert build_training(hw).loss == "plain"
    assert build_training(hw, transformers_version="4.39", loss="chunked").loss == "chunked"
    est = estimate("llama-2-7b", gpu="a100-80g", method="lora", seq_len=512, transformers_version="4.39")
    assert est.per_gpu.total == estimate("llama-2-7b", gpu="a100-80g", method="lora", seq_len=512,
                                         transformers_version="4.39", loss="legacy-inline").per_gpu.total
    assert any(n.startswith("--loss legacy-inline") for n in est.notes)


def test_unknown_versions_are_refused_with_the_flag():
    with pytest.raises(InputError) as e:
        estimate("llama-2-7b", gpu="a100-80g", torch_version="1.13")
    assert e.value.field == "--torch-version" and "2.1 ... 2.14" in str(e.value)
    with pytest.raises(InputError) as e:
        estimate("llama-2-7b", gpu="a100-80g", transformers_version="4.x")
    assert e.value.field == "--transformers-version"


def test_versions_are_dumped_only_when_given():
    hw = build_hardware(gpus=1, gpu="a100-80g")
    assert "torch_version" not in build_training(hw).model_dump()
    dumped = build_training(hw, torch_version="2.2.1+cu121", transformers_version="4.39.0.dev0").model_dump()
    assert (dumped["torch_version"], dumped["transformers_version"]) == ("2.2", "4.39")


def test_transformers_4_38_causal_mask_buffer_and_its_4d_mask():
    # 4.38.2 LlamaModel: causal_mask = triu(full((4096, 4096), True)): 16 MiB of bool; _update_causal_mask builds
    # (batch, 1, 4096, 4096) in the embeddings' dtype (bf16 here) each forward except under flash attention
    def items(est):
        return {k.split(" (")[0]: v for k, v in est.per_gpu.breakdown.items() if "causal" in k}

    sdpa = estimate("llama-2-7b", transformers_version="4.38", **dict(QLORA_7B, micro_batch=2))
    assert items(sdpa) == {"LlamaModel.causal_mask buffer": 4096 * 4096,
                           "4D causal mask built each forward": 2 * 4096 * 4096 * 2}
    assert any("not counted: the per-layer copy" in n for n in sdpa.notes)
    flash = estimate("llama-2-70b", transformers_version="4.38", **LORA_70B_Z3)
    assert items(flash) == {"LlamaModel.causal_mask buffer": 4096 * 4096}
    assert not any("not counted" in n for n in flash.notes)
    assert items(estimate("llama-2-7b", transformers_version="4.39", **QLORA_7B)) == {}
    assert items(estimate("mistral-7b-v0.2", transformers_version="4.38", **QLORA_7B)) == {}
    # FSDP moves the model's own buffer with the root unit: after the wrap it is there with the layers' caches
    arch = resolve_model("llama-2-7b").architecture
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)
    base = dict(seq_len=512, micro_batch=1, precision="pure-bf16", method="qlora", lora_rank=64,
                lora_targets=("all-linear",), checkpointing="full", loss="legacy-inline")
    params = estimate("llama-2-7b", **QLORA_7B).per_gpu.parameters
    wraps = [A.fsdp_after_wrap(arch, build_training(hw, transformers_version=v, **base), build_strategy(hw, "fsdp-full"),
                               hw, params).peak_allocated for v in ("4.38", None)]
    assert wraps[0] - wraps[1] == 2 * 4096 * 128 * 4 * 32 + 4096 * 4096


def test_old_peft_builds_lora_adapters_in_the_16_bit_models_dtype():
    # issue 17 (helper T): PEFT < 0.12 (transformers <= 4.42's time) casts each adapter to its base weight's floating
    # dtype (peft 0.10.0 LoraLayer.update_layer), so on a pure-bf16 model Linear4bit.forward's x.to(lora_A.weight.dtype)
    # copies nothing; PEFT >= 0.12 (or no version) keeps fp32 adapters and the fp32 input copies
    from advisor.memory.activations import activation_memory
    from advisor.stacks import lora_adapters_in_base_dtype

    assert lora_adapters_in_base_dtype("4.39") and lora_adapters_in_base_dtype("4.42")
    assert not lora_adapters_in_base_dtype("4.43") and not lora_adapters_in_base_dtype(None)
    arch = resolve_model("llama-2-7b").architecture
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)

    def saved(version, precision="pure-bf16"):
        t = build_training(hw, seq_len=512, micro_batch=1, global_batch=None, precision=precision, method="qlora",
                           lora_rank=64, lora_targets=("all-linear",), lora_dropout=0.1, checkpointing="none",
                           attention="sdpa", loss="plain", loss_chunks=8, double_quant=True, torch_version=None,
                           transformers_version=version)
        mode = "half-bf16" if precision == "pure-bf16" else "autocast16-bf16"
        return activation_memory(arch, t, mode).breakdown["layers"]

    # under the old PEFT each adapted linear's input is neither copied to fp32 nor dropped out in fp32: fewer bytes
    # (4.42: the last such version, free of 4.39's own SDPA/rotary terms, stacks.yaml; session 9 A)
    assert saved("4.42") < saved("4.46") == saved(None)
    # under autocast (FSDP MixedPrecision) adapters stay fp32 whatever the version: 4.42 differs only by Llama's own
    # bf16 rotary cos/sin in each of the 32 layers (stacks.yaml rotary_per_layer: 2 x 512 x 128 x 2 B)
    assert saved("4.42", "bf16") - saved(None, "bf16") == 32 * 2 * 512 * 128 * 2
