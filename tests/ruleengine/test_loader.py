"""Rule files: schema validation, one-line errors naming file / rule / field, and the bundled rules."""

from __future__ import annotations

import json
import re
import textwrap
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml

from advisor import specs
from advisor.datafiles import DATA_DIR, bundled_dir
from advisor.recommend.facts import CATALOG, DOMAINS, FACTS
from advisor.recommend.ruleset import recommend_rules
from advisor.ruleengine import RuleConflictError, RuleError, RuleSyntaxError, UnknownFactError, load_rules

RULES_DIR = bundled_dir("rules")


def write(tmp_path: Path, text: str, name: str = "extra.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path):
    return load_rules([path], catalog=CATALOG, domains=DOMAINS)


def error_of(tmp_path: Path, text: str) -> RuleError:
    path = write(tmp_path, text)
    with pytest.raises(RuleError) as err:
        load(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    return err.value


def test_bundled_rules_validate_against_the_shipped_schema():
    schema = json.loads((DATA_DIR / "rules.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    files = sorted(RULES_DIR.glob("*.yaml"))
    assert {f.name for f in files} >= {"defaults.yaml", "precision.yaml", "offload.yaml", "multinode.yaml"}
    for f in files:
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)
    rs = recommend_rules()
    assert len(rs.rules) >= 20
    assert all(r.file.startswith("rules/") and r.file.endswith(".yaml") for r in rs.rules)
    assert rs.constants["const.margin_fraction"] == 0.05


def test_schema_settings_match_the_specs():
    schema = json.loads((DATA_DIR / "rules.schema.json").read_text())
    props = schema["$defs"]["rule"]["properties"]["require"]["properties"]
    assert set(props) == set(DOMAINS)
    for name, values in DOMAINS.items():
        assert props[name]["oneOf"][0]["enum"] == list(values), name
    assert tuple(DOMAINS["strategy"]) == specs.STRATEGY_NAMES
    assert tuple(DOMAINS["precision"]) == typing.get_args(specs.Precision)
    assert tuple(DOMAINS["method"]) == typing.get_args(specs.Method)


def test_readme_documents_every_fact():
    readme = (RULES_DIR / "README.md").read_text()
    missing = [f for f in FACTS if f"`{f}`" not in readme]
    assert not missing


def test_a_good_extra_file_loads(tmp_path):
    path = write(tmp_path, """
        constants: {big_model: 30_000_000_000}
        rules:
          - id: huge-model-advice
            description: big models take long
            when: model.parameters > const.big_model
            advise: "{model.name} has {model.parameters:count} parameters"
    """)
    rs = load(path)
    rule = rs.by_id("huge-model-advice")
    assert rule.effect == "advise" and rule.facts == {"model.parameters", "const.big_model", "model.name"}
    assert rule.text({"model.name": "m", "model.parameters": 7e10}) == "m has 70.00B parameters"


@pytest.mark.parametrize("body, rule, field, words", [
    ("""
        rules:
          - id: x
            description: d
            when: true
            advise: a
            colour: red
     """, "x", None, "unknown field 'colour'"),
    ("""
        rules:
          - id: x
            description: d
            when: true
            penalize: {factor: 2}
     """, "x", None, "did you mean penalise"),
    ("""
        rules:
          - id: x
            when: true
            advise: a
     """, "x", None, "missing required field 'description'"),
    ("""
        rules:
          - id: x
            description: d
            when: true
            prefer: {factor: 1.5}
     """, "x", "prefer.factor", "1.5 is greater than the maximum of 1"),
    ("""
        rules:
          - id: x
            description: d
            when: true
            forbid: {precision: bf17}
     """, "x", "forbid.precision", "'bf17' is not one of"),
    ("""
        rules:
          - id: x
            description: d
            when: true
            forbid: {colour: red}
     """, "x", "forbid", "unknown field 'colour'"),
    ("""
        rules:
          - id: Bad_Id
            description: d
            when: true
            advise: a
     """, "Bad_Id", "id", "not a valid id"),
    ("""
        rules:
          - id: x
            description: d
            when: true
     """, "x", None, "no effect"),
    ("""
        rules:
          - id: x
            description: d
            when: true
            advise: a
            reject: b
     """, "x", None, "several effects"),
    ("""
        rules:
          - id: x
            description: d
            when: 3
            advise: a
     """, "x", "when", "expected string or boolean, got number 3"),
    ("""
        rules:
          - id: x
            description: d
            when: true
            priority: high
            advise: a
     """, "x", "priority", "expected integer"),
])
def test_schema_errors_name_file_rule_and_field(tmp_path, body, rule, field, words):
    err = error_of(tmp_path, body)
    assert err.rule == rule
    assert err.field == field
    assert words in str(err)


def test_top_level_errors(tmp_path):
    err = error_of(tmp_path, "ruels: []\n")
    assert "unknown field 'ruels'" in str(err) and "did you mean rules" in str(err)
    err = error_of(tmp_path, "- just\n- a list\n")
    assert "expected a mapping" in str(err)
    err = error_of(tmp_path, "rules: [\n  {id: x\n")
    assert "not valid YAML: line" in str(err)
    with pytest.raises(RuleError, match="no such rule file"):
        load(tmp_path / "absent.yaml")


def test_parse_error_names_rule_field_token_and_column(tmp_path):
    err = error_of(tmp_path, """
        rules:
          - id: broken
            description: d
            when: hardware.nodes > 1 and )
            advise: a
    """)
    assert isinstance(err, RuleSyntaxError)
    assert err.rule == "broken" and err.field == "when" and err.token == ")" and err.pos == 24
    assert re.search(r": rule 'broken': when: unexpected '\)' at column 24", str(err))


def test_unknown_fact_has_did_you_mean(tmp_path):
    err = error_of(tmp_path, """
        rules:
          - id: typo
            description: d
            when: hardware.gpu_per_node > 4
            advise: a
    """)
    assert isinstance(err, UnknownFactError)
    assert "rule 'typo': when: unknown fact 'hardware.gpu_per_node'" in str(err)
    assert "did you mean hardware.gpus_per_node" in str(err)


def test_type_error_and_placeholder_checks(tmp_path):
    err = error_of(tmp_path, """
        rules:
          - id: t
            description: d
            when: hardware.nodes == "two"
            advise: a
    """)
    assert "never equal" in str(err)
    err = error_of(tmp_path, """
        rules:
          - id: t
            description: d
            when: hardware.nodes + 1
            advise: a
    """)
    assert "not true or false" in str(err)
    err = error_of(tmp_path, """
        rules:
          - id: p
            description: d
            when: true
            advise: "needs {estimate.per_gpu.totl:bytes}"
    """)
    assert err.field == "advise" and "did you mean estimate.per_gpu.total" in str(err)
    err = error_of(tmp_path, """
        rules:
          - id: p
            description: d
            when: true
            advise: "needs {estimate.per_gpu.total:gib}"
    """)
    assert "unknown format 'gib'" in str(err)


def test_duplicates_across_files(tmp_path):
    a = write(tmp_path, "constants: {k: 1}\nrules:\n  - {id: same, description: d, when: true, advise: a}\n", "a.yaml")
    b = write(tmp_path, "rules:\n  - {id: same, description: d, when: true, advise: b}\n", "b.yaml")
    with pytest.raises(RuleError, match=r"b.yaml: rule 'same': id: duplicate rule id \(first defined in .*a.yaml\)"):
        load_rules([a, b], catalog=CATALOG, domains=DOMAINS)
    c = write(tmp_path, "constants: {k: 2}\nrules: []\n", "c.yaml")
    with pytest.raises(RuleError, match="constant 'const.k' is already defined"):
        load_rules([a, c], catalog=CATALOG, domains=DOMAINS)
    with pytest.raises(RuleError, match="duplicate rule id"):
        recommend_rules([write(tmp_path, "rules:\n  - {id: bf16-needs-hardware, description: d, when: true, "
                                         "advise: a}\n", "d.yaml")])


def test_contradicting_rules_with_the_same_condition_are_refused_at_load(tmp_path):
    path = write(tmp_path, """
        rules:
          - id: want-fp16
            description: d
            when: not hardware.bf16
            require: {precision: fp16}
          - id: no-fp16
            description: d
            when: not hardware.bf16
            forbid: {precision: [fp16]}
    """)
    with pytest.raises(RuleConflictError, match="'want-fp16' .* and 'no-fp16' .* contradict each other on 'precision'"):
        load(path)
    # different priorities: a deterministic winner, so it loads
    text = path.read_text().replace("forbid: {precision: [fp16]}", "forbid: {precision: [fp16]}\n    priority: 5")
    path.write_text(text)
    load(path)
