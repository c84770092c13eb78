"""Helpers: build a problem the way the CLI does and run the recommender."""

from __future__ import annotations

import pytest

from advisor.api import build_hardware, build_training
from advisor.recommend import recommend


def run(model: str, *, gpus: int = 1, nodes: int = 1, vram=None, gpu=None, cpu_ram=None, nvme_path=None,
        method: str = "full", precision: str = "auto", checkpointing: str = "auto", margin=None,
        max_micro_batch=None, rules=(), suggest: bool = True, **training):
    hw = build_hardware(gpus, nodes, vram, gpu, cpu_ram, nvme_path)
    template = build_training(hw, method="full" if method == "auto" else method, **training)
    return recommend(model, hw, template, method=method, precision=precision, checkpointing=checkpointing,
                     margin=margin, max_micro_batch=max_micro_batch, rules=rules, suggest=suggest)


@pytest.fixture
def rec():
    return run
