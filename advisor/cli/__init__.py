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
import os
import sys
from collections.abc import Sequence

from .. import exit_codes


def build_parser() -> argparse.ArgumentParser:
    """The ``dsadvise`` parser with every sub-command."""
    from .. import __version__
    # Imported here, not at the top, so that importing the flag table (advisor.cli.flags) stays light.
    from . import calibrate, catalogs, configs, estimate, presets, recommend, wizard
    from .boundary import Parser

    parser = Parser(prog="dsadvise", description="Estimate GPU memory, recommend and render accelerate / "
                                                 "DeepSpeed configs for training large models.")
    parser.add_argument("--version", action="version", version=f"dsadvise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in (estimate, recommend, configs, presets, calibrate, catalogs, wizard):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dsadvise`` console script; returns the process exit code."""
    from .boundary import run

    # pydantic looks for plugins by scanning every installed distribution's entry points when it builds its
    # first model (importlib.metadata; tens of ms in a venv with torch). The command uses none; the Python
    # API (advisor.api) leaves the setting to its caller.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exit_codes.BAD_INPUT
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
