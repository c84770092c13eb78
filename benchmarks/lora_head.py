"""LoRA on the lm_head (issue 17, L) against the real model: run ``python benchmarks/lora_head.py``.

For small configs of several families (tied and untied heads, GPT-2's Conv1D decoder) and each compute mode, with
and without LoRA dropout: the adapter elements PEFT 0.21's get_peft_model builds (meta device) against
advisor.param_count; the bytes autograd saves and the backward transient (``temporaries``) of the tracer (the
real transformers model wrapped by PEFT under fake tensors, ``saved_tensors_hooks``, CUDA's dropout and autocast
semantics: advisor/trace) against the replay (advisor/memory/activations.py); the forward allocation totals of
both. Prints markdown. Nothing is fitted; the same cases are held byte for byte by tests/families/test_lora_head.py.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from advisor.hf_config import architecture_from_hf_config  # noqa: E402
from advisor.memory.activations import activation_memory  # noqa: E402
from advisor.param_count import lora_trainable_parameters  # noqa: E402
from advisor.specs import LoraSpec, TrainingSpec  # noqa: E402
from advisor.trace import TraceSettings, trace_model  # noqa: E402
from advisor.trace.tracer import trace_parameters  # noqa: E402
from benchmarks.replay_vs_trace import forward_allocated  # noqa: E402

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, vocab_size=2048)
CFG = {
    "llama (untied)": dict(SMALL, model_type="llama", num_key_value_heads=2, tie_word_embeddings=False),
    "gemma (tied)": dict(SMALL, model_type="gemma", num_key_value_heads=1, head_dim=16),
    "phi3 (fused qkv)": dict(SMALL, model_type="phi3", num_key_value_heads=4, tie_word_embeddings=False,
                             resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, pad_token_id=0),
    "gpt2 (tied, Conv1D)": dict(model_type="gpt2", n_embd=64, n_layer=3, n_head=4, n_positions=256, vocab_size=2048,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}
MODES = {"fp32": "fp32", "half-bf16": "pure-bf16", "autocast-bf16": "bf16"}
TARGETS = [("lm_head",), ("all-linear", "lm_head")]
SEQ, R = 40, 8


def row(name: str, cfg: dict, mode: str, targets: tuple[str, ...], dropout: float) -> str:
    arch = architecture_from_hf_config(cfg)
    spec = TrainingSpec(seq_len=SEQ, method="lora", precision=MODES[mode],
                        lora=LoraSpec(rank=R, target_modules=targets, dropout=dropout))
    start = time.perf_counter()
    traced = trace_model(cfg, TraceSettings(seq_len=SEQ, mode=mode, method="lora", lora_rank=R, lora_targets=targets,
                                            lora_dropout=dropout), use_cache=False)
    seconds = time.perf_counter() - start
    replay = activation_memory(arch, spec, mode)
    fwd_trace, fwd_replay = forward_allocated(arch, spec, mode, traced)
    return (f"| {name} | {mode} | {','.join(targets)} | {dropout} | {traced.activations:,} | {replay.activations:,} | "
            f"{replay.activations - traced.activations:+,} | {traced.temporaries:,} | {replay.temporaries:,} | "
            f"{replay.temporaries - traced.temporaries:+,} | {fwd_trace:,} | {fwd_replay:,} | {seconds:.1f} |")


def main() -> None:
    print("| model | adapter elements, PEFT 0.21 (lm_head) | dsadvise | PEFT (all-linear,lm_head) | dsadvise |")
    print("|---|---|---|---|---|")
    for name, cfg in CFG.items():
        arch = architecture_from_hf_config(cfg)
        cells = []
        for targets in TARGETS:
            peft = trace_parameters(cfg, TraceSettings(seq_len=1, method="lora", lora_rank=R, lora_targets=targets),
                                    use_cache=False).trainable
            cells += [f"{peft:,}", f"{lora_trainable_parameters(arch, R, targets):,}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("| model | mode | targets | lora dropout | saved traced B | saved replayed B | replay - trace | "
          "temporaries traced | replayed | replay - trace | fwd alloc traced (prefix) | replayed | trace s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cfg in CFG.items():
        for mode in MODES:
            for targets in TARGETS:
                for dropout in (0.0, 0.1):
                    print(row(name, cfg, mode, targets, dropout), flush=True)


if __name__ == "__main__":
    main()
