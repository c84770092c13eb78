"""The tracer's PEFT targets for LoRA on the lm_head (issue 17, L): ``lm_head`` names the model's output layer,
``all-linear`` next to other names becomes the set PEFT itself expands the shorthand to."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")
torch = pytest.importorskip("torch")

from advisor.errors import InputError  # noqa: E402
from advisor.trace.tracer import _peft_targets  # noqa: E402

CFG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
           vocab_size=256)


def _model():
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **CFG))


def test_all_linear_next_to_the_head_is_peft_own_expansion_plus_the_head():
    model = _model()
    names = _peft_targets(model, ("all-linear", "lm_head"))
    assert "lm_head" in names and "all-linear" not in names
    assert sum(n.endswith("q_proj") for n in names) == CFG["num_hidden_layers"]   # every layer's projections
    assert _peft_targets(model, ("all-linear",)) == "all-linear"                   # alone: PEFT's shorthand


def test_an_output_layer_that_is_no_linear_is_one_line():
    """None of transformers 5.24's 178 causal LMs buildable from their default config has one (scanned on the meta
    device); the refusal is shown on a Llama whose head is swapped for a non-Linear module."""
    model = _model()
    model.lm_head = torch.nn.Identity()
    with pytest.raises(InputError, match="not an nn.Linear"):
        _peft_targets(model, ("q_proj", "lm_head"))
