"""The replay's SDPA attention under an old transformers (advisor/data/stacks.yaml ``sdpa_repeat_kv``,
``sdpa_mask_contiguous``, ``sdpa_contiguous_qkv``, ``rotary_per_layer``; issue 17, session 9, helper A) against the
saved bytes per decoder layer recorded on the real models: ``python benchmarks/sdpa_repeat_kv.py --site <transformers
4.39.3 | 4.46.3 | 4.52.4> --json`` and ``python benchmarks/sdpa_repeat_kv.py --json`` (venv transformers 5.24.0), torch 2.13
CPU under the harness's CUDA
semantics plus 4.39's CUDA-only q/k/v ``.contiguous()`` (the script's docstring). Tiny models of 8 query heads and
2 KV heads (Gemma: 1), hidden 256, batch 2, 64 tokens. No old transformers is needed here: the numbers are recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from advisor.stacks import family_stack_behaviour, sdpa_contiguous_qkv, sdpa_repeats_kv  # noqa: E402

# family/mode -> saved bytes per decoder layer, measured (benchmarks/sdpa_repeat_kv.py, 2026-11-30)
MEASURED_4_39_3 = {
    "llama/half-bf16": 1_389_568, "llama/autocast-bf16": 1_733_632,
    "mistral/half-bf16": 1_324_032, "mistral/autocast-bf16": 1_651_712,
    "qwen2/half-bf16": 1_324_032, "qwen2/autocast-bf16": 1_651_712,
    "gemma/half-bf16": 1_522_688, "gemma/autocast-bf16": 1_735_680,
}
MEASURED_4_46_3 = {   # mistral / gemma: their own rotary tables; gemma's single KV head: a view, not a copy
    "llama/half-bf16": 1_315_840, "llama/autocast-bf16": 1_643_520,
    "mistral/half-bf16": 1_324_032, "mistral/autocast-bf16": 1_651_712,
    "qwen2/half-bf16": 1_315_840, "qwen2/autocast-bf16": 1_643_520,
    "gemma/half-bf16": 1_342_464, "gemma/autocast-bf16": 1_539_072,
}
MEASURED_4_52_4 = {
    "llama/half-bf16": 1_381_376, "llama/autocast-bf16": 1_709_056,
    "mistral/half-bf16": 1_381_376, "mistral/autocast-bf16": 1_709_056,
    "qwen2/half-bf16": 1_381_376, "qwen2/autocast-bf16": 1_709_056,
    "gemma/half-bf16": 1_514_496, "gemma/autocast-bf16": 1_711_104,
}
MEASURED_5_24_0 = {
    "llama/half-bf16": 1_217_536, "llama/autocast-bf16": 1_545_216,
    "mistral/half-bf16": 1_217_536, "mistral/autocast-bf16": 1_545_216,
    "qwen2/half-bf16": 1_217_536, "qwen2/autocast-bf16": 1_545_216,
    "gemma/half-bf16": 1_334_272, "gemma/autocast-bf16": 1_530_880,
}


def _replay(key: str, version: str | None) -> int:
    from benchmarks.sdpa_repeat_kv import replay_per_layer

    family, mode = key.split("/")
    return replay_per_layer(family, mode, 2, 64, version)


@pytest.mark.parametrize("key", sorted(MEASURED_4_39_3))
def test_replay_equals_transformers_4_39(key):
    assert _replay(key, "4.39") == MEASURED_4_39_3[key]


@pytest.mark.parametrize("key", sorted(MEASURED_4_46_3))
def test_replay_equals_transformers_4_46(key):
    assert _replay(key, "4.46") == MEASURED_4_46_3[key]


@pytest.mark.parametrize("key", sorted(MEASURED_4_52_4))
def test_replay_equals_transformers_4_52(key):
    assert _replay(key, "4.52") == MEASURED_4_52_4[key]


@pytest.mark.parametrize("key", sorted(MEASURED_5_24_0))
def test_replay_without_a_version_equals_transformers_5(key):
    assert _replay(key, None) == MEASURED_5_24_0[key]


def test_repeat_kv_versions():
    """repeat_kv before SDPA up to 4.53 (4.53.3 integrations/sdpa_attention.py); 4.54.0 added enable_gqa."""
    assert sdpa_repeats_kv("4.30") and sdpa_repeats_kv("4.39.3") and sdpa_repeats_kv("4.53")
    assert not sdpa_repeats_kv("4.54") and not sdpa_repeats_kv("5.13") and not sdpa_repeats_kv(None)
    # sdpa_attention_forward's q/k/v .contiguous(): 4.48.0 ... 4.55.4, removed in 4.56.0 (#40315)
    assert sdpa_contiguous_qkv("4.48") and sdpa_contiguous_qkv("4.55")
    assert not sdpa_contiguous_qkv("4.47") and not sdpa_contiguous_qkv("4.56") and not sdpa_contiguous_qkv(None)


def test_the_repeat_is_the_kv_heads_difference():
    """Mistral / Qwen2 4.39 (no mask without padding): over 5.24 the repeated K and V, 2 x b x s x (H - KV) x d
    bf16 bytes, plus the layer's own rotary cos/sin (2 x s x d bf16), and nothing else."""
    b, s, heads, kv, d = 2, 64, 8, 2, 32
    extra = 2 * b * s * (heads - kv) * d * 2 + 2 * s * d * 2
    assert MEASURED_4_39_3["mistral/half-bf16"] - MEASURED_5_24_0["mistral/half-bf16"] == extra
    assert _replay("mistral/half-bf16", "4.39") - _replay("mistral/half-bf16", None) == extra
    # 4.52: the repeat, and o_proj's copy of the (b, h, s, d)-contiguous output (b x s x H x d bf16); no own rotary
    extra = 2 * b * s * (heads - kv) * d * 2 + b * s * heads * d * 2
    assert MEASURED_4_52_4["mistral/half-bf16"] - MEASURED_5_24_0["mistral/half-bf16"] == extra


def test_family_behaviours_are_read_per_family():
    from advisor.hf_config import architecture_from_hf_config

    from benchmarks.sdpa_repeat_kv import FAMILIES

    llama = architecture_from_hf_config(FAMILIES["llama"])
    mistral = architecture_from_hf_config(FAMILIES["mistral"])
    assert family_stack_behaviour("sdpa_mask_contiguous", llama, "4.39")
    assert not family_stack_behaviour("sdpa_mask_contiguous", mistral, "4.39")
    assert not family_stack_behaviour("sdpa_mask_contiguous", llama, "4.46")
    assert not family_stack_behaviour("rotary_per_layer", llama, None)


def test_the_notes_say_what_the_stack_adds():
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory.core import stack_notes

    arch = resolve_model("llama-2-70b").architecture
    hw = build_hardware(2, 1, None, "rtx-3090", None, None, None)

    def notes(version):
        return " ".join(stack_notes(arch, build_training(hw, attention="sdpa", transformers_version=version),
                                    build_strategy(hw, "fsdp-full")))

    old = notes("4.39")
    assert "8 K/V heads repeated to 64" in old and "o_proj saves a copy" in old and "own rotary" in old
    assert "repeated" in notes("4.53") and "repeated" not in notes("4.54") and "o_proj" not in notes("4.56")
