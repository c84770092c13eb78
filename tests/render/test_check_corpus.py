"""``dsadvise check`` against the engines' own verdicts on the public corpus (benchmarks/check_corpus): no
false alarm, no miss, every broken config from a bug report flagged. The verdicts are precomputed data
(benchmarks/check_corpus.py engines); a few are recomputed live here so the data cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _corpus():
    spec = importlib.util.spec_from_file_location("check_corpus", ROOT / "benchmarks" / "check_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_corpus", mod)
    spec.loader.exec_module(mod)
    return mod


corpus = _corpus()
ENTRIES = corpus._load_index()


def test_the_corpus_is_public_configs_from_many_sources():
    public = [e for e in ENTRIES if e.get("source") != "issue"]
    assert len(public) >= 100
    assert len({e["repository"] for e in public}) >= 8
    assert {e["kind"] for e in public} == {"deepspeed", "accelerate"}
    for e in public:
        assert len(e["commit"]) == 40 and e["url"].startswith("https://github.com/") and (corpus.FILES / e["file"]).is_file()
    assert all(e["engine"]["verdict"] in ("ok", "refused", "unavailable") for e in ENTRIES)


def test_check_agrees_with_the_engines_on_every_file():
    wrong = []
    for e in ENTRIES:
        got = corpus.check_entry(e)
        kind = corpus.outcome(e, got)
        if kind != "agree":
            wrong.append((kind, e["file"], e["engine"].get("message", e["engine"]["verdict"]), got))
    assert not wrong, wrong


def test_every_broken_config_from_a_bug_report_is_flagged():
    issues = [e for e in ENTRIES if e.get("source") == "issue"]
    assert len(issues) >= 8
    for e in issues:
        got = corpus.check_entry(e)
        assert got["errors"] if e["expect"] == "error" else got["warnings"], (e["file"], got)


# One of each kind of verdict, recomputed by the engines now and compared with the recorded one.
LIVE = ["huggingface__accelerate/examples/deepspeed_config_templates/zero_stage3_offload_config.json",  # HF, ok
        "microsoft__DeepSpeedExamples/training/bing_bert/1-bit_adam/nccl/"
        "deepspeed_bsz4k_onebitadam_config_seq128_nccl.json",                                          # no ZeRO, ok
        "huggingface__transformers/tests/deepspeed/ds_config_zero3.json",                              # refused
        "issues/DeepSpeed-6914_batch.json",                                                            # refused
        "issues/FAI-RL-70_auto_plain.json",                                              # refused, custom loop
        "huggingface__accelerate/tests/test_configs/latest_fsdp.yaml",                                 # FSDP ok
        "huggingface__accelerate/examples/slurm/fsdp_config.yaml",                                     # refused
        "huggingface__accelerate/tests/test_configs/0_34_0_fp8.yaml"]                                  # unavailable


def test_recorded_engine_verdicts_are_current():
    """In a child process: the engines' verdicts need a gloo process group, which must not leak into pytest."""
    import json
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check_corpus.py"), "verdicts", *LIVE],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    live = json.loads(proc.stdout.strip().splitlines()[-1])
    recorded = {e["file"]: e["engine"] for e in ENTRIES}
    assert {f: v["verdict"] for f, v in live.items()} == {f: recorded[f]["verdict"] for f in LIVE}
