"""Errors a user can cause. Each carries one readable line; the CLI prints it and exits non-zero."""

from __future__ import annotations

from collections.abc import Iterable

from . import exit_codes


class AdvisorError(Exception):
    """Base of every error dsadvise reports to users as one line (never a traceback)."""

    exit_code = exit_codes.BAD_INPUT


class InputError(AdvisorError):
    """Bad user input: names the offending field and, where known, what is allowed."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NothingFits(AdvisorError):
    """No configuration fits the hardware, so there is nothing to generate (exit code 3)."""

    exit_code = exit_codes.NOTHING_FITS


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean X?)' suffix naming the closest choices, or '' when nothing is close."""
    import difflib      # only when there is an error to explain (it pulls unicodedata: slow to import)

    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + ", ".join(lowered[c] for c in close) + "?)"
