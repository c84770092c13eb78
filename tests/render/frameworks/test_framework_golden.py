"""Each framework's rendered files equal the committed goldens (tests/render/golden/frameworks/SCENARIO/FRAMEWORK/),
byte for byte. Rewrite after a deliberate change and review the diff:
    DSADVISE_UPDATE_GOLDENS=1 python -m pytest tests/render/frameworks/test_framework_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import FRAMEWORK_SCENARIOS, FRAMEWORKS

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "frameworks"
UPDATE = os.environ.get("DSADVISE_UPDATE_GOLDENS") == "1"
BASE = {"accelerate_config.yaml", "ds_config.json", "launch_accelerate.sh", "launch_deepspeed.sh",
        "launch_torchrun.sh", "README.md", "dsadvise.json", "hostfile", "slurm.sbatch"}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("scenario", list(FRAMEWORK_SCENARIOS))
def test_framework_golden(framework_rendered, scenario, framework):
    files = {n: t for n, t in framework_rendered[(scenario, framework)][5].items() if n not in BASE}
    folder = GOLDEN / scenario / framework
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.name not in files:
                old.unlink()
        for name, text in files.items():
            (folder / name).write_bytes(text.encode("utf-8"))
    assert folder.is_dir(), f"no goldens for {scenario}/{framework}: run with DSADVISE_UPDATE_GOLDENS=1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, text in files.items():
        assert text.encode("utf-8") == (folder / name).read_bytes(), f"{scenario}/{framework}/{name} differs"
