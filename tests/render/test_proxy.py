"""The dry-run's proxy model: for every catalog family it builds with AutoModelForCausalLM.from_config, keeps
the family's structure, and contains the decoder layer class FSDP is told to wrap."""

from __future__ import annotations

import pytest

from advisor.catalog.models import list_models
from advisor.render.context import FSDP_LAYER_CLASSES
from advisor.render.proxy import proxy_hf_config

transformers = pytest.importorskip("transformers")

# One catalog model per distinct proxy config.
_SEEN: dict[str, object] = {}
for _m in list_models():
    _SEEN.setdefault(repr(sorted(proxy_hf_config(_m.architecture).items())), _m)
CASES = list(_SEEN.values())


def test_every_catalog_family_has_a_layer_class():
    assert {m.architecture.family for m in list_models()} <= set(FSDP_LAYER_CLASSES)


@pytest.mark.parametrize("model", CASES, ids=[m.name for m in CASES])
def test_proxy_builds_and_wraps(model):
    import torch

    cfg = proxy_hf_config(model.architecture)
    assert cfg["model_type"] == model.architecture.family
    net = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
    layer = FSDP_LAYER_CLASSES[model.architecture.family]
    layers = [m for m in net.modules() if type(m).__name__ == layer]
    assert len(layers) == 2, f"{layer} not found in {type(net).__name__}"
    assert sum(p.numel() for p in net.parameters()) < 2_000_000
    tied = net.get_output_embeddings().weight is net.get_input_embeddings().weight
    assert tied == model.architecture.tie_word_embeddings
    ids = torch.randint(0, cfg["vocab_size"], (1, 8))
    assert torch.isfinite(net(input_ids=ids, labels=ids).loss)
