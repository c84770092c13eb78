"""The model catalog, size parsing and model resolution (name, alias, hf_id, size, config path)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.catalog.models import (
    MAX_SIZE,
    MIN_SIZE,
    CatalogModel,
    ResolvedModel,
    list_models,
    lookup_keys,
    parse_size,
    resolve_model,
)
from advisor.errors import InputError
from advisor.param_count import count_parameters

REQUIRED = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b",
            "llama-3.1-70b", "llama-3.1-405b", "llama-3.2-1b", "llama-3.2-3b", "mistral-7b-v0.1",
            "mistral-7b-v0.2", "mistral-7b-v0.3", "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b",
            "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b", "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "phi-3-mini-4k",
            "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "opt-1.3b", "opt-6.7b", "falcon-7b", "bloom-7b1",
            "gpt-neox-20b"]


# ---------------------------------------------------------------- catalog

def test_catalog_has_the_required_models():
    names = [m.name for m in list_models()]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert set(REQUIRED) <= set(names)


def test_catalog_entries_are_complete():
    for m in list_models():
        assert isinstance(m, CatalogModel)
        assert m.name == m.name.lower() and "/" in m.hf_id
        assert m.description and "\n" not in m.description
        assert m.parameters == count_parameters(m.architecture).total


def test_lookup_keys_never_collide_across_models():
    owner: dict[str, str] = {}
    for m in list_models():
        for key in lookup_keys(m):
            assert owner.setdefault(key.lower(), m.name) == m.name, f"{key} names {owner[key.lower()]} and {m.name}"


def test_every_entry_has_a_source_comment():
    from advisor.datafiles import DATA_DIR

    text = (DATA_DIR / "models.yaml").read_text()
    for m in list_models():
        assert f"# source: {m.hf_id}\n  - name: {m.name}\n" in text


def test_list_models_is_cached_but_returns_a_fresh_list():
    first, second = list_models(), list_models()
    assert first == second and first is not second and first[0] is second[0]


# ---------------------------------------------------------------- parse_size

@pytest.mark.parametrize("text, count", [
    ("7B", 7_000_000_000), ("1.5b", 1_500_000_000), ("350M", 350_000_000), ("6.7e9", 6_700_000_000),
    ("70b", 70_000_000_000), ("1.3B", 1_300_000_000), ("125m", 125_000_000), ("1T", 10**12),
    (" 13B ", 13_000_000_000), ("7 B", 7_000_000_000), ("7bn", 7_000_000_000), ("500000k", 500_000_000),
    ("10M", MIN_SIZE), ("2T", MAX_SIZE), (".5B", 500_000_000), ("1e10", 10**10),
])
def test_parse_size(text, count):
    assert parse_size(text) == count


@pytest.mark.parametrize("text", ["llama", "7", "B", "7X", "-7B", "1.2.3B", "", "7B7", "gpt2", "1e-3B"])
def test_parse_size_not_a_size(text):
    if text == "7":   # a bare number is a parameter count, and 7 is not a plausible one
        with pytest.raises(InputError):
            parse_size(text)
    else:
        assert parse_size(text) is None


@pytest.mark.parametrize("text", ["5M", "9.99M", "3T", "1e100", "9" * 400])
def test_parse_size_absurd(text):
    with pytest.raises(InputError, match="between 10M and 2T") as info:
        parse_size(text)
    assert info.value.field == "model"


# ---------------------------------------------------------------- resolve_model: catalog

@pytest.mark.parametrize("text", ["llama-2-7b", "LLAMA-2-7B", "Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf",
                                  "meta-llama/llama-2-7b-hf", "llama-2-7b-chat-hf", "  llama-2-7b  "])
def test_resolve_catalog_spellings(text):
    r = resolve_model(text)
    assert isinstance(r, ResolvedModel)
    assert (r.name, r.source) == ("llama-2-7b", "catalog")
    assert "6.74B" in r.note and "\n" not in r.note


def test_resolve_hf_id_last_component():
    assert resolve_model("Qwen2.5-7B").name == "qwen2.5-7b"
    assert resolve_model("Meta-Llama-3-8B").name == "llama-3-8b"


def test_catalog_name_wins_over_size_reading():
    assert resolve_model("gpt2").source == "catalog"


# ---------------------------------------------------------------- resolve_model: sizes

def test_size_uses_catalog_model_within_tolerance():
    r = resolve_model("7B")
    assert (r.name, r.source) == ("llama-2-7b", "size")
    assert r.note.startswith("7B: no catalog model named; using llama-2-7b") and "within 15%" in r.note


@pytest.mark.parametrize("text, name", [("70b", "llama-3-70b"), ("0.5B", "qwen2.5-0.5b"), ("125m", "gpt2"),
                                        ("1.5b", "qwen2.5-1.5b"), ("13B", "llama-2-13b")])
def test_size_picks_typical_model(text, name):
    assert resolve_model(text).name == name


def test_size_prefers_dense_models():
    assert not resolve_model("45B").architecture.is_moe


@pytest.mark.parametrize("text", ["5B", "10M", "100M", "50B", "1T", "2T"])
def test_size_synthesizes_llama_style(text):
    r = resolve_model(text)
    target = parse_size(text)
    total = count_parameters(r.architecture).total
    assert r.source == "size" and r.architecture.family == "llama" and not r.architecture.is_moe
    assert abs(total - target) <= 0.15 * target
    assert "Llama-style" in r.note and str(r.architecture.num_layers) in r.note and "\n" not in r.note


def test_synthesized_shape_follows_nearest_reference():
    r = resolve_model("5B")   # between qwen3-4b (4.02B) and llama-2-7b; no model within 15%
    assert "shaped like qwen3-4b" in r.note
    assert (r.architecture.hidden_size, r.architecture.num_attention_heads) == (2560, 32)


@settings(max_examples=200, deadline=None)
@given(st.integers(MIN_SIZE, MAX_SIZE))
def test_any_size_resolves_within_tolerance(target):
    r = resolve_model(str(target))
    total = count_parameters(r.architecture).total
    assert abs(total - target) <= 0.15 * target


# ---------------------------------------------------------------- resolve_model: config paths

TINY = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
        "num_attention_heads": 4, "vocab_size": 1000}


def test_resolve_config_folder_and_file(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    for target in (folder, folder / "config.json"):
        r = resolve_model(str(target))
        assert (r.source, r.name) == ("config", "my-model")
        assert r.architecture.num_layers == 4 and "config.json" in r.note


def test_resolve_config_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(InputError, match=r"config.json: dsadvise estimates causal language models; t5 is an encoder-decoder"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in TINY.items() if k != "vocab_size"}))
    with pytest.raises(InputError, match="vocab_size is missing"):
        resolve_model(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no such file"):
        resolve_model(str(empty))


# ---------------------------------------------------------------- resolve_model: errors

def test_unknown_name_suggests():
    with pytest.raises(InputError, match=r"unknown model 'lama-2-7b' \(did you mean llama-2-7b") as info:
        resolve_model("lama-2-7b")
    assert info.value.field == "model"


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_input(text):
    with pytest.raises(InputError, match="catalog model name"):
        resolve_model(text)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_resolve_model(text):
    try:
        result = resolve_model(text)
    except InputError as exc:
        assert str(exc)
    else:
        assert isinstance(result, ResolvedModel)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\s*[0-9.]{0,12}(e[0-9]{1,4})?\s*[kmbtKMBT]?[nN]?\s*", fullmatch=True))
def test_fuzz_size_like_text(text):
    try:
        size = parse_size(text)
    except InputError:
        return
    assert size is None or MIN_SIZE <= size <= MAX_SIZE
    try:
        assert isinstance(resolve_model(text), ResolvedModel)
    except InputError:
        pass


def test_resolving_imports_neither_torch_nor_transformers():
    code = ("import sys; from advisor.catalog.models import resolve_model, list_models; "
            "list_models(); resolve_model('7B'); resolve_model('5B'); resolve_model('llama-3-8b'); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mistral_v0_2_is_its_own_entry():
    # mistralai/Mistral-7B-Instruct-v0.2 config.json: the v0.1 shapes and 32000 vocab, no sliding window,
    # rope_theta 1e6 (v0.3 has a 32768 vocab; v0.1 a 4096 window)
    v2 = resolve_model("mistralai/Mistral-7B-Instruct-v0.2")
    assert v2.name == "mistral-7b-v0.2"
    a = v2.architecture
    assert (a.vocab_size, a.sliding_window, a.max_position_embeddings) == (32000, None, 32768)
    assert resolve_model("mistral-7b-v0.3").architecture.vocab_size == 32768
    assert resolve_model("mistral-7b-v0.1").architecture.sliding_window == 4096
