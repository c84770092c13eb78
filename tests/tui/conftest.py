"""tests/tui needs Textual, a dependency of dsadvise: a missing or broken install fails here, never skips.
Helpers are in helpers.py."""

import textual  # noqa: F401
