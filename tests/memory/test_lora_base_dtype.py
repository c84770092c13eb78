"""The LoRA base's dtype is the user's loading choice, not an input: dsadvise counts it 16-bit and says so, with
what an fp32-loaded base (transformers v4 without torch_dtype; PEFT's examples/sft) would add per GPU."""

from __future__ import annotations

import pytest

from advisor.api import build_hardware, estimate
from advisor.recommend import recommend
from advisor.specs import TrainingSpec

LLAMA2_7B = 6_738_415_616          # meta-llama/Llama-2-7b-hf (tests/test_param_count.py)


def _note(est) -> list[str]:
    return [n for n in est.notes if n.startswith("the LoRA base is counted in 16-bit")]


@pytest.mark.parametrize("strategy, gpus, per_gpu", [
    ("single", 1, LLAMA2_7B * 2),            # the whole 16-bit base on the GPU
    ("ddp", 2, LLAMA2_7B * 2),
    ("fsdp-full", 4, LLAMA2_7B * 2 // 4),    # FULL_SHARD: a quarter of it on each GPU
])
def test_said_with_the_bytes_an_fp32_base_would_add(strategy, gpus, per_gpu):
    est = estimate(model="llama-2-7b", gpus=gpus, gpu="a100-80g", strategy=strategy, method="lora",
                   precision="bf16", micro_batch=1, seq_len=512)
    [note] = _note(est)
    assert f"{per_gpu / 2**30:.2f} GiB per GPU here" in note


@pytest.mark.parametrize("kw", [
    dict(strategy="zero3", gpus=2, method="lora", precision="bf16"),       # DeepSpeed casts the module itself
    dict(strategy="single", gpus=1, method="lora", precision="pure-bf16"),  # a 16-bit model by the user's word
    dict(strategy="single", gpus=1, method="qlora", precision="bf16"),      # the decoder is NF4
    dict(strategy="single", gpus=1, method="full", precision="bf16"),
    dict(strategy="fsdp-full", gpus=2, method="lora", precision="bf16", offload_param="cpu",
         offload_optimizer="cpu"),                                           # the base lives on the CPU
])
def test_not_said_where_there_is_no_such_choice_on_the_gpu(kw):
    est = estimate(model="llama-2-7b", gpu="a100-80g", micro_batch=1, seq_len=512, **kw)
    assert _note(est) == []


def test_recommendations_that_may_pick_lora_say_it():
    rec = recommend("llama-2-7b", build_hardware(gpus=1, gpu="rtx4090"), TrainingSpec(seq_len=512), method="lora")
    assert any(a.startswith("the LoRA base is counted in 16-bit") for a in rec.assumptions)


# --- --base-dtype fp32: a LoRA base loaded in fp32 under fp16/bf16 autocast ----------------------------------
LLAMA2_7B_R16_ALL_LINEAR = 39_976_960   # PEFT print_trainable_parameters, Llama-2-7b, r=16, all linear layers
# one Llama-2-7B decoder layer's linears (q, k, v, o 4096x4096; gate, up, down 4096x11008) and its lm_head
LAYER_LINEARS = 4 * 4096 * 4096 + 3 * 4096 * 11008
HEAD = 32000 * 4096
LAYER_ADAPTERS = LLAMA2_7B_R16_ALL_LINEAR // 32


def _est(**kw):
    base = dict(model="llama-2-7b", gpu="a100-80g", method="lora", precision="bf16", micro_batch=1, seq_len=512,
                lora_rank=16)
    return estimate(**{**base, **kw})


def _copies(est) -> int:
    return sum(v for k, v in est.per_gpu.breakdown.items() if k.startswith("autocast 16-bit copies"))


def test_an_fp32_base_holds_twice_the_bytes_and_is_no_longer_an_assumption():
    sixteen, fp32 = _est(), _est(base_dtype="fp32")
    assert fp32.per_gpu.parameters - sixteen.per_gpu.parameters == LLAMA2_7B * 2
    assert _note(fp32) == [] and len(_note(sixteen)) == 1
    sharded = _est(gpus=4, strategy="fsdp-full", base_dtype="fp32").per_gpu.parameters \
        - _est(gpus=4, strategy="fsdp-full").per_gpu.parameters
    assert sharded == pytest.approx(LLAMA2_7B * 2 / 4, abs=8)
    # DeepSpeed fp16/bf16 casts the module to 16 bit (engine.py _configure_distributed_model): no difference
    assert _est(gpus=2, strategy="zero2", base_dtype="fp32").per_gpu.total == _est(gpus=2, strategy="zero2").per_gpu.total


def test_autocast_copies_of_fp32_weights():
    """Autocast caches the 16-bit cast of each leaf that requires grad (the fp32 adapters) for the forward; a
    frozen fp32 weight is cast at every use and saved by MmBackward: every layer's copies without checkpointing,
    the recomputed layer's with full checkpointing, and the head's."""
    adapters = LLAMA2_7B_R16_ALL_LINEAR * 2
    assert _copies(_est()) == adapters
    assert _copies(_est(base_dtype="fp32", checkpointing="full")) == (LAYER_LINEARS + HEAD) * 2 + adapters
    assert _copies(_est(base_dtype="fp32")) == (32 * LAYER_LINEARS + HEAD) * 2 + adapters
    assert _copies(_est(gpus=2, strategy="fsdp-full", base_dtype="fp32")) == 0   # MixedPrecision gathers 16-bit
    assert _copies(_est(gpus=2, strategy="zero2", base_dtype="fp32")) == 0       # DeepSpeed: a 16-bit module


@pytest.mark.parametrize("kw, message", [
    (dict(method="full"), "--base-dtype fp32 is a LoRA/QLoRA setting"),   # qlora: tests/memory/test_qlora_base_dtype.py
    (dict(precision="fp32"), "use it with --precision bf16 or fp16"),
])
def test_base_dtype_fp32_outside_lora_autocast_is_refused(kw, message):
    from advisor.errors import InputError

    with pytest.raises(InputError, match=message):
        _est(base_dtype="fp32", **kw)


@pytest.mark.slow
def test_the_replay_of_an_fp32_base_matches_autograd(harness_kind):
    """Saved bytes and saved weight copies of a real transformers Llama with PEFT LoRA over fp32 weights under
    bf16 autocast (CUDA semantics, benchmarks/harness/kinds/saved.py) against the replay's."""
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.activations import activation_memory
    from advisor.specs import LoraSpec

    from .test_activations import SMALL, _spec

    cfg = SMALL["llama-gqa"]
    arch = architecture_from_hf_config(cfg)
    m = harness_kind("saved").measure_saved(cfg, seq_len=64, batch=1, mode="autocast-bf16", attn="sdpa",
                                              checkpointing="none", method="lora", lora_rank=8)
    est = activation_memory(arch, _spec(seq_len=64, micro_batch_size=1, attention="sdpa",
                                        activation_checkpointing="none", method="lora", lora=LoraSpec(rank=8)),
                            "autocast-bf16")
    assert est.activations == m.total(arch.num_layers)
    # the weight copies one layer saves (its base linears and adapters): within what dsadvise counts per layer
    from advisor.param_count import linear_shapes

    per_layer = m.two.weight_copies - m.one.weight_copies
    linears = sum(i * o * c for i, o, c in linear_shapes(arch).values())
    assert linears * 2 <= per_layer <= (linears + 8 * 18176) * 2   # r=8 adapters: 8 x sum(in + out) = 8 x 18176


def test_qlora_says_what_peft_kbit_preparation_would_upcast():
    """prepare_model_for_kbit_training casts every non-quantized 16-bit parameter to fp32; TRL skips it for sharded
    QLoRA (FSDP, ZeRO-3). Llama-2-7B: embeddings and lm_head 2 x 32000 x 4096, 65 norms x 4096."""
    rest = 2 * 32000 * 4096 + 65 * 4096
    [note] = [n for n in _est(method="qlora").notes if n.startswith("QLoRA's embeddings, norms and lm_head")]
    assert f"{rest * 2 / 2**30:.2f} GiB per GPU here" in note
    for kw in (dict(gpus=2, strategy="fsdp-full"), dict(gpus=2, strategy="zero3")):
        assert not [n for n in _est(method="qlora", **kw).notes if n.startswith("QLoRA's embeddings")]
