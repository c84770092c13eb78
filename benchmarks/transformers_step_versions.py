"""One full fine-tuning step of a tiny tied-embedding Llama as PEFT's MetaMathQA run.py runs it, under whatever
transformers is first on sys.path: does a transformers version change what a full fine-tune holds?

Run: python benchmarks/transformers_step_versions.py
     PYTHONPATH=<site with transformers==4.52.4 (+ tokenizers 0.21, huggingface_hub 0.33)> \\
         python benchmarks/transformers_step_versions.py

The model is built from a config (bf16, ``tie_word_embeddings=True`` like Llama-3.2-3B); the step is run.py's:
``zero_grad``, ``model(input_ids, attention_mask, labels, num_items_in_batch)`` (transformers' own causal-LM loss),
``backward``, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (foreach) ``step``. Printed: the bytes autograd saves
for the forward + loss (``saved_tensors_hooks``, one count per storage, parameters excluded) and the peak live bytes
of the whole step above the model states (CPU profiler timeline, benchmarks/harness/profiling.py). Issue 17
(session 9, V), torch 2.13 CPU: transformers 4.52.4 saves 59,819,524 B, step peak 183,086,600 B; 5.24.0 saves
59,033,092 B, step peak 181,906,952 B (both keep one fp32 log_softmax of B x T x V: 49,152,000 B; the 786,432 B
4.52 saves more are its SDPA repeat_kv and q/k/v copies, advisor/data/stacks.yaml sdpa_repeat_kv /
sdpa_contiguous_qkv); the newer transformers holds no more (the PEFT Llama-3.2-3B full fine-tune's +1.5 GiB between its 2025 and 2026 runs is not
a transformers term; see benchmarks/gpu_memory_corpus.yaml peft-mc-llama-3.2-3b-full-l40s).

``--generate``: run.py's evaluation instead, ``model.generate`` under ``inference_mode`` on a left-padded batch of 50
(greedy, a 4-layer tiny Llama, 120 prompt + 60 new tokens): the peak live bytes above the model and the allocation
count. Session 9: 4.52.4 55,297,384 B / 37,838 allocator events, 5.24.0 54,576,424 B / 38,352 (the KV cache at the end:
18,432,000 B): generation allocates the same in both.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate_peak() -> None:
    """``--generate``: run.py ``evaluate``'s ``model.generate`` (batch 50, left padding, greedy) on a tiny Llama."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    sys.path.insert(0, str(ROOT))
    from benchmarks.harness.profiling import live_curve, mark, profiled

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=1024,
                      eos_token_id=2, pad_token_id=2, bos_token_id=1)
    try:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    except TypeError:                                   # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.eval()
    b, p, new = 50, 120, 60
    ids = torch.randint(3, cfg.vocab_size, (b, p))
    mask = torch.ones_like(ids)
    for i in range(b):                                  # tokenizer.pad(..., padding_side="left")
        k = (i * 7) % 40
        ids[i, :k] = 2
        mask[i, :k] = 0
    gc = GenerationConfig(max_length=p + new, do_sample=False, pad_token_id=2, eos_token_id=None)
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
        with profiled() as prof:
            mark()
            model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
            mark()
    curve, marks = live_curve(prof)
    base = curve[marks[0]] - 7_777_777
    peak = max(curve[marks[0] + 2:marks[1]]) - base
    kv = cfg.num_hidden_layers * 2 * b * (p + new) * cfg.num_key_value_heads * (cfg.hidden_size // 4) * 2
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: generate peak above the model "
          f"{peak:,} B over {marks[1] - marks[0]:,} allocator events; KV cache at the end {kv:,} B")


def main() -> None:
    if "--generate" in sys.argv[1:]:
        generate_peak()
        return
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(ROOT))
    from benchmarks.harness.profiling import live_curve, mark, profiled

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=512)
    try:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    except TypeError:                                   # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, t, v = 4, 96, cfg.vocab_size
    ids = torch.randint(0, v, (b, t))
    labels = ids.clone()
    labels[:, -5:] = -100
    mask = torch.ones_like(ids)
    kw = dict(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=int(mask.sum()))

    def step():
        opt.zero_grad()
        out = model(**kw)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()                                              # AdamW's lazy states, as every step after the first
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        st = x.untyped_storage()
        if st.data_ptr() not in params:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = model(**kw)
    out.loss.backward()
    del out
    with profiled() as prof:
        mark()
        step()
        mark()
    curve, marks = live_curve(prof)
    base = curve[marks[0]] - 7_777_777
    peak = max(curve[marks[0] + 2:marks[1]]) - base
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: tied {tied}, saved "
          f"{sum(seen.values()):,} B, step peak above the model states {peak:,} B (B x T x V x 4 = {b * t * v * 4:,})")


if __name__ == "__main__":
    main()
