"""Effects, precedence and conflicts of fired rules (see rules/README.md, "Precedence and conflicts")."""

from __future__ import annotations

import textwrap

import pytest

from advisor.recommend.facts import CATALOG, DOMAINS
from advisor.ruleengine import RuleConflictError, apply_rules, load_rules, narrow_domains, resolve_setting

FACTS = {"hardware.nodes": 2, "hardware.bf16": False, "candidate.strategy": "zero3", "candidate.zero_stage": 3,
         "model.parameters": 7e9}
VALUES = {"strategy": "zero3", "zero_stage": 3, "backend": "deepspeed", "precision": "fp16",
          "offload_optimizer": "none", "offload_param": "none", "fsdp_sharding": None, "method": "full",
          "activation_checkpointing": "none"}


def rules_from(tmp_path, body: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return load_rules([path], catalog=CATALOG, domains=DOMAINS).rules


def test_reject_wins_over_prefer(tmp_path):
    rules = rules_from(tmp_path, """
        rules:
          - {id: like-it, description: d, when: "candidate.strategy == 'zero3'", prefer: {factor: 0.5}}
          - {id: drop-it, description: too slow here, when: "hardware.nodes > 1", reject: "no {candidate.strategy}"}
    """)
    v = apply_rules(rules, FACTS, VALUES, DOMAINS, candidate="c")
    assert v.rejected and v.reason == "no zero3 [rule drop-it]"
    assert {(f.rule.id, f.outcome) for f in v.fired} == {("like-it", "applied"), ("drop-it", "rejected")}


def test_forbid_beats_prefer(tmp_path):
    rules = rules_from(tmp_path, """
        rules:
          - {id: like-it, description: d, when: "true", prefer: {factor: 0.1}}
          - {id: not-zero3, description: no zero3 today, when: "hardware.nodes > 1", forbid: {strategy: zero3}}
    """)
    v = apply_rules(rules, FACTS, VALUES, DOMAINS)
    assert v.rejected and "no zero3 today" in v.reason
    ok = apply_rules(rules, FACTS, {**VALUES, "strategy": "zero2"}, DOMAINS)
    assert not ok.rejected and ok.factor == pytest.approx(0.1)


def test_factors_multiply(tmp_path):
    rules = rules_from(tmp_path, """
        rules:
          - {id: a, description: d, when: "true", prefer: {factor: 0.5}}
          - {id: b, description: d, when: "true", penalise: {factor: 3}}
          - {id: c, description: d, when: "false", penalise: {factor: 100}}
    """)
    assert apply_rules(rules, FACTS, VALUES, DOMAINS).factor == pytest.approx(1.5)


def test_require_needs_every_listed_setting(tmp_path):
    rules = rules_from(tmp_path, """
        rules:
          - {id: r, description: want zero3 on fp16, when: "true", require: {zero_stage: 3, precision: [fp16, fp32]}}
    """)
    assert not apply_rules(rules, FACTS, VALUES, DOMAINS).rejected
    assert apply_rules(rules, FACTS, {**VALUES, "precision": "bf16"}, DOMAINS).rejected
    assert apply_rules(rules, FACTS, {**VALUES, "zero_stage": 2}, DOMAINS).rejected


def test_higher_priority_wins_and_the_other_is_overridden(tmp_path):
    rules = rules_from(tmp_path, """
        rules:
          - {id: must-fp16, description: V100, priority: 10, when: "not hardware.bf16", require: {precision: fp16}}
          - {id: no-fp16, description: d, when: "hardware.nodes > 1", forbid: {precision: fp16}}
    """)
    v = apply_rules(rules, FACTS, VALUES, DOMAINS, candidate="c")
    assert not v.rejected
    assert {(f.rule.id, f.outcome) for f in v.fired} == {("no-fp16", "overridden")}
    # the same with the priorities swapped: now forbid wins and the fp16 candidate is out
    swapped = rules_from(tmp_path, """
        rules:
          - {id: must-fp16, description: V100, when: "not hardware.bf16", require: {precision: fp16}}
          - {id: no-fp16, description: no fp16, priority: 10, when: "hardware.nodes > 1", forbid: {precision: fp16}}
    """, "s.yaml")
    v = apply_rules(swapped, FACTS, VALUES, DOMAINS, candidate="c")
    assert v.rejected and "no fp16" in v.reason
    assert ("must-fp16", "overridden") in {(f.rule.id, f.outcome) for f in v.fired}
    allowed, fired, _ = narrow_domains(swapped, FACTS, DOMAINS)
    assert allowed["precision"] == {"fp32", "bf16", "pure-bf16"}
    assert [(f.rule.id, f.outcome) for f in fired] == [("no-fp16", "constrained"), ("must-fp16", "overridden")]


def test_equal_priority_contradiction_is_an_error_not_a_guess(tmp_path):
    rules = rules_from(tmp_path, """
        rules:
          - {id: must-fp16, description: d, when: "not hardware.bf16", require: {precision: fp16}}
          - {id: no-fp16, description: d, when: "hardware.nodes > 1", forbid: {precision: fp16}}
    """)
    with pytest.raises(RuleConflictError) as err:
        apply_rules(rules, FACTS, VALUES, DOMAINS)
    assert "'must-fp16'" in str(err.value) and "'no-fp16'" in str(err.value) and "priority 0" in str(err.value)
    assert err.value.exit_code == 2
    # no conflict when only one of them fires
    assert not apply_rules(rules, {**FACTS, "hardware.nodes": 1}, VALUES, DOMAINS).rejected


def test_compatible_constraints_intersect(tmp_path):
    rules = rules_from(tmp_path, """
        rules:
          - {id: a, description: d, when: "true", require: {strategy: [zero2, zero3, ddp]}}
          - {id: b, description: d, when: "true", forbid: {strategy: [ddp]}}
    """)
    allowed, _, overridden = resolve_setting("strategy", rules, DOMAINS["strategy"])
    assert allowed == {"zero2", "zero3"} and not overridden


def test_order_is_priority_then_file_then_position(tmp_path):
    (tmp_path / "b.yaml").write_text("rules:\n  - {id: b1, description: d, when: 'true', advise: b1}\n"
                                     "  - {id: b2, description: d, when: 'true', advise: b2, priority: 5}\n")
    (tmp_path / "a.yaml").write_text("rules:\n  - {id: a1, description: d, when: 'true', advise: a1}\n"
                                     "  - {id: a2, description: d, when: 'true', advise: a2}\n")
    rs = load_rules([tmp_path], catalog=CATALOG, domains=DOMAINS)
    assert [r.id for r in rs.rules] == ["b2", "a1", "a2", "b1"]
    v = apply_rules(rs.rules, FACTS, VALUES, DOMAINS)
    assert [t for _, t in v.advice] == ["b2", "a1", "a2", "b1"]


def test_bundled_offload_rules():
    from advisor.recommend.ruleset import recommend_rules

    rs = recommend_rules()
    param = rs.by_id("offload-param-needs-sharded-parameters")
    facts = {"candidate.offload_param": "cpu"}
    bad = apply_rules([param], facts, {**VALUES, "strategy": "zero2", "zero_stage": 2}, DOMAINS)
    assert bad.rejected and "ZeRO-3" in bad.reason
    assert not apply_rules([param], facts, VALUES, DOMAINS).rejected
    nvme = rs.by_id("nvme-needs-a-path")
    allowed, fired, _ = narrow_domains([nvme], {"hardware.nvme_path": None}, DOMAINS)
    assert allowed["offload_optimizer"] == {"none", "cpu"} and allowed["offload_param"] == {"none", "cpu"}
    allowed, fired, _ = narrow_domains([nvme], {"hardware.nvme_path": "/nvme"}, DOMAINS)
    assert allowed == {} and fired == []
