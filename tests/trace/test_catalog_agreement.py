"""Every catalog model traced, and the traced figures held against the arithmetic byte for byte.

Each catalog config is traced at its full width with two decoder layers (the arithmetic scales by layer; two
layers keep the run to about a second a model). Parameters must agree exactly for every model. Saved bytes
must agree exactly wherever :mod:`advisor.memory.activations` replays the family; the known disagreements are
listed with their cause and checked to still disagree (strict xfail), so they are neither hidden nor forgotten.
"""

from __future__ import annotations

from functools import lru_cache

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from advisor.datafiles import load_data  # noqa: E402
from advisor.hf_config import architecture_from_hf_config  # noqa: E402
from advisor.memory.activations import REPLAYED_FAMILIES, activation_memory  # noqa: E402
from advisor.param_count import count_parameters  # noqa: E402
from advisor.specs import TrainingSpec  # noqa: E402
from advisor.trace import TraceSettings, trace_model  # noqa: E402

CATALOG = {e["name"]: e["config"] for e in load_data("models.yaml")["models"]}
SEQ = 32

# name -> why the replay (advisor/memory/activations.py, helper D2's module this session) and the trace differ.
# In every case the trace equals the CPU harness at reduced width (benchmarks/trace_table.py --catalog).
_OFFSETS = ("replay keeps grouped_mm's int32 expert offsets (derivatives.yaml: _grouped_mm's backward reads offs); "
            "fp32 takes transformers' fallback op, which holds them as a ctx attribute saved_tensors_hooks cannot see; "
            "the exact difference is checked below")
KNOWN_SAVED_DISAGREEMENTS = {
    "mixtral-8x7b": _OFFSETS,
    "mixtral-8x22b": _OFFSETS,
    "qwen3-30b-a3b": _OFFSETS,
    "qwen3-235b-a22b": _OFFSETS,
    "gpt-oss-20b": _OFFSETS,
    "gpt-oss-120b": _OFFSETS,
    "phi-4-mini": "partial rotary (75 %): the replay counts 16 KiB more (over-estimate, +0.02 %)",
}


def two_layers(name: str) -> dict:
    cfg = dict(CATALOG[name], num_hidden_layers=2)
    if "n_layer" in cfg or cfg["model_type"] == "gpt2":
        cfg["n_layer"] = 2
    for key in ("no_rope_layers", "layer_types"):   # per-layer lists (Llama-4): their first two entries
        if isinstance(cfg.get(key), list):
            cfg[key] = cfg[key][:2]
    if isinstance(cfg.get("moe_layers"), list):      # an index list: the indices below 2
        cfg["moe_layers"] = [i for i in cfg["moe_layers"] if i < 2]
    return cfg


@lru_cache(maxsize=None)
def _traced(name: str):
    return trace_model(two_layers(name), TraceSettings(seq_len=SEQ), use_cache=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CATALOG))
def test_traced_parameters_equal_the_arithmetic(name):
    counts = count_parameters(architecture_from_hf_config(two_layers(name), source=name))
    traced = _traced(name).parameters
    assert traced.total == counts.total
    assert traced.lm_head == counts.lm_head
    arch = architecture_from_hf_config(two_layers(name), source=name)
    if arch.dense_layers and arch.layer_pattern:   # Llama-4 Maverick: a dense, then an MoE layer (the largest)
        assert traced.per_layer[1] == counts.per_layer > traced.per_layer[0]
    else:
        assert traced.per_layer == (counts.per_layer, counts.per_layer)
    assert traced.embedding == counts.embedding + counts.final
    assert traced.active_per_token == counts.active_per_token


def _saved_cases():
    for name in sorted(CATALOG):
        if CATALOG[name]["model_type"] not in REPLAYED_FAMILIES:
            continue
        reason = KNOWN_SAVED_DISAGREEMENTS.get(name)
        yield pytest.param(name, marks=pytest.mark.xfail(reason=reason, strict=True)) if reason else name


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_saved_cases()))
def test_traced_saved_bytes_equal_the_replay(name):
    arch = architecture_from_hf_config(two_layers(name), source=name)
    replay = activation_memory(arch, TrainingSpec(seq_len=SEQ, precision="fp32"), "fp32")
    assert replay.activations == _traced(name).activations


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, why in KNOWN_SAVED_DISAGREEMENTS.items() if why is _OFFSETS])
def test_moe_replay_exceeds_the_trace_by_exactly_the_expert_offsets(name):
    """Where the trace cannot see grouped_mm's offsets, everything else agrees byte for byte: the replay is the
    trace plus one int32 per expert per MoE layer."""
    arch = architecture_from_hf_config(two_layers(name), source=name)
    replay = activation_memory(arch, TrainingSpec(seq_len=SEQ, precision="fp32"), "fp32")
    assert replay.activations - _traced(name).activations == 4 * arch.num_experts * arch.num_layers
