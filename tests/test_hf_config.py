"""Loading config.json files and normalizing them: defaults, validation messages, family quirks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.architecture import Architecture
from advisor.errors import InputError
from advisor.hf_config import NeedsTrace, SUPPORTED_MODEL_TYPES, architecture_from_hf_config, load_hf_config

LLAMA = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
             num_attention_heads=32, vocab_size=32000)


def arch(**overrides) -> Architecture:
    return architecture_from_hf_config({**LLAMA, **overrides})


# ---------------------------------------------------------------- load_hf_config

def test_load_file_and_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    assert load_hf_config(tmp_path / "config.json") == LLAMA
    assert load_hf_config(tmp_path) == LLAMA
    assert load_hf_config(str(tmp_path)) == LLAMA


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(InputError, match=r"config\.json: no such file") as info:
        load_hf_config(tmp_path / "config.json")
    assert info.value.field == "model"


def test_load_folder_without_config(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path / "config.json").replace("\\", "\\\\")):
        load_hf_config(tmp_path)


def test_load_malformed_json(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 4096,')
    with pytest.raises(InputError, match=r"not valid JSON \(line 1"):
        load_hf_config(tmp_path)


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ('"llama"', "str"), ("null", "NoneType")])
def test_load_not_an_object(tmp_path, text, kind):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InputError, match=f"expected a JSON object.*got {kind}"):
        load_hf_config(tmp_path)


def test_load_not_utf8(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(InputError, match="cannot read"):
        load_hf_config(tmp_path)


def test_load_huge_integer_literal(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": ' + "9" * 5000 + "}")
    with pytest.raises(InputError, match="not valid JSON"):
        load_hf_config(tmp_path)


def test_load_not_a_regular_file():
    with pytest.raises(InputError, match="not a regular file"):
        load_hf_config("/dev/null")


# ---------------------------------------------------------------- defaults transformers applies

def test_llama_defaults():
    a = arch()
    assert (a.num_key_value_heads, a.head_dim) == (32, 128)
    assert (a.tie_word_embeddings, a.max_position_embeddings) == (False, 2048)
    assert not (a.qkv_bias or a.o_bias or a.mlp_bias)
    assert a.norm == "rmsnorm" and a.mlp == "gated" and a.position == "rope"


def test_llama_null_kv_heads_means_mha():
    assert arch(num_key_value_heads=None).num_key_value_heads == 32


def test_llama_biases():
    a = arch(attention_bias=True, mlp_bias=True)
    assert a.qkv_bias and a.o_bias and a.mlp_bias


def test_explicit_head_dim_wins():
    assert arch(head_dim=64).head_dim == 64


def test_family_kv_defaults_follow_transformers():
    mistral = dict(LLAMA, model_type="mistral")
    assert architecture_from_hf_config(mistral).num_key_value_heads == 8      # MistralConfig default
    assert architecture_from_hf_config(mistral).sliding_window == 4096
    assert architecture_from_hf_config(dict(mistral, sliding_window=None)).sliding_window is None


def test_qwen2_bias_and_sliding_window():
    qwen = dict(LLAMA, model_type="qwen2", num_key_value_heads=4, sliding_window=4096)
    a = architecture_from_hf_config(qwen)
    assert a.qkv_bias and not a.o_bias and a.sliding_window is None      # use_sliding_window is false
    assert architecture_from_hf_config(dict(qwen, use_sliding_window=True)).sliding_window == 4096


def test_gemma_defaults():
    a = architecture_from_hf_config(dict(LLAMA, model_type="gemma", num_key_value_heads=16))
    assert a.head_dim == 256 and a.tie_word_embeddings and a.hidden_act == "gelu_pytorch_tanh"
    g2 = architecture_from_hf_config(dict(LLAMA, model_type="gemma2", num_key_value_heads=8))
    assert g2.norms_per_layer == 4 and (g2.attn_logit_softcapping, g2.final_logit_softcapping) == (50.0, 30.0)


def test_qwen3_has_qk_norm():
    a = architecture_from_hf_config(dict(LLAMA, model_type="qwen3", num_key_value_heads=8))
    assert a.qk_norm and a.head_dim == 128


def test_gpt2_defaults():
    a = architecture_from_hf_config(dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257))
    assert a.intermediate_size == 4 * 768 and a.learned_position_rows == 1024 and a.tie_word_embeddings
    assert a.fused_qkv and a.mlp == "plain" and a.norm == "layernorm" and a.norm_bias
    assert (a.attention_dropout, a.hidden_dropout, a.embedding_dropout) == (0.1, 0.1, 0.1)


def test_gpt2_n_inner():
    cfg = dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_inner=1000)
    assert architecture_from_hf_config(cfg).intermediate_size == 1000


def test_opt_positions_and_projection():
    cfg = dict(model_type="opt", hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
               vocab_size=50272, word_embed_proj_dim=512, do_layer_norm_before=False)
    a = architecture_from_hf_config(cfg)
    assert a.learned_position_rows == 2050 and a.word_embed_proj_dim == 512 and not a.final_norm
    assert architecture_from_hf_config(dict(cfg, word_embed_proj_dim=1024)).word_embed_proj_dim is None


def test_falcon_multi_query_and_new_architecture():
    base = dict(model_type="falcon", hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, vocab_size=65024)
    a = architecture_from_hf_config(base)
    assert a.num_key_value_heads == 1 and a.norms_per_layer == 1 and a.parallel_residual and a.tie_word_embeddings
    new = architecture_from_hf_config(dict(base, hidden_size=8192, num_attention_heads=128, num_kv_heads=8,
                                           new_decoder_architecture=True))
    assert new.num_key_value_heads == 8 and new.norms_per_layer == 2


def test_bloom_and_neox():
    bloom = architecture_from_hf_config(dict(model_type="bloom", hidden_size=4096, n_layer=30, n_head=32,
                                             vocab_size=250880))
    assert bloom.position == "alibi" and bloom.embedding_norm and bloom.intermediate_size == 4 * 4096
    neox = architecture_from_hf_config(dict(model_type="gpt_neox", hidden_size=6144, intermediate_size=24576,
                                            num_hidden_layers=44, num_attention_heads=64, vocab_size=50432))
    assert neox.rotary_pct == 0.25 and neox.parallel_residual and not neox.tie_word_embeddings


def test_integral_floats_are_accepted():
    assert arch(hidden_size=4096.0).hidden_size == 4096


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                                 "intermediate_size"])
def test_missing_required_key_is_named(key):
    cfg = {k: v for k, v in LLAMA.items() if k != key}
    with pytest.raises(InputError, match=f"{key} is missing") as info:
        architecture_from_hf_config(cfg, source="my/config.json")
    assert "my/config.json" in str(info.value) and info.value.field == "model"


@pytest.mark.parametrize("key, value, message", [
    ("hidden_size", 0, "hidden_size must be at least 1"),
    ("num_hidden_layers", -4, "num_hidden_layers must be at least 1"),
    ("hidden_size", "4096", "hidden_size must be an integer"),
    ("hidden_size", 4096.5, "hidden_size must be an integer"),
    ("vocab_size", True, "vocab_size must be an integer"),
    ("hidden_size", float("nan"), "hidden_size must be an integer"),
    ("hidden_size", 10**12, "hidden_size is absurdly large"),
    ("num_key_value_heads", 5, r"num_key_value_heads \(5\) must divide num_attention_heads \(32\)"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false"),
    ("attention_dropout", 1.5, r"attention_dropout must be in \[0, 1\)"),
    ("attention_dropout", 1, r"attention_dropout must be in \[0, 1\)"),
    ("hidden_act", 3, "hidden_act must be a string"),
])
def test_invalid_value_is_named(key, value, message):
    with pytest.raises(InputError, match=message):
        arch(**{key: value})


def test_heads_must_divide_hidden_without_head_dim():
    with pytest.raises(InputError, match=r"num_attention_heads \(30\) must divide hidden_size \(4096\)"):
        arch(num_attention_heads=30, num_key_value_heads=30)
    assert arch(num_attention_heads=30, num_key_value_heads=30, head_dim=128).head_dim == 128


def test_default_kv_heads_that_do_not_divide_say_where_they_come_from():
    with pytest.raises(InputError, match="transformers default for mistral"):
        architecture_from_hf_config(dict(LLAMA, model_type="mistral", num_attention_heads=12, hidden_size=768))


def test_mixtral_top_k_over_experts():
    cfg = dict(LLAMA, model_type="mixtral", num_key_value_heads=8, num_local_experts=2, num_experts_per_tok=3)
    with pytest.raises(InputError, match=r"num_experts_per_tok \(3\) exceeds num_local_experts \(2\)"):
        architecture_from_hf_config(cfg)


def test_unknown_model_type_is_not_counted_by_another_family():
    """An unknown model_type is never counted as Llama, even with Llama's five keys: the caller traces it."""
    with pytest.raises(NeedsTrace, match="'my_custom_llama' has no arithmetic family"):
        architecture_from_hf_config(dict(LLAMA, model_type="my_custom_llama", num_key_value_heads=8))
    with pytest.raises(NeedsTrace):
        architecture_from_hf_config({"model_type": "t5"})


def test_qwen3_moe_is_counted_as_moe():
    cfg = dict(LLAMA, model_type="qwen3_moe", num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768)
    a = architecture_from_hf_config(cfg)
    assert (a.family, a.num_experts, a.experts_per_token, a.intermediate_size) == ("qwen3_moe", 128, 8, 768)
    with pytest.raises(NeedsTrace, match="mlp_only_layers"):
        architecture_from_hf_config(dict(cfg, mlp_only_layers=[0]))


def test_no_model_type():
    with pytest.raises(InputError, match="no model_type"):
        architecture_from_hf_config({k: v for k, v in LLAMA.items() if k != "model_type"})
    with pytest.raises(InputError, match="no model_type"):
        architecture_from_hf_config({"hidden_size": 4096})


def _resolve_file(tmp_path, cfg):
    from advisor.catalog.models import resolve_model

    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return resolve_model(str(path))


TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=300)


@pytest.mark.slow
@pytest.mark.parametrize("cfg, message", [
    (dict(TINY, model_type="bert", architectures=["BertForMaskedLM"]),
     "dsadvise estimates causal language models; BertForMaskedLM is an encoder"),
    (dict(TINY, model_type="bert"), "dsadvise estimates causal language models; BertForMaskedLM is an encoder"),
    (dict(TINY, model_type="foo"), "unknown model_type 'foo'"),
    (dict(TINY, model_type="lama"), r"unknown model_type 'lama' \(did you mean llama\b"),
    (dict(model_type="t5"), "dsadvise estimates causal language models; t5 is an encoder-decoder model"),
])
def test_non_causal_or_unknown_configs_are_refused_in_one_line(tmp_path, cfg, message):
    pytest.importorskip("transformers")
    with pytest.raises(InputError, match=message) as info:
        _resolve_file(tmp_path, cfg)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_unknown_family_with_llama_keys_is_traced_not_llama(tmp_path):
    pytest.importorskip("transformers")
    cfg = dict(TINY, model_type="starcoder2", num_key_value_heads=2)
    resolved = _resolve_file(tmp_path, cfg)
    assert resolved.source == "traced" and resolved.architecture.traced
    assert resolved.architecture.family == "starcoder2"
    assert "traced on the real Starcoder2ForCausalLM" in resolved.note


def test_model_type_not_a_string():
    with pytest.raises(InputError, match="model_type must be a string"):
        architecture_from_hf_config({"model_type": ["llama"]})


def test_gpt2_cross_attention_rejected():
    with pytest.raises(InputError, match="add_cross_attention"):
        architecture_from_hf_config(dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                         add_cross_attention=True))


def test_supported_types():
    assert {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "opt", "falcon",
            "bloom", "gpt_neox"} <= set(SUPPORTED_MODEL_TYPES)


# ---------------------------------------------------------------- fuzzing

_values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**10), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(), max_size=2))
_keys = st.sampled_from(sorted({*LLAMA, "num_key_value_heads", "head_dim", "n_embd", "n_layer", "n_head", "n_inner",
                                "ffn_dim", "word_embed_proj_dim", "num_kv_heads", "multi_query", "parallel_attn",
                                "new_decoder_architecture", "num_local_experts", "num_experts_per_tok",
                                "tie_word_embeddings", "attention_dropout", "sliding_window", "rotary_pct",
                                "use_sliding_window", "num_ln_in_parallel_attn", "do_layer_norm_before"}))


@settings(max_examples=300, deadline=None)
@given(model_type=st.one_of(st.sampled_from(SUPPORTED_MODEL_TYPES), st.text(max_size=10), st.none()),
       base=st.booleans(), changes=st.dictionaries(_keys, _values, max_size=6))
def test_fuzz_config_gives_architecture_or_input_error(model_type, base, changes):
    """An Architecture, a one-line InputError, or NeedsTrace (only for a model_type without arithmetic)."""
    cfg = {**(LLAMA if base else {}), **changes, "model_type": model_type}
    try:
        result = architecture_from_hf_config(cfg)
    except NeedsTrace:
        assert model_type not in SUPPORTED_MODEL_TYPES or model_type == "qwen3_moe"
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(result, Architecture)
