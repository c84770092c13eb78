"""The ``dsadvise`` command line: a thin shell over :mod:`advisor.api`.

Layout: :mod:`.flags` (the one flag table every command and the wizard read), :mod:`.boundary` (the parser
class and the one error boundary mapping errors to exit codes), one module per command group:
:mod:`.estimate`, :mod:`.recommend`, :mod:`.configs` (generate, check, dry-run), :mod:`.wizard`,
:mod:`.calibrate` (measure this machine), :mod:`.catalogs` (models, gpus). Commands import the flag table,
never each other.

Nothing imported at start pulls torch, deepspeed, transformers, jinja2 or Textual; handlers import what
they need.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

from .. import exit_codes


# Which command group module registers each command: a command line naming one builds only that group's parser
# (the others' flags cost a few ms of argparse calls per start). tests/cli/test_main.py checks this table
# against the full parser.
GROUP_OF = {"estimate": "estimate", "recommend": "recommend", "generate": "configs", "check": "configs",
            "dry-run": "configs", "presets": "presets", "calibrate": "calibrate", "models": "catalogs",
            "gpus": "catalogs", "wizard": "wizard"}
GROUPS = ("estimate", "recommend", "configs", "presets", "calibrate", "catalogs", "wizard")


def _command(argv: Sequence[str] | None) -> str | None:
    """The command a command line names: its first argument when that is a command, else None."""
    return argv[0] if argv and argv[0] in GROUP_OF else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``dsadvise`` parser: with every sub-command, or, when ``argv`` starts with a command, with that
    command's group only (it parses that command line the same way)."""
    import importlib

    from .. import __version__
    from .boundary import Parser

    parser = Parser(prog="dsadvise", description="Estimate GPU memory, recommend and render accelerate / "
                                                 "DeepSpeed configs for training large models.")
    parser.add_argument("--version", action="version", version=f"dsadvise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    command = _command(argv)
    # Imported here, not at the top, so that importing the flag table (advisor.cli.flags) stays light.
    for group in (GROUP_OF[command],) if command else GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dsadvise`` console script; returns the process exit code. Without ``argv`` it runs
    as the program (``sys.argv``; the console script, ``python -m advisor``) and tunes the process's garbage
    collector for a short run; with ``argv`` (tests, callers) it leaves the process's settings alone."""
    from .boundary import run

    program = argv is None

    # pydantic looks for plugins by scanning every installed distribution's entry points when it builds its
    # first model (importlib.metadata; tens of ms in a venv with torch). The command uses none; the Python
    # API (advisor.api) leaves the setting to its caller.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # ...and with plugins disabled, pydantic's loader module need not be imported either (its import alone
    # pulls importlib.metadata and email: ~20 ms).
    from .pydantic_plugins import skip_discovery

    skip_discovery()
    if program:
        # A start creates ~40k long-lived objects (modules, classes, pydantic schemas): with CPython's default
        # threshold (a young-generation collection every 700 net allocations; docs: gc.set_threshold) ~55
        # collections re-scan them, ~10 ms of a 150 ms estimate. Collections every 50k allocations free the
        # same cycles, a little later.
        gc.set_threshold(max(gc.get_threshold()[0], 50_000), *gc.get_threshold()[1:])
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exit_codes.BAD_INPUT
    if program:
        # The command's imports create ~70 dataclasses and ~750 typing forward references whose generated source
        # the last run compiled the same way (a quarter of an estimate's instructions): their code objects are
        # kept between runs (codecache.py).
        from . import codecache

        codecache.install(args.command)
    code = run(args.func, args)
    if program:
        codecache.save()
        # The interpreter's exit runs full collections over every object left (~15 % of an estimate's CPU time
        # on this project's machine); frozen objects (docs: gc.freeze) are skipped there. Exit handlers,
        # flushing and finalizers of objects freed by reference counting run as usual.
        gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(main())
