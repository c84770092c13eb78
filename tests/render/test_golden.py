"""Rendered files of each scenario equal the committed golden files byte for byte.

Rewrite them after a deliberate change (and review the diff):
    DSADVISE_UPDATE_GOLDENS=1 python -m pytest tests/render/test_golden.py
README.md is compared with its memory-estimate section masked: the estimator's numbers evolve on their own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .conftest import LAYOUT_SCENARIOS, SCENARIOS

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("DSADVISE_UPDATE_GOLDENS") == "1"
_ESTIMATE = re.compile(r"<!-- estimate -->.*?<!-- /estimate -->", re.S)


def comparable(name: str, text: str) -> str:
    if name == "README.md":
        return _ESTIMATE.sub("<!-- estimate -->\n(masked: see the estimator's own tests)\n<!-- /estimate -->", text)
    return text


@pytest.mark.parametrize("scenario", list(SCENARIOS) + list(LAYOUT_SCENARIOS))
def test_golden(rendered, rendered_layouts, scenario):
    files = {n: comparable(n, t) for n, t in {**rendered, **rendered_layouts}[scenario].items()}
    folder = GOLDEN / scenario
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.name not in files:
                old.unlink()
        for name, text in files.items():
            (folder / name).write_bytes(text.encode("utf-8"))
    assert folder.is_dir(), f"no goldens for {scenario}: run with DSADVISE_UPDATE_GOLDENS=1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), "rendered file set changed"
    for name, text in files.items():
        golden = (folder / name).read_bytes()
        assert text.encode("utf-8") == golden, f"{scenario}/{name} differs from the golden file"


def test_scenario_commands_are_documented():
    readme = (GOLDEN / "README.md").read_text(encoding="utf-8")
    for name, argv in {**SCENARIOS, **LAYOUT_SCENARIOS}.items():
        assert name in readme and argv.split()[1] in readme
