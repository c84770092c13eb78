"""Llama 4 Scout and Maverick in the catalog: parameter counts against Meta's published figures (model cards:
Scout "17B (Activated) 109B (Total)", Maverick "17B (Activated) 400B (Total)", both with the ~0.87B vision tower
that the text decoder counted here leaves out)."""

from __future__ import annotations

import pytest

from advisor.catalog.models import resolve_model
from advisor.param_count import count_parameters


@pytest.mark.parametrize("name, total, active, published_total", [
    ("llama-4-scout-17b-16e", 107_769_861_120, 17_172_894_720, 109e9),
    ("llama-4-maverick-17b-128e", 400_711_848_960, 17_184_691_200, 400e9),
])
def test_llama4_counts(name, total, active, published_total):
    counts = count_parameters(resolve_model(name).architecture)
    assert (counts.total, counts.active_per_token) == (total, active)
    # the published totals include the vision encoder (~0.87B), rounded to the billion
    assert published_total - 1.5e9 < total < published_total + 1e9
    assert round(active / 1e9) == 17


def test_maverick_alternates_dense_and_moe_layers():
    arch = resolve_model("llama-4-maverick-17b-128e").architecture
    assert arch.dense_layers == 24 and arch.moe_layers == 24
    assert [k.rsplit("/", 1)[1] for k in arch.layer_pattern] == ["dense", "moe", "dense", "moe"]
