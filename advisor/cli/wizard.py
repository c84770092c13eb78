"""The ``dsadvise wizard`` sub-command: argument parsing here, Textual only inside the handler.

Nothing in this module imports Textual, so the rest of the CLI never pays for it.
"""

from __future__ import annotations

import argparse
import sys

from .. import exit_codes
from ..errors import InputError
from . import flags

DEFAULT_OUT = "dsadvise-configs"


def register(sub) -> None:
    """Add the ``wizard`` sub-command to the ``dsadvise`` sub-parsers ``sub``."""
    p = sub.add_parser("wizard", help="interactive wizard: pick model, hardware and training, see memory and "
                                      "the recommendation live, preview and save the configs")
    flags.add(p, ("--model", "--gpu", "--gpus", "--nodes", "--vram", "--task", "--out", "--force", "--profile"),
              model={"default": "", "help": "start with this model (a size, a catalog name or a config.json)"},
              gpu={"default": "", "help": "start with this catalog GPU (see `dsadvise gpus`)"},
              gpus={"help": "GPUs per node to start with (default 1)"},
              nodes={"help": "nodes to start with (default 1)"},
              vram={"help": "memory per GPU in GiB to start with"},
              task={"help": "start in training (train, the default) or inference (infer) mode"},
              out={"default": DEFAULT_OUT, "help": "folder Save writes the configs to, as `dsadvise generate "
                                                   f"--out` (default: {DEFAULT_OUT})"},
              force={"help": "start with 'overwrite existing files' ticked (a non-empty folder is refused "
                             "without it)"})
    # every other flag of estimate / recommend fills its wizard field at start (the command line the wizard shows
    # on F5 starts it again); not given: the field's default
    start = p.add_argument_group("start values (the flags of estimate and recommend; each fills its field)")
    overrides = {flags.FLAGS[f].dest: {} if flags.FLAGS[f].action else {"default": None} for f in START_FLAGS}
    overrides["method"]["choices"] = flags.METHODS + (flags.AUTO,)      # as recommend: auto searches it
    flags.add(start, START_FLAGS, **overrides)
    p.set_defaults(func=cmd_wizard)


_OWN = ("--model", "--gpu", "--gpus", "--nodes", "--vram", "--task", "--out", "--force", "--profile")
# the problem flags of estimate and recommend, their own extras and generate's --framework: every flag with a wizard
# field (not flags.CLI_ONLY) except those above
START_FLAGS: tuple[str, ...] = tuple(dict.fromkeys(
    f for f in (*flags.HARDWARE_FLAGS, *flags.TRAINING_FLAGS, *flags.STRATEGY_FLAGS, *flags.LAYOUT_FLAGS,
                *flags.ESTIMATE_FLAGS, *flags.RECOMMEND_FLAGS, "--framework")
    if f not in _OWN and f not in flags.CLI_ONLY))


def initial_inputs(args: argparse.Namespace):
    """The wizard's starting fields from the command line; an unknown GPU is refused before the UI starts."""
    from ..tui.form import WizardInputs, fields_from_args, vram_text

    gpu = ""
    if args.gpu:
        from ..catalog.gpus import resolve_gpu

        gpu = resolve_gpu(args.gpu).name          # InputError (exit 2) names the candidates
    vram = f"{args.vram:g}" if args.vram else (vram_text(gpu) if gpu else "")
    inputs = WizardInputs(model=args.model, gpu=gpu, vram=vram, gpus=str(args.gpus), nodes=str(args.nodes),
                          task=args.task)
    return inputs.with_(**fields_from_args(args, START_FLAGS))


def cmd_wizard(args: argparse.Namespace) -> int:
    """Run the wizard; exit 0 when the user quits (Ctrl+Q), 2 without a terminal or on a bad start value."""
    inputs = initial_inputs(args)
    profile = flags.profile(args)          # InputError (exit 2) on a missing or bad profile, before the UI
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError("the wizard needs an interactive terminal; in scripts use `dsadvise recommend`",
                         field="wizard")
    from ..tui.app import WizardApp     # Textual is imported only here

    app = WizardApp(inputs, output_dir=args.out, force=args.force, profile=profile)
    app.run()
    code = app.return_code
    return exit_codes.OK if code in (None, 0) else exit_codes.FAILED
