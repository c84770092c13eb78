"""The search itself: it finds what an exhaustive search finds, sizes micro-batches and accumulation right,
honours fixed settings, margins and extra rules, and reports bad input as InputError (exit 2)."""

from __future__ import annotations

import pytest

from advisor.api import build_hardware, build_training
from advisor.errors import InputError
from advisor.recommend import recommend
from advisor.recommend import search as S
from advisor.recommend.problem import make_problem
from advisor.specs import GiB, TrainingSpec

from .conftest import run


def problem(model, hw_kw, **training):
    hw = build_hardware(**hw_kw)
    t = build_training(hw, **training)
    return make_problem(model, hw, t, margin=None, method="full", precision="auto", checkpointing="auto",
                        max_micro_batch=None, rules=())


def exhaustive(p):
    """Every group, every micro-batch size: the largest that fits, judged and ranked like the search."""
    s = S._Search(p)
    allowed, *_ = S.narrow(p)
    out = S.search_training(p)          # for the precision, layouts and trainable count it settled on
    layouts, precision = out.layouts, out.precision
    verdicts = {lay.label: S.apply_rules(p.stages[1], {**p.facts, **lay.facts()}, lay.settings(), S.F.DOMAINS)
                for lay in layouts}
    trainable = out.groups[0].trainable
    ckpts = [p.checkpointing_fixed] if p.checkpointing_fixed else ["none", "selective", "full"]
    groups = S._build_groups(s, p, layouts, verdicts, precision, "full", ckpts, trainable)
    for g in groups:
        if g.status != "pending":
            continue
        fitting = [m for m in p.micro.values if s.fits(g, m)[0]]
        if not fitting:
            g.status = "infeasible"
            continue
        g.micro = fitting[-1]
        g.gas = p.micro.accumulation(g.micro)
        g.estimate = s.fits(g, g.micro)[2]
        g.step = s.step_time(g, g.micro)
        s.judge_sized(g)
    return S._choose(p, groups), out


@pytest.mark.parametrize("model, hw_kw, training", [
    ("7B", dict(gpus=4, vram=24), dict(global_batch=64)),
    ("1.3B", dict(gpus=8, gpu="v100-32g"), dict(global_batch=256)),
    ("llama-2-7b", dict(gpus=8, gpu="a100-80g"), dict(global_batch=128)),
    ("qwen2.5-3b", dict(gpus=2, gpu="rtx-4090"), dict(seq_len=1024, global_batch=48)),
    ("gpt2", dict(gpus=1, vram=16), dict(seq_len=1024, global_batch=24)),
])
def test_branch_and_bound_finds_what_exhaustive_search_finds(model, hw_kw, training):
    p = problem(model, hw_kw, **training)
    best, out = exhaustive(p)
    assert out.chosen is not None and best is not None
    assert (out.chosen.label, out.chosen.micro) == (best.label, best.micro)
    assert out.chosen.adj == pytest.approx(best.adj)


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
