"""``dsadvise dry-run`` of a ``generate --task infer`` folder: the rendered scripts themselves load a tiny proxy
of the model (saved with a tokenizer, no download) and generate on CPU, for both layouts."""

from __future__ import annotations

import json

import pytest

from .test_infer import INFER_SCENARIOS, render


@pytest.mark.slow
def test_both_layouts_load_and_generate_on_cpu(tmp_path):
    from advisor.render.infer_dryrun import dry_run_folder as dry_run

    files = render(INFER_SCENARIOS["infer-llama-2-7b-2x24gib"])
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    report = dry_run(tmp_path, timeout=240)
    steps = {s.name.split(" (")[0]: s for s in report.steps}
    assert report.passed, [(s.name, s.status, [f.line() for f in s.findings]) for s in report.steps]
    assert report.launched
    assert set(steps) == {"files", "proxy model", "device_map placement of the real model",
                          'launch device_map="auto" on CPU', "launch replicas on CPU"}
    assert "6 prompts generated; placed on: cpu" in steps['launch device_map="auto" on CPU'].detail
    # each of the two ranks generated its own share, together every prompt once
    assert steps["launch replicas on CPU"].detail.startswith("rank 0: prompts [0, 1, 2]; rank 1: prompts [3, 4, 5]")
    assert json.loads(json.dumps(report.to_json()))["passed"] is True
