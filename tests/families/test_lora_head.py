"""LoRA on the lm_head (issue 17, L): ``--lora-targets ...,lm_head``.

Adapter elements against a real ``peft.get_peft_model`` on transformers models built from small configs (tied and
untied heads, OPT's narrower head input, GPT-2's Conv1D decoder, a traced family outside the registry); the bytes
autograd saves against the tracer, which runs the real transformers model wrapped by PEFT under fake tensors with
``saved_tensors_hooks`` and CUDA's dropout/autocast semantics (advisor/trace/cuda_semantics.py, the harness's
patch); the backward transient against the tracer's allocation record; the chunked loss against the plain one.
"""

from __future__ import annotations

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.memory.activations import activation_memory
from advisor.param_count import lora_trainable_parameters
from advisor.specs import LoraSpec, TrainingSpec

pytest.importorskip("peft")
pytest.importorskip("transformers")

from advisor.trace import TraceSettings, trace_model  # noqa: E402
from advisor.trace.tracer import trace_parameters  # noqa: E402

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, vocab_size=512)
CFG = {
    "llama": dict(SMALL, model_type="llama", num_key_value_heads=2, tie_word_embeddings=False),
    "gemma": dict(SMALL, model_type="gemma", num_key_value_heads=1, head_dim=16),            # tied
    "phi3": dict(SMALL, model_type="phi3", num_key_value_heads=4, tie_word_embeddings=False, resid_pdrop=0.0,
                 embd_pdrop=0.0, attention_dropout=0.0, pad_token_id=0),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=3, n_head=4, n_positions=256, vocab_size=512,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),                          # tied, Conv1D
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=512, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
                do_layer_norm_before=False, pad_token_id=1),                                # head input 32
}
R = 8


@pytest.mark.parametrize("name", sorted(CFG))
@pytest.mark.parametrize("targets", [("lm_head",), ("all-linear", "lm_head")])
def test_adapter_elements_equal_peft(name, targets):
    cfg = CFG[name]
    arch = architecture_from_hf_config(cfg)
    peft = trace_parameters(cfg, TraceSettings(seq_len=1, method="lora", lora_rank=R, lora_targets=targets),
                            use_cache=False).trainable
    assert lora_trainable_parameters(arch, R, targets) == peft
    if targets == ("lm_head",):   # lora_A r x in, lora_B vocab x r; nothing on a tied embedding (PEFT's default)
        width = cfg.get("word_embed_proj_dim") or cfg.get("hidden_size") or cfg["n_embd"]
        assert peft == R * (width + cfg["vocab_size"])


@pytest.mark.parametrize("name", ["gpt2", "opt", "phi3"])
def test_rendered_target_list_adapts_what_was_counted(name):
    """all-linear next to lm_head is written out as module names (PEFT matches a list's entries by name); PEFT on
    the real model with that list adapts exactly the counted elements."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from advisor.catalog.models import ResolvedModel
    from advisor.render.frameworks.common import native_lora_targets

    cfg = dict(CFG[name])
    arch = architecture_from_hf_config(cfg)
    names = native_lora_targets(ResolvedModel(name=name, architecture=arch, source="config", note=""), ("all-linear", "lm_head"))
    assert "all-linear" not in names and "lm_head" in names
    model_type = cfg.pop("model_type")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
    peft = get_peft_model(model, LoraConfig(r=R, target_modules=list(names), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert trainable == lora_trainable_parameters(arch, R, ("all-linear", "lm_head"))


SAVED = [  # family, mode, targets, lora dropout
    ("llama", "half-bf16", ("q_proj", "v_proj", "lm_head"), 0.1),
    ("llama", "autocast-bf16", ("all-linear", "lm_head"), 0.1),
    ("llama", "fp32", ("lm_head",), 0.0),
    ("gemma", "half-bf16", ("all-linear", "lm_head"), 0.1),
    ("phi3", "autocast-bf16", ("all-linear", "lm_head"), 0.05),
    ("gpt2", "fp32", ("all-linear", "lm_head"), 0.1),
]
PRECISION = {"fp32": "fp32", "half-bf16": "pure-bf16", "autocast-bf16": "bf16"}


def _spec(mode, targets, dropout, **kw):
    return TrainingSpec(seq_len=40, method="lora", precision=PRECISION[mode],
                        lora=LoraSpec(rank=R, target_modules=targets, dropout=dropout), **kw)


@pytest.mark.parametrize("name,mode,targets,dropout", SAVED, ids=["-".join(map(str, c[:3])) for c in SAVED])
def test_saved_bytes_equal_the_trace(name, mode, targets, dropout):
    """Byte for byte: the head's lora_A saves its (fp32, dropped) input and lora_B the r-wide output, one dropout
    mask per adapter when its input needs a gradient; the held logits are the LoRA-added ones."""
    cfg = CFG[name]
    est = activation_memory(architecture_from_hf_config(cfg), _spec(mode, targets, dropout), mode)
    traced = trace_model(cfg, TraceSettings(seq_len=40, mode=mode, method="lora", lora_rank=R, lora_targets=targets,
                                            lora_dropout=dropout), use_cache=False)
    assert est.activations == traced.activations
    assert est.breakdown["info:logits_output_held"] == traced.logits_held


@pytest.mark.parametrize("mode", ["fp32", "half-bf16"])
def test_backward_transient_with_the_head_adapter_is_not_under_the_trace(mode):
    """The loss/head backward (vocabulary-sized fp32 gradients of the LoRA path) against the tracer's allocation
    record at a vocabulary where that moment is the peak. The replay and the trace differ by the same few bytes
    without the head adapter; with it the replay may only be higher, by less than 1 %."""
    cfg = dict(CFG["llama"], vocab_size=4096)
    arch = architecture_from_hf_config(cfg)
    diffs = []
    for targets in (("q_proj", "v_proj"), ("q_proj", "v_proj", "lm_head")):
        est = activation_memory(arch, _spec(mode, targets, 0.1), mode)
        traced = trace_model(cfg, TraceSettings(seq_len=40, mode=mode, method="lora", lora_rank=R,
                                                lora_targets=targets, lora_dropout=0.1), use_cache=False)
        diffs.append((est.temporaries - traced.temporaries, traced.temporaries))
    (plain, _), (head, measured) = diffs
    assert plain <= head <= plain + 0.01 * measured


@pytest.mark.parametrize("mode", ["fp32", "half-bf16"])
def test_chunked_loss_saves_what_the_plain_one_saves_for_the_adapter(mode):
    """The head applied per chunk (torchtune, litgpt's lm_head_chunk_size): each chunk's lora_A / lora_B save their
    slices, together what the plain loss's single call saves (checked against the trace above): N x (h + r) fp32
    (+ an N x h bool mask with dropout, the head input requiring grad under all-linear)."""
    arch = architecture_from_hf_config(CFG["llama"])
    N, h = 40, 64

    def saved(loss, targets):
        return activation_memory(arch, _spec(mode, targets, 0.1, loss=loss, loss_chunks=4), mode).activations

    base, head = ("all-linear",), ("all-linear", "lm_head")
    assert saved("plain", head) - saved("plain", base) == N * (h + R) * 4 + N * h
    assert saved("chunked", head) - saved("chunked", base) == N * (h + R) * 4 + N * h


def test_fused_linear_loss_with_the_head_adapter_is_refused():
    from advisor.errors import InputError
    from advisor.memory.core import check_lora_head

    with pytest.raises(InputError, match="lm_head.weight"):
        check_lora_head(_spec("half-bf16", ("all-linear", "lm_head"), 0.0, loss="fused-linear"))
    check_lora_head(_spec("half-bf16", ("all-linear",), 0.0, loss="fused-linear"))   # no head adapter: fine


def test_the_adapted_head_forward_moment_above_the_saved_set():
    """Plain loss, fp32: base logits, lora_B's scaled output and their sum are alive at once (none saved), before
    log_softmax saves its N x V result and nll_loss its targets (N + 1 at batch 1) and total_weight. Measured on the
    CPU allocator at real width: benchmarks/loss_kernels.py --lora-head 16 (forward peak +0.5 %, the input's 2 MiB)."""
    from advisor.memory import activations as act

    arch = architecture_from_hf_config(CFG["llama"])
    N, V = 40, CFG["llama"]["vocab_size"]
    terms = act._trace_model(arch, act._trace_key(_spec("fp32", ("all-linear", "lm_head"), 0.0)), "fp32", "none")
    assert terms["forward_end"] == 3 * N * V * 4 - (N * V * 4 + (N + 1) * 8 + 4)
    plain = act._trace_model(arch, act._trace_key(_spec("fp32", ("all-linear",), 0.0)), "fp32", "none")
    assert plain["forward_end"] == 0
