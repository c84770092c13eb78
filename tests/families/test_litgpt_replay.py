"""``--model-code litgpt`` (issue 17, G): the activation replay of litgpt's own GPT (advisor/families/litgpt_replay.py).

The saved bytes expected here were measured on litgpt's real model code (litgpt fd71063c, lightning 2.3.0,
bitsandbytes NF4 with 0.42.0's MatMul4Bit) by ``python benchmarks/litgpt_saved.py --bytes --seq 32`` (CPU, CUDA
dropout masks, the model called through lightning's real ``_FabricModule``, whose ``convert_output`` hands the loss
fp32 logits; see its docstring): one decoder layer at index >= 1 and the head (final norm, lm_head chunks,
chunked_cross_entropy), in bytes. litgpt is not a test dependency (it pins lightning, which would pull its own
torch), so the comparison with the live model stays in the benchmark and the numbers it printed are recorded here.
The QLoRA previous-graph term and the refusals are derived by hand from the sources they cite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advisor.api import build_hardware, build_strategy, build_training, estimate
from advisor.catalog.models import resolve_model
from advisor.cli import main
from advisor.memory.activations import _trace_key, _traced, activation_memory

# (catalog model, method, micro batch, lora targets, lora rank, lora dropout) -> (layer, head) bytes at seq 32,
# measured: python benchmarks/litgpt_saved.py --bytes --seq 32 --only <point>
CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "corpus_configs"
SEQ = 32
ALL = ("all-linear", "lm_head")
QV = ("q_proj", "v_proj")


def _ln(n_tokens: int) -> int:
    """CUDA's native_layer_norm keeps mean and rstd in fp32 where the CPU kernel keeps them in bf16 (the input
    dtype): 2 x 2 bytes more per token per LayerNorm."""
    return 4 * n_tokens


MASK = SEQ * SEQ * 2   # litgpt's sliding-window mask: CUDA's memory-efficient SDPA keeps it (attn_bias); CPU's does not

MEASURED = {
    # corpus point: (model, method, micro batch, targets, rank, dropout), (layer, head) bytes measured + CUDA deltas
    "tiny-llama-full": (("tiny-llama-1.1b", "full", 4, ALL, 16, 0.0), (13665280, 18503148)),
    "tiny-llama-lora": (("tiny-llama-1.1b", "lora", 8, ALL, 32, 0.05), (27822080, 35441612)),
    "tiny-llama-qlora": (("tiny-llama-1.1b", "qlora", 8, ALL, 32, 0.05), (33851392, 36490188)),
    "phi-2-lora": (("phi-2", "lora", 4, ALL, 8, 0.05), (14119424 + _ln(128), 27037164 + _ln(128))),
    "phi-2-qlora": (("phi-2", "qlora", 4, ALL, 8, 0.05), (18051584 + _ln(128), 27692524 + _ln(128))),
    "llama-2-7b-lora": (("llama-2-7b", "lora", 2, QV, 32, 0.05), (11354624, 9001724)),
    "llama-2-7b-qlora": (("llama-2-7b", "qlora", 2, QV, 32, 0.05), (14336512, 9526012)),
    "mistral-7b-lora": (("mistral-7b-v0.1", "lora", 2, QV, 32, 0.05), (11190784 + MASK, 9001724)),
    "phi-3-lora": (("phi-3-mini-4k", "lora", 4, ALL, 8, 0.05), (22076416 + MASK, 18672108)),
    "gemma-2b-lora": (("litgpt-gemma-2b.json", "lora", 2, ALL, 8, 0.1), (13198848, 64415484)),
    "falcon-7b-lora": (("litgpt-falcon-7b.json", "lora", 1, QV, 32, 0.05), (3369984 + _ln(32), 8354188 + _ln(32))),
    "falcon-7b-qlora": (("litgpt-falcon-7b.json", "qlora", 1, QV, 32, 0.05), (5114880 + _ln(32), 8645004 + _ln(32))),
    "stablelm-3b-lora": (("stablelm-base-alpha-3b", "lora", 1, QV, 32, 0.05),
                         (3809536 + 2 * _ln(32), 6547852 + _ln(32))),
}


def _terms(model: str, method: str, mb: int, targets, rank: int, dropout: float, seq: int = SEQ):
    hw = build_hardware(1, 1, None, "a10g", None, None, None)
    training = build_training(hw, seq_len=seq, micro_batch=mb, precision="pure-bf16", method=method,
                              lora_rank=rank, lora_targets=targets, lora_dropout=dropout, double_quant=False,
                              model_code="litgpt")
    model = str(CONFIGS / model) if model.endswith(".json") else model
    t = _traced(resolve_model(model).architecture, _trace_key(training), "half-bf16", "none")
    return t["per_layer"], t["final_norm"] + t["logits_and_loss"]


@pytest.mark.parametrize("point", sorted(MEASURED))
def test_replay_equals_litgpt_saved_bytes(point):
    (model, method, mb, targets, rank, dropout), (layer, head) = MEASURED[point]
    assert _terms(model, method, mb, targets, rank, dropout) == (layer, head)


def test_previous_micro_steps_4bit_inputs_are_alive_through_the_forward():
    """bitsandbytes 0.42.0 MatMul4Bit keeps A in ctx.tensors (autograd/_functions.py), alive while litgpt's loop holds
    ``loss``: every 4-bit linear's input that needs a gradient, per layer attn (h), proj (h), fc_1/fc_2 (one h
    tensor), mlp proj (i), bf16; layer 0's attn input needs none (frozen embedding); plus the lm_head's (h)."""
    arch = resolve_model("llama-2-7b").architecture
    h, i, n = arch.hidden_size, arch.intermediate_size, arch.num_layers
    hw = build_hardware(1, 1, None, "a10g", None, None, None)
    kw = dict(seq_len=512, micro_batch=2, precision="pure-bf16", method="qlora", lora_rank=32,
              lora_targets=("q_proj", "v_proj"), lora_dropout=0.05, double_quant=False)
    lit = activation_memory(arch, build_training(hw, model_code="litgpt", **kw), "half-bf16")
    N = 2 * 512
    assert lit.breakdown["info:previous_step_graph"] == ((n - 1) * (3 * h + i) + (2 * h + i) + h) * 2 * N
    # counted at the forward's end, with the held chunk logits above the saved set: fp32 (N x V x 4), as lightning's
    # _FabricModule returns them (precision.convert_output casts the bf16 chunks to the default dtype, fp32)
    held = N * arch.vocab_size * 4
    assert lit.breakdown["info:logits_output_held"] == held
    assert lit.breakdown["temp:logits_and_loss_backward"] >= lit.breakdown["info:previous_step_graph"] + held


def test_lora_rows_keep_transformers_model_code_by_default():
    kw = dict(gpus=1, gpu="a10g", method="lora", precision="pure-bf16", micro_batch=1, seq_len=256,
              lora_rank=8, lora_targets=("q_proj", "v_proj"))
    hf = estimate("tiny-llama-1.1b", **kw)
    lit = estimate("tiny-llama-1.1b", model_code="litgpt", **kw)
    assert not any("model code: litgpt" in n for n in hf.notes)
    assert any(n.startswith("model code: litgpt") for n in lit.notes)
    assert hf.per_gpu.total != lit.per_gpu.total


BASE = ["estimate", "--model", "tiny-llama-1.1b", "--gpu", "a10g", "--precision", "pure-bf16", "--seq-len", "256",
        "--model-code", "litgpt"]


@pytest.mark.parametrize("extra, needle", [
    (["--method", "lora", "--attention", "eager"], "--attention sdpa"),
    (["--method", "lora", "--precision", "bf16"], "bf16-true"),
    (["--method", "lora", "--checkpointing", "full"], "--checkpointing none"),
    (["--method", "freeze"], "not freeze"),
    (["--method", "lora", "--lora-targets", "gate_proj"], "lora_mlp adapts every MLP linear"),
    (["--method", "lora", "--loss", "fused-linear"], "chunked_cross_entropy"),
    (["--method", "lora", "--strategy", "zero2", "--gpus", "2"], "not DeepSpeed"),
    (["--model", "mixtral-8x7b", "--method", "lora"], "MoE"),
])
def test_runs_litgpt_does_not_run_are_one_line_exit_2(capsys, extra, needle):
    argv = list(BASE)
    if "--model" in extra:
        argv[2] = extra[extra.index("--model") + 1]
        extra = [e for j, e in enumerate(extra) if e != "--model" and (j == 0 or extra[j - 1] != "--model")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_the_json_says_which_model_code(capsys):
    assert main(BASE + ["--method", "qlora", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("model code: litgpt") and "bitsandbytes 0.42.0" in n for n in notes)


def test_fabric_returns_fp32_chunk_logits_the_bf16_ones_alive_until_all_are_cast():
    """lightning ``_FabricModule.forward`` returns ``precision.convert_output(output)``: ``apply_to_collection`` casts
    every bf16 chunk of the list to fp32 (the default dtype once the forward context exited) while the old list
    still holds the bf16 chunks; then they die (ToCopyBackward saves nothing). So right after the last fp32 chunk
    is allocated, all bf16 chunks and all fp32 chunks are alive: 1 x 128 tokens x V x (2 + 4) bytes per chunk, by
    hand from lightning/fabric/wrappers.py and plugins/precision/half.py (2.3.0)."""
    from advisor.memory.activations import allocation_trace, allocation_key

    arch = resolve_model("llama-2-7b").architecture
    hw = build_hardware(1, 1, None, "a10g", None, None, None)
    training = build_training(hw, seq_len=512, micro_batch=1, precision="pure-bf16", method="lora", lora_rank=8,
                              lora_targets=QV, lora_dropout=0.0, model_code="litgpt")
    key, ckpt = allocation_key(arch, training)
    events = allocation_trace(arch, key, "half-bf16", ckpt, 2)
    V, chunks = arch.vocab_size, 512 // 128
    bf16, fp32 = 128 * V * 2, 128 * V * 4
    live: dict = {}
    seen_fp32 = 0
    for op, k, n in events:
        if op == "a":
            live[k] = n
            seen_fp32 += n == fp32
            if seen_fp32 == chunks:
                break
        elif op == "f":
            live.pop(k, None)
    sizes = list(live.values())
    assert sizes.count(fp32) == chunks and sizes.count(bf16) == chunks
    # and once the loss runs, the bf16 chunks are gone: only the fp32 ones stay held through the backward
    after = {k: n for k, n in live.items()}
    i = [j for j, (op, k, n) in enumerate(events) if op == "a" and n == fp32][chunks - 1]
    for op, k, n in events[i + 1:]:
        if op == "m":
            break
        if op == "a":
            after[k] = n
        elif op == "f":
            after.pop(k, None)
    assert list(after.values()).count(bf16) == 0 and list(after.values()).count(fp32) >= chunks
