"""``--qlora-quantizer lightning`` (issue 17, L): litgpt's QLoRA, whose lightning BitsandbytesPrecision quantizes
every nn.Linear, the lm_head included, from fp16. Expected bytes derived by hand from the sources the estimator
cites (lightning 2.3 ``_Linear4bit.quantize``: ``weight.to(torch.half)``; bitsandbytes 0.42.0 ``MatMul4Bit``:
``dequantize_4bit(B).to(A.dtype)``, input kept when it requires grad); refusals are one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from advisor.api import estimate
from advisor.catalog.models import resolve_model
from advisor.cli import main
from advisor.memory.activations import activation_memory
from advisor.memory.bytes_per_param import NF4_BYTES
from advisor.specs import LoraSpec, TrainingSpec

GEMMA_UNTIED = str(Path(__file__).resolve().parents[2] / "benchmarks/corpus_configs/litgpt-gemma-2b.json")
KW = dict(gpus=1, gpu="a10g", method="qlora", precision="pure-bf16", micro_batch=2, seq_len=512, double_quant=False,
          lora_rank=16, lora_targets=("all-linear", "lm_head"))


def test_the_head_is_nf4_and_its_dequantized_copies_are_counted():
    arch = resolve_model(GEMMA_UNTIED).architecture
    V, h = arch.vocab_size, arch.hidden_size
    hf = estimate(GEMMA_UNTIED, **KW)
    lit = estimate(GEMMA_UNTIED, qlora_quantizer="lightning", **KW)
    # weights: the V x h head NF4 (4.5 bits without double quantization) instead of bf16
    assert hf.per_gpu.parameters - lit.per_gpu.parameters == pytest.approx(V * h * (2 - NF4_BYTES), abs=1)
    spec = dict(seq_len=512, micro_batch_size=2, method="qlora", precision="pure-bf16", double_quant=False,
                lora=LoraSpec(rank=16, target_modules=("all-linear", "lm_head")))
    a_hf = activation_memory(arch, TrainingSpec(**spec), "half-bf16")
    a_lit = activation_memory(arch, TrainingSpec(**spec, qlora_quantizer="lightning"), "half-bf16")
    # the head's MatMul4Bit keeps its bf16 input (N x h) where the frozen 16-bit nn.Linear keeps none
    assert a_lit.activations - a_hf.activations == 2 * 512 * h * 2
    # each dequantization: an fp16 copy and its bf16 cast, for the head at the loss moment and for the largest
    # decoder linear at the layer moment
    assert a_lit.breakdown["info:qlora_dequantized_lm_head"] == V * h * (2 + 2)
    assert a_lit.breakdown["info:qlora_dequantized_weight"] == 2 * a_hf.breakdown["info:qlora_dequantized_weight"]
    assert a_lit.breakdown["temp:logits_and_loss_backward"] >= a_hf.breakdown["temp:logits_and_loss_backward"] + V * h * 4
    assert any("lightning" in n for n in lit.notes)


@pytest.mark.parametrize("argv,needle", [
    (["--model", GEMMA_UNTIED, "--method", "lora"], "--method qlora"),
    (["--model", GEMMA_UNTIED, "--method", "qlora", "--gpus", "2"], "multi-GPU"),
    (["--model", GEMMA_UNTIED, "--method", "qlora", "--precision", "bf16"], "mixed precision"),
    (["--model", "gemma-2b", "--method", "qlora"], "tie_word_embeddings"),
    (["--model", "falcon-7b", "--method", "qlora"], "traced"),
])
def test_runs_litgpt_would_not_run_are_one_line_exit_2(capsys, argv, needle):
    try:
        code = main(["estimate", "--gpu", "a10g", "--qlora-quantizer", "lightning", "--precision", "pure-bf16",
                     *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle in err


@pytest.mark.parametrize("command", ["recommend", "generate"])
def test_recommend_and_generate_refuse_it(capsys, command, tmp_path):
    argv = [command, "--model", GEMMA_UNTIED, "--gpu", "a10g", "--method", "qlora", "--qlora-quantizer", "lightning"]
    if command == "generate":
        argv += ["--out", str(tmp_path / "out")]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "--qlora-quantizer" in err and len(err.strip().splitlines()) == 1
