"""Rendering, validating, linting and dry-running accelerate YAML and DeepSpeed JSON (``dsadvise generate``,
``check``, ``dry-run``).

Importing this package is cheap: the modules below load on first use (the sub-commands are in
:mod:`advisor.cli.configs`).
"""

from __future__ import annotations

__all__ = ["render_files", "write_files", "validate_files", "lint_file", "dry_run"]


def __getattr__(name: str):
    if name == "render_files":
        from .render import render_files

        return render_files
    if name == "write_files":
        from .write import write_files

        return write_files
    if name == "validate_files":
        from .validate import validate_files

        return validate_files
    if name == "lint_file":
        from .lint import lint_file

        return lint_file
    if name == "dry_run":
        from .dryrun import dry_run

        return dry_run
    raise AttributeError(f"module 'advisor.render' has no attribute {name!r}")
