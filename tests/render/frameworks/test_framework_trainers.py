"""The rendered TRL / HF Trainer files are accepted by the real trainers: each ``--loss`` choice either renders a
file from which TRL's SFTTrainer (``trl sft``'s TrlParser over ScriptArguments, SFTConfig, ModelConfig) and the
HF Trainer (``HfArgumentParser(TrainingArguments)``) are built on the CPU, around a tiny LLaMA made from a config
and a tokenizer built here (no hub), and run one optimizer step, or is refused by ``generate`` with one line
naming the framework's rule. TRL 1.16 refuses Liger's fused linear cross-entropy
(trl/trainer/sft_trainer.py SFTTrainer.__init__), which ``--framework trl --loss fused-linear`` rendered before.
"""

from __future__ import annotations

import pytest
import yaml

from advisor.errors import InputError

from .conftest import plan_scenario

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

ARGV = ("--model llama-2-7b --gpus 1 --vram 80 --strategy single --micro-batch 2 --seq-len 32 --checkpointing full "
        "--loss {loss}")
LOSSES = ("trl-head", "plain", "chunked", "fused-linear")   # trl-head: --framework trl's default


def _render(argv: str, framework: str) -> dict[str, str]:
    """The rendered files, or the refusal's InputError (as conftest's plan_scenario, without its TRL rewrite)."""
    import shlex

    from advisor.cli import build_parser
    from advisor.cli.configs import plan
    from advisor.render.frameworks import render_framework

    args = build_parser().parse_args(["generate", *shlex.split(argv), "--framework", framework, "--out", "/x"])
    model, hw, training, strategy, gas, _ = plan(args)
    return render_framework(model, hw, training, strategy, framework, gradient_accumulation_steps=gas)


def _tiny(dtype: str = "float32", attn: str = "sdpa"):
    """A 2-layer LLaMA from a config and a word-level tokenizer over its 64 tokens, and 8 short texts."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(62)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype), attn_implementation=attn)
    texts = Dataset.from_dict({"text": [" ".join(f"w{(i * j + 3) % 62}" for j in range(24)) for i in range(8)]})
    return model, tokenizer, texts


@pytest.mark.parametrize("loss", LOSSES)
def test_trl_sft_trainer_takes_the_rendered_config(loss, tmp_path, monkeypatch):
    from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser

    try:
        files = _render(ARGV.format(loss=loss), "trl")
    except InputError as err:       # a combination TRL cannot run: one line naming its rule
        assert loss != "plain" and err.field == "--loss" and "\n" not in str(err)
        assert "SFTTrainer refuses" in str(err) if loss == "fused-linear" else "no key" in str(err)
        return
    (tmp_path / "trl_sft.yaml").write_text(files["trl_sft.yaml"])
    monkeypatch.chdir(tmp_path)
    _, args, margs = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        ["--config", "trl_sft.yaml", "--use_cpu", "true", "--max_steps", "1", "--save_strategy", "no"])
    model, tokenizer, texts = _tiny(margs.dtype, margs.attn_implementation)
    trainer = SFTTrainer(model=model, args=args, train_dataset=texts, processing_class=tokenizer)   # __init__'s rules
    if loss == "trl-head":          # the default render: one step (plain renders the same TRL keys)
        out = trainer.train()
        assert out.global_step == 1 and torch.isfinite(torch.tensor(out.training_loss))


@pytest.mark.parametrize("loss", LOSSES)
def test_hf_trainer_takes_the_rendered_arguments(loss, tmp_path, monkeypatch):
    import transformers.trainer
    from transformers import DataCollatorForLanguageModeling, HfArgumentParser, Trainer, TrainingArguments

    try:
        files = _render(ARGV.format(loss=loss), "hf-trainer")
    except InputError as err:
        assert loss in ("chunked", "trl-head") and err.field == "--loss" and "\n" not in str(err)
        return
    data = yaml.safe_load(files["hf_trainer_args.yaml"])
    margs = yaml.safe_load(files["hf_model_args.yaml"])
    data.update(use_cpu=True, max_steps=1, save_strategy="no", output_dir=str(tmp_path / "out"))
    (args,) = HfArgumentParser(TrainingArguments).parse_dict(data)
    applied = []
    # Liger is not installed here: Trainer.train's call is recorded (the config it hands Liger), the step runs without
    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel", lambda model, cfg: applied.append(cfg))
    model, tokenizer, texts = _tiny(margs["dtype"], margs["attn_implementation"])
    rows = texts.map(lambda r: tokenizer(r["text"], truncation=True, max_length=margs["max_seq_length"]),
                     remove_columns=["text"])
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    out = trainer.train()
    assert out.global_step == 1 and torch.isfinite(torch.tensor(out.training_loss))
    assert applied == ([{"fused_linear_cross_entropy": True, "cross_entropy": False, "rms_norm": False,
                         "swiglu": False, "rope": False}] if loss == "fused-linear" else [])


def test_generate_says_how_trl_is_estimated(tmp_path, capsys):
    """--framework trl: the notes (JSON assumptions) say TRL's loss is its fused LM head, estimated as such;
    --preset minimal's fused-linear loss is left out for TRL (said), not refused."""
    import json

    from advisor.cli import main

    code = main(["generate", "--model", "llama-3.1-8b", "--gpus", "1", "--vram", "24", "--preset", "minimal",
                 "--strategy", "single", "--framework", "trl", "--out", str(tmp_path / "g"), "--no-engine-check", "--json"])
    notes = json.loads(capsys.readouterr().out)["assumptions"]
    assert code == 0
    assert any("--loss fused-linear left out" in n for n in notes)
    assert any("own tiled fused LM head" in n and "estimated as --loss trl-head" in n for n in notes)
    assert "estimated as --loss trl-head" in (tmp_path / "g" / "trl_sft.yaml").read_text().splitlines()[1]


@pytest.mark.parametrize("argv", [
    "--model llama-3.1-8b --gpus 1 --vram 80 --strategy single --method lora --micro-batch 2 --seq-len 2048",
    "--model llama-2-7b --gpus 1 --vram 80 --strategy single --micro-batch 1 --seq-len 8192",
    "--model llama-2-7b --gpus 2 --vram 80 --strategy zero2 --micro-batch 1 --seq-len 512",
])
def test_trl_head_estimate_is_trls_head(argv):
    """--framework trl estimates with --loss trl-head: the replay's head terms are trl.py's trl_head_bytes
    (measured against TRL's ChunkedLogProbFunction in benchmarks/trl_loss.py)."""
    from advisor.memory import activations as act
    from advisor.render.frameworks.common import build_run
    from advisor.render.frameworks.trl import trl_head_bytes

    model, hw, training, strategy, gas, _ = plan_scenario(argv, "trl")
    assert training.loss == "trl-head"
    from advisor.memory.core import activation_mode

    terms = act._trace_model(model.architecture, act._trace_key(training), activation_mode(training, strategy), "none")
    saved, transient = trl_head_bytes(build_run("trl", model, hw, training, strategy, gradient_accumulation_steps=gas))
    assert terms["logits_and_loss"] == saved and terms["logits_held"] == 0
    assert max(terms["bw_head"], terms["forward_end"]) == pytest.approx(transient, rel=0.01)


def test_check_names_what_trls_sft_trainer_refuses(tmp_path):
    """check: a TRL file asking for Liger's fused linear cross-entropy or a LoRA on lm_head is an error (what
    SFTTrainer.__init__ raises on; main rendered the first for --loss fused-linear)."""
    from advisor.render.lint import Problem, lint_file

    path = tmp_path / "trl_sft.yaml"
    path.write_text("dataset_name: trl-lib/Capybara\nmodel_name_or_path: m\noutput_dir: out\nmax_length: 512\n"
                    "per_device_train_batch_size: 2\nuse_liger_kernel: true\nliger_kernel_config:\n"
                    "  fused_linear_cross_entropy: true\nuse_peft: true\nlora_target_modules: [q_proj, lm_head]\n")
    errors = {f.setting for f in lint_file(path, Problem(gpus=1, engines=False)) if f.severity == "error"}
    assert {"liger_kernel_config", "lora_target_modules"} <= errors
