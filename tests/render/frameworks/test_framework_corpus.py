"""`dsadvise check` on public LLaMA-Factory / axolotl configs (benchmarks/check_corpus/frameworks.yaml) agrees
with the frameworks' own verdicts, precomputed by `python benchmarks/check_corpus_frameworks.py engines`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("check_corpus_frameworks", ROOT / "benchmarks" / "check_corpus_frameworks.py")
corpus = importlib.util.module_from_spec(spec)
sys.modules.setdefault("check_corpus_frameworks", corpus)
spec.loader.exec_module(corpus)


def test_framework_corpus_is_public_and_judged():
    entries = corpus.load_index()
    assert {e["kind"] for e in entries} == {"llamafactory", "axolotl"}
    for e in entries:
        assert len(e["commit"]) == 40 and e["url"].endswith(e["path"]) and (corpus.FILES / e["file"]).is_file()
        assert e["engine"]["verdict"] in ("ok", "refused")


def test_check_agrees_with_the_frameworks():
    wrong = [(e["file"], corpus.check_entry(e)) for e in corpus.load_index()
             if corpus.outcome(e, corpus.check_entry(e)) != "agree"]
    assert not wrong, wrong
