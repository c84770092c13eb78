"""DeepSpeed >= 0.19.2 keeps PEFT's fp32 LoRA adapters fp32 under ZeRO-3 on a zero.Init'ed base (no parameter cast
of a zero.Init model, deepspeedai/DeepSpeed#8066); earlier releases cast them with module.bfloat16()."""

from advisor.api import estimate

# Llama-2-7B, LoRA r16 on all seven linears of 32 layers: q/k/v/o 4 x (4096x16 + 16x4096), gate/up
# 2 x (4096x16 + 16x11008), down 11008x16 + 16x4096 = 1,249,280 per layer.
ADAPTERS = 32 * (4 * (4096 * 16 + 16 * 4096) + 2 * (4096 * 16 + 16 * 11008) + (11008 * 16 + 16 * 4096))
GPUS = 8


def _params(method="lora", **kw):
    e = estimate(model="llama-2-7b", gpus=GPUS, gpu="a100-80g", strategy="zero3", method=method, precision="bf16",
                 micro_batch=1, seq_len=512, checkpointing="full", lora_rank=16, lora_targets=("all-linear",), **kw)
    return e.per_gpu.breakdown["parameters"]


def test_adapter_count_is_the_hand_count():
    assert ADAPTERS == 39_976_960


def test_zero3_lora_adapters_are_fp32_partitions_from_0_19():
    # 2 more bytes per adapter element, sharded over 8 GPUs
    assert _params(deepspeed_version="0.19") - _params(deepspeed_version="0.18") == ADAPTERS * 2 // GPUS


def test_no_version_counts_the_larger():
    assert _params() == _params(deepspeed_version="0.19")


def test_old_peft_and_qlora_keep_16bit_adapters():
    # PEFT < 0.12 (transformers 4.39's time) builds the adapters in the base's dtype; a QLoRA base is not zero.Init'ed
    assert _params(transformers_version="4.39", deepspeed_version="0.19") == \
        _params(transformers_version="4.39", deepspeed_version="0.18")
    assert _params(method="qlora", deepspeed_version="0.19") == _params(method="qlora", deepspeed_version="0.18")
