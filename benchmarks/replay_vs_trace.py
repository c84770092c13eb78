"""GPT-OSS and Llama-4 replays against the tracer (issue 14, A1): run ``python benchmarks/replay_vs_trace.py``.

For each family at reduced width (tests/families/test_gpt_oss.py, tests/families/test_llama4_text.py configs) and each
setting: saved bytes of the tracer (real transformers model under fake tensors) and of the arithmetic replay
(advisor/memory/activations.py), their difference and its documented cause, the forward allocation total of the
tracer's prefix against the replay's allocation sequence for as many layers, the backward transient
(``temporaries``) of both, autocast's weight copies of both, and the trace time. Then parameters of the Llama-4 catalog models (arithmetic, checked
against the meta-device build in tests/test_param_count.py) against Meta's published totals. Prints markdown.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from advisor.catalog.models import resolve_model  # noqa: E402
from advisor.hf_config import architecture_from_hf_config  # noqa: E402
from advisor.memory.activations import activation_memory, allocation_key, allocation_trace  # noqa: E402
from advisor.param_count import count_parameters  # noqa: E402
from advisor.specs import LoraSpec, TrainingSpec  # noqa: E402
from advisor.trace import TraceSettings, trace_model  # noqa: E402

SMALL = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
         "pad_token_id": None}
GPT_OSS = dict(SMALL, model_type="gpt_oss", intermediate_size=64, num_hidden_layers=4, num_local_experts=4,
               num_experts_per_tok=2, sliding_window=16)
LLAMA4 = dict(SMALL, model_type="llama4_text", intermediate_size=64, intermediate_size_mlp=128, num_hidden_layers=12,
              num_local_experts=4, num_experts_per_tok=1, attention_chunk_size=16, interleave_moe_layer_step=2)
TARGETS = ("q_proj", "v_proj")
SETTINGS = [("fp32", "eager", "full", 2), ("autocast-bf16", "eager", "lora", 1), ("autocast-bf16", "sdpa", "full", 1),
            ("half-bf16", "eager", "lora", 2),
            ("fp32", "sdpa", "full", 2), ("half-bf16", "sdpa", "full", 1)]


def forward_allocated(arch, spec: TrainingSpec, mode: str, traced) -> tuple[int, int]:
    """(traced, replayed) bytes allocated in the forward: the tracer's positive forward deltas and the replay's
    allocation events up to its ``forward_end`` mark (advisor.memory.activations.allocation_trace)."""
    key, ckpt = allocation_key(arch, spec)
    events = allocation_trace(arch, key, mode, ckpt, traced.traced_prefix)
    end = events.index(("m", "forward_end", 0))
    fwd_replay = sum(n for op, _, n in events[:end] if op == "a")
    fwd_trace = sum(e.delta for e in traced.events if e.phase == "forward" and e.delta > 0)
    return fwd_trace, fwd_replay


def cause(cfg: dict, mode: str, method: str, diff: int) -> str:
    arch = architecture_from_hf_config(cfg)
    if diff == 0:
        return "equal"
    if arch.family == "gpt_oss" and diff == 4 * arch.num_experts * arch.num_layers and mode != "half-bf16":
        return "= grouped_mm offsets (fp32 fallback op keeps them as a ctx attribute the hooks cannot see)"
    if arch.family == "llama4_text" and mode.startswith("autocast") and method == "lora" and \
            -diff == arch.moe_layers * arch.num_experts * 3 * arch.hidden_size * arch.intermediate_size * 2:
        return "= bf16 copies of the frozen 3-D expert weights (tracer: activations; replay: weight copies)"
    return "UNEXPLAINED"


def row(cfg: dict, mode: str, attention: str, method: str, batch: int, seq: int) -> str:
    arch = architecture_from_hf_config(cfg)
    start = time.perf_counter()
    traced = trace_model(cfg, TraceSettings(seq_len=seq, batch=batch, mode=mode, attention=attention, method=method,
                                            lora_targets=TARGETS), use_cache=False)
    seconds = time.perf_counter() - start
    spec = TrainingSpec(seq_len=seq, micro_batch_size=batch, attention=attention, method=method,
                        lora=LoraSpec(target_modules=TARGETS))
    replay = activation_memory(arch, spec, mode)
    fwd_trace, fwd_replay = forward_allocated(arch, spec, mode, traced)
    diff = replay.activations - traced.activations
    return (f"| {arch.family} | {mode} {attention} {method} b{batch} s{seq} | {traced.activations:,} | "
            f"{replay.activations:,} | {diff:+,} ({cause(cfg, mode, method, diff)}) | {fwd_trace:,} | {fwd_replay:,} "
            f"({(fwd_replay - fwd_trace) / fwd_trace:+.1%}) | {traced.temporaries:,} | {replay.temporaries:,} | "
            f"{traced.weight_copies:,} | {replay.breakdown.get('info:autocast_weight_copies', 0):,} | {seconds:.1f} |")


def main() -> None:
    print("| family | setting | traced saved B | replayed saved B | replay - trace | fwd alloc traced (prefix) | "
          "fwd alloc replayed | temporaries traced | temporaries replayed | autocast weight copies traced | replayed | "
          "trace s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cfg in (GPT_OSS, LLAMA4):
        for mode, attention, method, batch in SETTINGS:
            print(row(cfg, mode, attention, method, batch, 48), flush=True)
    print()
    print("| model | total (text) | active per token | published (with vision tower) |")
    print("|---|---|---|---|")
    for name, published in (("llama-4-scout-17b-16e", "109B total / 17B active"),
                            ("llama-4-maverick-17b-128e", "400B total / 17B active")):
        c = count_parameters(resolve_model(name).architecture)
        print(f"| {name} | {c.total:,} | {c.active_per_token:,} | {published} |")


if __name__ == "__main__":
    main()
