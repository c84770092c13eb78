"""tests/tui needs Textual (a dependency of dsadvise); helpers are in helpers.py."""

import pytest

pytest.importorskip("textual")
