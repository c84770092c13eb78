"""The search itself: it agrees with a brute force through the public API, sizes micro-batches and accumulation right,
honours fixed settings, margins and extra rules, and reports bad input as InputError (exit 2)."""

from __future__ import annotations

import pytest

import typing

from advisor.api import build_hardware, build_training, estimate
from advisor.choices import Checkpointing, StrategyName
from advisor.errors import InputError
from advisor.recommend import recommend
from advisor.specs import GiB, TrainingSpec

from .conftest import run


STRATEGY_NAMES = typing.get_args(StrategyName)
OFFLOADS = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"))     # optimizer, parameters (no NVMe path given)
CHECKPOINTING = typing.get_args(Checkpointing)


def oracle(model, hw_kw, training, precision):
    """Every strategy x offload x checkpointing x micro-batch through the public advisor.api.estimate, without
    any of the search's code: {(strategy, offload_opt, offload_param, ckpt): {micro: fits}}. Combinations
    the API refuses (offload with DDP, ...) are left out. ``fits``: per-GPU total within the usable VRAM."""
    hw = build_hardware(**hw_kw)
    usable = int(hw.vram_bytes * (1 - MARGIN))
    per_gpu = training["global_batch"] // hw.world_size
    micros = [m for m in range(1, per_gpu + 1) if per_gpu % m == 0]
    table = {}
    for name in STRATEGY_NAMES:
        for opt, par in OFFLOADS:
            for ckpt in CHECKPOINTING:
                row = {}
                for micro in micros:
                    try:
                        est = estimate(model, **hw_kw, **training, micro_batch=micro, precision=precision,
                                       strategy=name, offload_optimizer=opt, offload_param=par, checkpointing=ckpt)
                    except InputError:
                        break
                    row[micro] = est.per_gpu.total <= usable and est.per_node_cpu.fits
                    if not row[micro]:
                        break                   # memory grows with the micro-batch: larger ones do not fit
                if row:
                    table[(name, opt, par, ckpt)] = row
    return table, usable


MARGIN = 0.05     # rules/defaults.yaml const.margin_fraction


@pytest.mark.parametrize("model, hw_kw, training", [
    ("7B", dict(gpus=4, vram=24), dict(global_batch=64)),
    ("1.3B", dict(gpus=8, gpu="v100-32g"), dict(global_batch=256)),
    ("qwen2.5-3b", dict(gpus=2, gpu="rtx-4090"), dict(seq_len=1024, global_batch=48)),
    ("gpt2", dict(gpus=1, vram=16), dict(seq_len=1024, global_batch=24)),
])
def test_the_search_agrees_with_brute_force_through_the_public_api(model, hw_kw, training):
    r = run(model, **hw_kw, **training)
    rec = r.recommendation
    table, usable = oracle(model, hw_kw, training, rec.precision)
    assert r.usable_vram_bytes == usable
    key = (rec.name, rec.offload_optimizer, rec.offload_param, rec.activation_checkpointing)
    # The choice fits, and its micro-batch is the largest of its configuration that does.
    row = table[key]
    assert row[rec.micro_batch_size]
    assert rec.micro_batch_size == max(m for m, ok in row.items() if ok)
    again = estimate(model, **hw_kw, **training, micro_batch=rec.micro_batch_size, precision=rec.precision,
                     strategy=rec.name, offload_optimizer=rec.offload_optimizer, offload_param=rec.offload_param,
                     checkpointing=rec.activation_checkpointing)
    assert again.per_gpu.total == r.estimate.per_gpu.total
    # Every layout that fits somehow is the choice or a runner-up that is not called unfit; every runner-up
    # called unfit fits with no checkpointing at the smallest micro-batch, and one called fitting does fit.
    fitting_layouts = {k[:3] for k, row in table.items() if any(row.values())}
    reported = {(a.strategy.name, a.strategy.offload_optimizer, a.strategy.offload_param): a for a in r.alternatives}
    for layout in fitting_layouts - {key[:3]}:
        assert layout in reported, f"{layout} fits (brute force) but the search does not mention it"
        a = reported[layout]
        assert a.fits is not False or a.rejected_because.startswith("ruled out"), (layout, a.rejected_because)
    for layout, a in reported.items():
        rows = [table.get((*layout, c), {}) for c in CHECKPOINTING]
        if a.fits is False:
            assert not any(any(row.values()) for row in rows), (layout, a.rejected_because)
        elif a.fits:
            row = table[(*layout, a.strategy.activation_checkpointing)]
            assert row.get(a.strategy.micro_batch_size), (layout, a.strategy.micro_batch_size)


def test_micro_batch_divides_the_global_batch_and_accumulation_reaches_it():
    r = run("llama-2-7b", gpus=8, gpu="a100-80g", global_batch=96)
    rec = r.recommendation
    assert 12 % rec.micro_batch_size == 0
    assert rec.micro_batch_size * 8 * rec.gradient_accumulation_steps == 96 == rec.global_batch_size
    with pytest.raises(InputError, match="--global-batch: 100 is not a multiple of the 8 GPU"):
        run("llama-2-7b", gpus=8, gpu="a100-80g", global_batch=100)
    with pytest.raises(InputError, match="--global-batch: no micro-batch between 5 and 5 divides the 12 samples"):
        run("llama-2-7b", gpus=8, gpu="a100-80g", global_batch=96, micro_batch=5, max_micro_batch=5)
    with pytest.raises(InputError, match="--global-batch: 4 is less than --micro-batch 1 x 8"):
        run("llama-2-7b", gpus=8, gpu="a100-80g", global_batch=4)


def test_micro_batch_is_the_largest_that_fits():
    r = run("llama-2-7b", gpus=8, gpu="a100-80g", checkpointing="full")
    m = r.recommendation.micro_batch_size
    prefix = f"micro-batch {m}: the largest that fits (micro-batch {m + 1} would not fit"
    assert any(x.startswith(prefix) for x in r.reasons)
    pinned = run("llama-2-7b", gpus=8, gpu="a100-80g", checkpointing="full", micro_batch=2, max_micro_batch=2)
    assert pinned.recommendation.micro_batch_size == 2
    with pytest.raises(InputError, match="--max-micro-batch"):
        run("gpt2", vram=24, seq_len=512, micro_batch=4, max_micro_batch=2)


def test_margin_keeps_memory_free():
    loose = run("llama-2-7b", gpus=8, gpu="a100-80g", checkpointing="full", margin=0.0)
    tight = run("llama-2-7b", gpus=8, gpu="a100-80g", checkpointing="full", margin=0.3)
    assert tight.usable_vram_bytes == int(tight.estimate.hardware.vram_bytes * 0.7)
    assert tight.estimate.per_gpu.total <= tight.usable_vram_bytes
    assert tight.recommendation.micro_batch_size < loose.recommendation.micro_batch_size
    with pytest.raises(InputError, match="--margin"):
        run("gpt2", vram=24, seq_len=512, margin=0.95)


def test_fixed_settings_are_kept():
    r = run("llama-2-7b", gpus=8, gpu="a100-80g", precision="fp16", checkpointing="selective")
    assert r.recommendation.precision == "fp16" and r.recommendation.activation_checkpointing == "selective"
    assert r.recommendation.fp16 is not None
    assert any("fixed by --checkpointing" in x for x in r.reasons)


def test_bf16_on_a_gpu_without_it_is_bad_input_naming_the_rule():
    with pytest.raises(InputError) as err:
        run("1.3B", gpus=2, gpu="v100-32g", precision="bf16")
    msg = str(err.value)
    assert msg.startswith("--precision: bf16 is ruled out") and "bf16-needs-hardware" in msg
    assert "rules/precision.yaml" in msg


def test_api_template_fields_set_explicitly_are_fixed():
    hw = build_hardware(gpus=2, gpu="a100-80g")
    t = TrainingSpec(seq_len=1024, precision="fp16", activation_checkpointing="full")
    r = recommend("qwen2.5-1.5b", hw, t)
    assert r.recommendation.precision == "fp16" and r.recommendation.activation_checkpointing == "full"
    free = recommend("qwen2.5-1.5b", hw, TrainingSpec(seq_len=1024))
    assert free.recommendation.precision == "bf16"


def test_extra_rules_change_the_choice_and_are_reported(tmp_path):
    base = run("llama-2-7b", gpus=8, gpu="a100-80g", global_batch=128)
    assert base.recommendation.name == "zero1"
    extra = tmp_path / "site.yaml"
    extra.write_text("rules:\n  - id: site-no-zero1\n    description: our cluster's DeepSpeed build has a ZeRO-1 bug\n"
                     "    when: hardware.nodes == 1\n    forbid: {strategy: zero1}\n")
    r = run("llama-2-7b", gpus=8, gpu="a100-80g", global_batch=128, rules=[str(extra)])
    assert r.recommendation.name != "zero1"
    hit = [f for f in r.rules_fired if f.rule == "site-no-zero1"]
    assert hit and hit[0].file == str(extra) and hit[0].effect == "forbid"
    z1 = [a for a in r.alternatives if a.strategy.name == "zero1" and a.strategy.offload_optimizer == "none"]
    assert "ZeRO-1 bug" in z1[0].rejected_because


def test_rules_fired_name_project_relative_files():
    r = run("13B", gpus=8, nodes=2, gpu="a100-40g", global_batch=256)
    assert r.rules_fired
    for f in r.rules_fired:
        assert f.rule and f.effect and f.outcome
        assert f.file.startswith("rules/") and f.file.endswith(".yaml")


def test_lora_targets_are_checked_up_front():
    with pytest.raises(InputError, match="not a linear layer"):
        run("llama-2-7b", gpus=1, vram=24, method="lora", lora_targets=("c_attn",))


def test_nvme_offload_only_with_a_path():
    r = run("7B", vram=24, cpu_ram=64, suggest=False)
    assert not r.found
    with_path = run("7B", vram=24, cpu_ram=64, nvme_path="/nvme")
    assert with_path.found and "nvme" in (with_path.recommendation.offload_optimizer,
                                          with_path.recommendation.offload_param)
    assert with_path.estimate.per_node_nvme_bytes > 10 * GiB
