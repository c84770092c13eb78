"""The one error boundary of ``dsadvise``: argparse errors, user errors and internal bugs become one line on
stderr and a named exit code (:mod:`advisor.exit_codes`); a traceback only with ``DSADVISE_DEBUG=1``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .. import exit_codes
from ..errors import AdvisorError


def terminal_columns() -> int:
    """The terminal's width in columns as ``shutil.get_terminal_size().columns`` computes it (CPython 3.11
    shutil.py; tests/cli/test_codecache.py compares the two): a positive ``$COLUMNS``, else the width of the
    terminal on ``sys.__stdout__`` when not 0, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2; no abbreviated flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _get_formatter(self):
        # argparse builds a formatter on every add_argument (to check the metavar) and lets it ask
        # shutil.get_terminal_size for the width; importing shutil pulls bz2, lzma, zlib and fnmatch (~2 ms of an
        # estimate's ~150 ms CPU time). The same width, found the same way without it.
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)

    def error(self, message: str):  # type: ignore[override]
        self.exit(exit_codes.BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command's handler and map what it raises to an exit code."""
    try:
        return handler(args)
    except AdvisorError as exc:
        print(f"dsadvise: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dsadvise: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        return exit_codes.OK
    except Exception as exc:  # the boundary: an internal bug is one line, the traceback only on request
        if os.environ.get("DSADVISE_DEBUG"):
            raise
        print(f"dsadvise: internal error: {type(exc).__name__}: {exc} (set DSADVISE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return exit_codes.FAILED
