"""``--method qlora --base-dtype fp32`` (issue 17): QLoRA whose non-quantized weights (embeddings, norms, the lm_head)
are fp32, as PEFT's ``prepare_model_for_kbit_training`` leaves them (peft/utils/other.py: every non-INT8 /
non-Params4bit 16-bit parameter cast to fp32) or ``from_pretrained(dtype=float32, quantization_config=...)`` loads
them. Expected bytes by hand from the model's shapes; saved bytes against autograd on a real transformers Llama."""

from __future__ import annotations

import pytest

from advisor.api import estimate
from advisor.cli import main
from advisor.errors import InputError

from .test_lora_base_dtype import _copies

# meta-llama/Meta-Llama-3-8B: vocab 128256, hidden 4096, 32 layers, untied lm_head
V, H, L = 128_256, 4096, 32
REST = 2 * V * H + (2 * L + 1) * H          # embed_tokens + lm_head + 65 RMSNorm weights (not quantized)


def _est(**kw):
    base = dict(model="llama-3-8b", gpu="rtx4090", method="qlora", precision="bf16", micro_batch=1, seq_len=512,
                checkpointing="full")
    return estimate(**{**base, **kw})


def test_the_non_quantized_weights_count_twice_and_the_note_goes():
    sixteen, fp32 = _est(), _est(base_dtype="fp32")
    assert fp32.per_gpu.parameters - sixteen.per_gpu.parameters == REST * 2
    assert any(n.startswith("QLoRA's embeddings, norms and lm_head") for n in sixteen.notes)
    assert not any(n.startswith("QLoRA's embeddings, norms and lm_head") for n in fp32.notes)
    # the fp32 lm_head is cast to bf16 at its use and the logits' MmBackward saves the copy (V x h x 2 bytes)
    assert _copies(fp32) - _copies(sixteen) == V * H * 2
    assert fp32.per_gpu.activations > sixteen.per_gpu.activations        # fp32 residual stream
    # DDP: the same per-GPU weights
    assert _est(gpus=2, strategy="ddp", base_dtype="fp32").per_gpu.parameters == fp32.per_gpu.parameters


def test_the_residual_stream_is_fp32_by_hand():
    """Full checkpointing keeps each layer's input (checkpoint's NoopSaveInputs): b x s x h fp32 instead of bf16, 4 - 2
    bytes more per element in each of the 32 layers; the rotary cos/sin tables follow the hidden states' dtype
    (LlamaRotaryEmbedding: ``cos.to(x.dtype)``): 2 tables x s x head_dim(128) x (4 - 2) bytes more."""
    b, s = 1, 512
    sixteen, fp32 = _est().per_gpu.breakdown, _est(base_dtype="fp32").per_gpu.breakdown
    assert fp32["activations: layers"] - sixteen["activations: layers"] == L * b * s * H * 2
    assert fp32["activations: rope_cache"] - sixteen["activations: rope_cache"] == 2 * s * 128 * 2


@pytest.mark.parametrize("kw, needle", [
    (dict(gpus=2, strategy="fsdp-full"), "FSDP shards one storage dtype"),
    (dict(gpus=2, strategy="zero2"), "DeepSpeed casts the module"),
    (dict(gpus=2, strategy="zero3"), "DeepSpeed casts the module"),
])
def test_refused_where_the_upcast_does_not_apply(kw, needle):
    """FSDP / ZeRO-3 skip prepare_model_for_kbit_training (TRL's is_sharded_qlora, axolotl's "same dtype"); DeepSpeed
    fp16/bf16 casts the module to 16 bit (engine.py _configure_distributed_model)."""
    with pytest.raises(InputError, match=needle):
        _est(base_dtype="fp32", **kw)


@pytest.mark.parametrize("argv, needle", [
    (["--strategy", "zero2", "--gpus", "2"], "drop --base-dtype fp32"),
    (["--qlora-quantizer", "lightning", "--precision", "bf16"], "runs no PEFT"),
    (["--precision", "pure-bf16"], "--precision bf16 or fp16"),
    (["--model", "falcon-7b"], "traced"),          # the tracer runs QLoRA as LoRA over nn.Linear: not replayed
])
def test_refusals_are_one_line_exit_2(capsys, argv, needle):
    try:
        code = main(["estimate", "--model", "llama-3-8b", "--gpu", "a100-80g", "--method", "qlora",
                     "--base-dtype", "fp32", *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err


@pytest.mark.parametrize("base_dtype, weights, replayed", [
    ("fp32", "autocast-bf16", "autocast-bf16"),      # fp32 embeddings, norms, lm_head (prepare_model_for_kbit_training)
    ("16-bit", "half-bf16", "autocast16-bf16"),      # loaded with dtype=bfloat16 (LLaMA-Factory, TRL 1.16)
])
def test_the_replay_matches_autograd_on_a_real_llama(harness_kind, base_dtype, weights, replayed):
    """Saved bytes of a real transformers Llama (1 and 2 layers, CUDA semantics: benchmarks/harness/semantics.py)
    whose embeddings, norms and lm_head are fp32 (or bf16) under bf16 autocast, every decoder linear a bitsandbytes
    Linear4bit stand-in wrapped in PEFT's bnb LoRA forward, against the replay's."""
    import torch
    from torch import nn

    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.activations import activation_memory
    from advisor.specs import LoraSpec, TrainingSpec

    saved = harness_kind("saved")
    from benchmarks.harness.models import add_shared_layer, build_model, layer_list
    from benchmarks.harness.semantics import cuda_semantics

    class MatMul4Bit(torch.autograd.Function):
        """bitsandbytes MatMul4Bit (autograd/_functions.py): ``F.linear(A, dequantize_4bit(B).to(A.dtype).t())``,
        keeping A when A or B needs a grad (``ctx.tensors = (A, B)``; here save_for_backward, so that the hooks see
        it; B, the 4-bit parameter, is not an activation). bitsandbytes has no CPU kernel here: the dequantized
        weight is stood in by a frozen 16-bit weight, as the replay does."""

        @staticmethod
        def forward(ctx, a, w):
            ctx.save_for_backward(a)
            ctx.w = w
            return nn.functional.linear(a, w)

        @staticmethod
        def backward(ctx, g):
            return g @ ctx.w.to(g.dtype), None

    class Linear4bit(nn.Module):
        """bitsandbytes nn.Linear4bit.forward: x cast to compute_dtype, matmul_4bit, ``.to(inp_dtype)``."""

        def __init__(self, lin: nn.Linear):
            super().__init__()
            self.weight = nn.Parameter(lin.weight.detach().to(torch.bfloat16), requires_grad=False)

        def forward(self, x):
            inp_dtype = x.dtype
            return MatMul4Bit.apply(x.to(torch.bfloat16), self.weight).to(inp_dtype)

    class LoraLinear4bit(nn.Module):
        """peft/tuners/lora/bnb.py Linear4bit.forward under autocast: ``result = base_layer(x).clone()``, then
        ``result + lora_B(lora_A(dropout(x))) * scaling`` (no input conversion while autocast is on), fp32 adapters
        (autocast_adapter_dtype)."""

        def __init__(self, lin: nn.Linear, r: int):
            super().__init__()
            self.base_layer = Linear4bit(lin)
            self.lora_A = nn.Linear(lin.in_features, r, bias=False, dtype=torch.float32)
            self.lora_B = nn.Linear(r, lin.out_features, bias=False, dtype=torch.float32)
            nn.init.normal_(self.lora_B.weight, std=0.02)

        def forward(self, x):
            result = self.base_layer(x).clone()
            return result + self.lora_B(self.lora_A(x)) * 2.0

    cfg = dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
               num_attention_heads=8, num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=False)
    seq, rank, mode = 64, 8, "autocast-bf16"                     # bf16 autocast over the model's weights
    rest = torch.float32 if base_dtype == "fp32" else torch.bfloat16
    with cuda_semantics(mode, fast_matmul=True):
        model = build_model(cfg, attn="sdpa", mode=weights)       # fp32 weights: the prepared model
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layer_list(model):
            for mod in list(layer.modules()):
                for name, child in list(mod.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(mod, name, LoraLinear4bit(child, rank))
        assert {p.dtype for n, p in model.named_parameters() if "layers" not in n or "norm" in n} == {rest}
        ids = torch.randint(0, cfg["vocab_size"], (1, seq), generator=torch.Generator().manual_seed(0))
        one, out = saved._forward_saved(model, mode, ids)
        del out
        add_shared_layer(model)
        two, out = saved._forward_saved(model, mode, ids)
        del out
    per_layer = two.activations - one.activations
    measured = one.activations - per_layer + cfg["num_hidden_layers"] * per_layer
    arch = architecture_from_hf_config(cfg)
    est = activation_memory(arch, TrainingSpec(seq_len=seq, micro_batch_size=1, attention="sdpa",
                                               activation_checkpointing="none", method="qlora",
                                               lora=LoraSpec(rank=rank),
                                               base_dtype=base_dtype), replayed)
    assert est.breakdown["per_layer"] == per_layer
    assert est.activations == measured
    # weight copies saved: the fp32 lm_head's bf16 cast (what core.py counts for it) and the adapters' cached casts
    # (core.py: trainable x 2), nothing for the 4-bit linears
    head = cfg["vocab_size"] * cfg["hidden_size"] * 2
    adapters = rank * (4 * 512 + 2 * 128 + 3 * (512 + 1408)) * 2            # r x (in + out) of the 7 linears, bf16
    if base_dtype == "fp32":
        assert head <= one.weight_copies <= head + adapters
    else:
        assert one.weight_copies <= adapters


def test_a_recommendation_given_the_setting_assumes_nothing_about_it():
    from advisor.api import build_hardware
    from advisor.recommend import recommend
    from advisor.specs import TrainingSpec

    hw = build_hardware(gpus=1, gpu="rtx4090")
    given = recommend("llama-2-7b", hw, TrainingSpec(seq_len=512, method="qlora", base_dtype="fp32"), method="qlora")
    default = recommend("llama-2-7b", hw, TrainingSpec(seq_len=512), method="qlora")
    assert any(a.startswith("QLoRA's embeddings, norms and lm_head") for a in default.assumptions)
    assert not any(a.startswith("QLoRA's embeddings, norms and lm_head") for a in given.assumptions)
