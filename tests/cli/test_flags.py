"""The one flag table: choices are the specs' Literals, every command and the wizard read it, and every spec
field an API error can name maps to a flag users can type."""

from __future__ import annotations

import typing

import pytest

from advisor import choices, specs
from advisor.cli import build_parser, flags
from advisor.tui import form


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def test_choices_are_the_specs_literals():
    for flag, literal in (("--precision", specs.Precision), ("--optimizer", specs.Optimizer),
                          ("--method", specs.Method), ("--checkpointing", specs.Checkpointing),
                          ("--attention", specs.Attention), ("--task", specs.Task),
                          ("--strategy", specs.StrategyName), ("--offload-optimizer", specs.OffloadTarget),
                          ("--bucket-sizes", specs.BucketSizes)):
        assert flags.FLAGS[flag].choices == typing.get_args(literal), flag
    assert specs.Precision is choices.Precision          # specs use the same Literal objects


def test_every_command_parser_takes_its_choices_from_the_table():
    for name, parser in _subparsers().items():
        for action in parser._actions:
            for option in action.option_strings:
                table = flags.FLAGS.get(option)
                if table is None or table.choices is None or action.choices is None:
                    continue
                extra = set(action.choices) - set(table.choices)
                assert extra <= {"auto"}, (name, option, extra)     # recommend: --method auto


def test_every_table_flag_is_used_by_a_command():
    used = {o for p in _subparsers().values() for a in p._actions for o in a.option_strings}
    assert set(flags.FLAGS) <= used, set(flags.FLAGS) - used


def test_api_errors_and_wizard_fields_name_table_flags():
    from advisor.api import FLAG_NAMES

    assert set(FLAG_NAMES.values()) <= set(flags.FLAGS)
    for field in ("gpus_per_node", "vram_bytes", "micro_batch_size", "global_batch_size", "precision", "rank",
                  "activation_checkpointing", "zero_stage", "target_modules", "freeze_trainable_layers"):
        assert field in FLAG_NAMES, field
    assert set(form.FIELD_FLAGS.values()) <= set(flags.FLAGS)
    assert set(form.FIELD_FLAGS) <= set(form.WizardInputs.field_names())
    assert form.PRECISION_CHOICES[1:] == flags.PRECISIONS and form.STRATEGY_CHOICES[1:] == flags.STRATEGIES
    assert form.field_for_flag("--global-batch") == "global_batch" and form.field_for_flag("--margin") == "margin"   # its Advanced field


# ---------------------------------------------------------------- estimate-only values (one table: Flag.estimate_only)

ESTIMATE_ONLY = [(f.flag, next(c for c in f.choices if c != f.default))
                 for f in flags.FLAGS.values() if f.estimate_only]


def test_the_table_names_the_estimate_only_values():
    assert sorted(flag for flag, _ in ESTIMATE_ONLY) == ["--model-code", "--qlora-quantizer"]


@pytest.mark.parametrize("flag, value", ESTIMATE_ONLY)
@pytest.mark.parametrize("command", ["recommend", "generate"])
def test_recommend_and_generate_refuse_estimate_only_values_in_one_line(capsys, tmp_path, command, flag, value):
    from advisor.cli import main

    argv = [command, "--model", "tiny-llama-1.1b", "--gpu", "a10g", "--method", "qlora", flag, value]
    if command == "generate":
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.count(flag) == 1 and "dsadvise estimate" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", ESTIMATE_ONLY)
def test_the_wizard_refuses_them_at_their_field(flag, value):
    from advisor.tui import backend
    from advisor.tui.form import WizardInputs, field_for_flag

    name = field_for_flag(flag)
    out = backend.evaluate(WizardInputs(model="tiny-llama-1.1b", gpu="a10g", vram="22", method="qlora")
                           .with_(**{name: value}))
    assert "dsadvise estimate" in out.errors[name]
