"""ALST's tiled MLP in the estimate (advisor/memory/tiling.py, ``--tiled-mlp``), against DeepSpeed's own
``TiledMLP`` on a real transformers Llama (the full table: ``python benchmarks/tiled_memory.py``)."""

from __future__ import annotations

import os

import pytest

from advisor.api import estimate
from advisor.catalog.models import ResolvedModel
from advisor.errors import InputError
from advisor.hf_config import architecture_from_hf_config
from advisor.memory.activations import activation_memory
from advisor.memory.tiling import NOT_SAVED, SHARD, tiled_mlp_shards
from advisor.specs import TrainingSpec

LLAMA = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
         "intermediate_size": 688, "vocab_size": 1024, "num_hidden_layers": 2, "max_position_embeddings": 8192,
         "tie_word_embeddings": False, "rms_norm_eps": 1e-5}


def test_estimate_matches_deepspeed_tiled_mlp_on_a_real_llama():
    """One forward+backward of a bf16 Llama whose MLPs run inside DeepSpeed 0.19.8's TiledMLP (2 shards):
    the bytes saved for backward and the most one shard's recompute saves, against the estimate."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from benchmarks.tiled_memory import LOW, HIGH, estimated, measure

    measured_saved, measured_shard = measure(LLAMA, 512, 1, tiled=True)
    est_saved, est_shard = estimated(LLAMA, 512, 1, tiled=True)
    assert LOW <= (est_saved - measured_saved) / measured_saved <= HIGH, (est_saved, measured_saved)
    assert LOW <= (est_shard - measured_shard) / measured_shard <= HIGH, (est_shard, measured_shard)
    # the untiled replay saves 4 more N x intermediate bf16 tensors per layer (gate, silu(gate), up, their product)
    untiled = activation_memory(architecture_from_hf_config(LLAMA), TrainingSpec(seq_len=512, precision="bf16"),
                                "half-bf16").activations
    assert untiled - measured_saved == 2 * 4 * 512 * 688 * 2


@pytest.mark.parametrize("family_cfg", [LLAMA, {**LLAMA, "model_type": "qwen2", "use_sliding_window": False}])
def test_the_replay_is_linear_in_the_mlp_width(family_cfg):
    """tiling.py takes the MLP-internal bytes by difference (2i minus i): that needs the replay to be affine in i."""
    arch = architecture_from_hf_config(family_cfg)
    training = TrainingSpec(seq_len=384, micro_batch_size=2, precision="bf16")
    layers = [activation_memory(arch.model_copy(update={"intermediate_size": w}), training, "half-bf16")
              .breakdown["layers"] for w in (300, 600, 900)]
    assert layers[2] - layers[1] == layers[1] - layers[0] > 0


def test_shards_follow_deepspeeds_example():
    arch = architecture_from_hf_config(LLAMA)
    assert [tiled_mlp_shards(arch, TrainingSpec(seq_len=s)) for s in (100, 256, 257, 1000)] == [1, 1, 2, 4]


def _model() -> ResolvedModel:
    return ResolvedModel(name="llama", architecture=architecture_from_hf_config(LLAMA), source="config", note="")


def test_estimate_under_sp_names_the_tiled_terms_and_is_smaller():
    kw = dict(gpus=2, vram=80, seq_len=2048, strategy="zero3", sp=2, precision="bf16")
    plain = estimate(_model(), **kw)
    tiled = estimate(_model(), tiled_mlp=True, **kw)
    bd = tiled.per_gpu.breakdown
    assert sum(bd.values()) == tiled.per_gpu.total
    # each rank runs 1024 tokens: 4 shards of 256; the 2 layers' 4 intermediates of 1024 x 688 bf16 go
    assert bd[f"activations: {NOT_SAVED}"] == -2 * 4 * 1024 * 688 * 2
    assert bd[f"activations: {SHARD}"] == 4 * 256 * 688 * 2
    assert tiled.per_gpu.total < plain.per_gpu.total
    assert any("4 sequence shard" in n for n in tiled.notes)


def test_tiled_mlp_refuses_ddp_in_one_line():
    with pytest.raises(InputError) as exc:
        estimate(_model(), gpus=2, vram=80, seq_len=512, strategy="ddp", tiled_mlp=True)
    assert exc.value.field == "--tiled-mlp"
