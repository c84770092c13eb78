"""A traced model (a model_type outside the family registry) goes through the whole estimate, the CUDA
allocator model included: the allocator's churn sequence needs a stand-in replay of the same block layout
(advisor/memory/activations._Model). Before that stand-in, every traced config raised KeyError there."""

from __future__ import annotations

import json

import pytest

from advisor.api import estimate

pytest.importorskip("transformers")

# StarCoder2 (LayerNorm, plain GELU MLP with biases, GQA, sliding window) at reduced width; Falcon-style
# parallel residual for the other stand-in.
CONFIGS = {
    "starcoder2": {"model_type": "starcoder2", "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                   "max_position_embeddings": 512, "sliding_window": 256},
    "falcon": {"model_type": "falcon", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
               "vocab_size": 1000, "parallel_attn": True, "multi_query": True},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("strategy", ["zero2", "fsdp-full"])
def test_traced_model_estimates_with_allocator(tmp_path, name, strategy):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(CONFIGS[name]))
    est = estimate(str(path), gpus=2, vram=80, strategy=strategy, seq_len=256)
    g = est.per_gpu
    assert est.model.source == "traced" or name == "falcon"
    # the allocator ran: reserved holds at least what is allocated, which holds at least the tensors' bytes
    assert g.reserved >= g.allocated > g.parameters + g.gradients
    assert sum(g.breakdown.values()) == g.total
