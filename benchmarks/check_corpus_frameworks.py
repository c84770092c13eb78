"""Public LLaMA-Factory and axolotl training configs, their framework's own verdict on each, and how
``dsadvise check`` agrees with it (no error where the framework accepts the file).

    python benchmarks/check_corpus_frameworks.py            # agree / false positive / false negative table
    python benchmarks/check_corpus_frameworks.py engines    # recompute the frameworks' verdicts into the index

Files live under benchmarks/check_corpus/files/<owner>__<repo>/<path> (as the DeepSpeed/accelerate corpus, whose
LLaMA-Factory examples/deepspeed/*.json the LLaMA-Factory configs point to), listed with repository, path and
commit in benchmarks/check_corpus/frameworks.yaml. Ground truth, run from the repository's root:
- LLaMA-Factory 0.9.5: its ``_parse_train_args`` + ``_verify_model_args`` (src/llamafactory/hparams/parser.py),
  ``use_cpu: true`` added (TrainingArguments refuses bf16/fp16 without a GPU). Keys the installed transformers'
  TrainingArguments no longer has (LLaMA-Factory 0.9.5 supports transformers <= 5.6; this machine has a newer
  one) are dropped and named in the verdict.
- axolotl 0.19.0: ``axolotl.utils.config.validate_config`` with its plugins merged.
Needs both installed (see benchmarks/framework_keys.py); the table itself needs neither.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "check_corpus"
FILES = ROOT / "files"
INDEX = ROOT / "frameworks.yaml"


def load_index() -> list[dict]:
    import yaml

    return yaml.safe_load(INDEX.read_text(encoding="utf-8"))["files"]


def _save(entries: list[dict]) -> None:
    import yaml

    head = ("# Public LLaMA-Factory / axolotl configs and their framework's verdict (benchmarks/"
            "check_corpus_frameworks.py engines).\n")
    INDEX.write_text(head + yaml.safe_dump({"files": entries}, sort_keys=False, width=120), encoding="utf-8")


@contextlib.contextmanager
def _at(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def verdict(entry: dict) -> dict:
    """The framework's own verdict on one file: ok / refused (message) / unavailable (why)."""
    import yaml

    path = FILES / entry["file"]
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    repo_root = FILES / entry["file"].split("/")[0]
    out = io.StringIO()
    try:
        with _at(repo_root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if entry["kind"] == "llamafactory":
                os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
                from llamafactory.hparams.parser import _parse_train_args, _verify_model_args

                args = {**data, "use_cpu": True}
                dropped: list[str] = []
                while True:
                    try:
                        m, d, t, f, _ = _parse_train_args(args)
                        break
                    except ValueError as exc:
                        keys = re.search(r"Some keys are not used by the HfArgumentParser: \[(.*)\]", str(exc))
                        if not keys:
                            raise
                        names = [k.strip(" '\"") for k in keys.group(1).split(",")]
                        dropped += names
                        args = {k: v for k, v in args.items() if k not in names}
                _verify_model_args(m, d, f)
                note = (f"ok after dropping {', '.join(dropped)} (not in this machine's transformers "
                        "TrainingArguments)" if dropped else "")
                return {"verdict": "ok", "engine": "llamafactory 0.9.5 _parse_train_args", **({"note": note} if note
                                                                                             else {})}
            from axolotl.utils.config import prepare_plugins, validate_config
            from axolotl.utils.dict import DictDefault

            cfg = DictDefault(data)
            if cfg.get("plugins"):
                prepare_plugins(cfg)
            validate_config(cfg)
            return {"verdict": "ok", "engine": "axolotl 0.19.0 validate_config"}
    except ImportError as exc:
        return {"verdict": "unavailable", "message": str(exc).splitlines()[0]}
    except Exception as exc:
        return {"verdict": "refused", "message": " ".join(str(exc).split())[:300]}


def engines() -> None:
    entries = load_index()
    for e in entries:
        e["engine"] = verdict(e)
        print(f"{e['engine']['verdict']:<11} {e['file']}  {e['engine'].get('note', e['engine'].get('message', ''))}")
    _save(entries)


def check_entry(entry: dict) -> dict:
    """`dsadvise check` on one file, from the repository's root."""
    from advisor.render.lint import Problem, lint_file

    path = (FILES / entry["file"]).resolve()
    with _at(FILES / entry["file"].split("/")[0]):
        findings = lint_file(path, Problem(gpus=entry.get("gpus"), engines=False))
    return {"errors": [f.line() for f in findings if f.severity == "error"],
            "warnings": [f.line() for f in findings if f.severity == "warning"]}


def outcome(entry: dict, got: dict) -> str:
    refused = entry["engine"]["verdict"] == "refused"
    if refused:
        return "agree" if got["errors"] else "false negative"
    return "false positive" if got["errors"] else "agree"


def benchmark() -> dict:
    rows = {"agree": 0, "false positive": 0, "false negative": 0}
    entries = load_index()
    t0 = time.perf_counter()
    for e in entries:
        got = check_entry(e)
        kind = outcome(e, got)
        rows[kind] += 1
        if kind != "agree":
            print(f"{kind.upper()}: {e['file']}: {e['engine']}\n   " + "\n   ".join(got["errors"][:3]))
    kinds = {k: sum(1 for e in entries if e["kind"] == k) for k in ("llamafactory", "axolotl")}
    print(f"{len(entries)} files ({kinds['llamafactory']} LLaMA-Factory, {kinds['axolotl']} axolotl); check took "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"{'outcome':<16} {'files':>5}")
    for k, v in rows.items():
        print(f"{k:<16} {v:>5}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if len(sys.argv) > 1 and sys.argv[1] == "engines":
        engines()
    else:
        benchmark()
