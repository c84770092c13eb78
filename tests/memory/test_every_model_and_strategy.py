"""The estimate path works for every catalog model under every strategy and offload combination."""

from __future__ import annotations

import pytest

from advisor.api import estimate
from advisor.catalog.models import list_models
from advisor.errors import InputError
from advisor.specs import STRATEGY_NAMES

NAMES = [m.name for m in list_models()]
COMBOS = [(s, "none", "none") for s in STRATEGY_NAMES] + [
    ("zero1", "cpu", "none"), ("zero2", "cpu", "none"), ("zero3", "cpu", "none"), ("zero3", "cpu", "cpu"),
    ("zero3", "nvme", "nvme"), ("fsdp-full", "cpu", "cpu"), ("fsdp-hybrid", "cpu", "cpu")]


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_estimates(name):
    for strategy, off_opt, off_param in COMBOS:
        gpus = 1 if strategy == "single" else 8
        e = estimate(name, gpus=gpus, nodes=1 if strategy != "fsdp-hybrid" else 2, vram=80,
                     strategy=strategy, offload_optimizer=off_opt, offload_param=off_param,
                     nvme_path="/nvme", cpu_ram=2048, checkpointing="full")
        g = e.per_gpu
        assert g.total == (g.parameters + g.gradients + g.optimizer_states + g.activations + g.temporaries
                           + g.buffers + g.overhead - g.phase_overlap)
        assert g.activations > 0 and g.overhead > 0
        assert e.model.parameters == e.model.trainable_parameters


@pytest.mark.parametrize("name", NAMES)
def test_inference_and_adapters_estimate(name):
    assert estimate(name, task="infer", gpus=4, vram=80).inference
    for method in ("lora", "qlora", "freeze"):
        try:
            e = estimate(name, gpus=1, vram=80, method=method, checkpointing="full")
        except InputError as exc:   # e.g. a family whose module names a LoRA target list lacks
            pytest.fail(f"{name} {method}: {exc}")
        assert 0 < e.model.trainable_parameters < e.model.parameters
