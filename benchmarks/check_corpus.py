"""Corpus of public DeepSpeed JSON / accelerate YAML files, the engines' own verdict on each, and how
``dsadvise check`` agrees with it.

    python benchmarks/check_corpus.py                 # agree / false positive / false negative table for `check`
    python benchmarks/check_corpus.py engines         # recompute the engines' verdicts into index.yaml
    python benchmarks/check_corpus.py collect MIRROR  # (one-off) copy the files from git mirrors of the sources
    python benchmarks/check_corpus.py keys            # advisor/data/schemas/ds_top_level_keys.yaml from DeepSpeed

Ground truth comes from the engines themselves, never from dsadvise:
- DeepSpeed JSON: ``deepspeed.runtime.config.DeepSpeedConfig`` after a single-process gloo init
  (DS_ACCELERATOR=cpu) at world 1 and, when train_batch_size / (micro x accumulation) implies one, at that world
  size (DeepSpeed's ``mpu`` argument supplies the data-parallel size). A file with "auto" values is an HF
  template: it goes through ``TrainingArguments(deepspeed=...)`` (values the file fixes are passed as the
  matching arguments, as a user would), ``trainer_config_finalize`` with a model of hidden size 4096, then
  ``DeepSpeedConfig``.
- accelerate YAML: ``load_config_from_file``, ``accelerate launch``'s ``_validate_launch_command``, the
  launcher's environment (``prepare_deepspeed_cmd_env`` / ``prepare_multi_gpu_env`` /
  ``prepare_simple_launcher_cmd_env``) and the plugin built from that environment, run from the repository's
  root (where the examples are launched, so relative ``deepspeed_config_file`` paths resolve).
A verdict is ``ok``, ``refused`` (with the engine's message) or ``unavailable`` (the engine needs a package or
program this machine lacks: not a fault of the file).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "check_corpus"
FILES = ROOT / "files"
INDEX = ROOT / "index.yaml"

# Which files of which repository (the paths were listed with `git grep` on train_batch_size /
# zero_optimization / distributed_type in each repository; test fixtures that are deliberately broken are kept:
# they are real refusals).
SOURCES = {
    "huggingface/accelerate": r"(examples|tests)/.*\.(json|ya?ml)$",
    "microsoft/DeepSpeedExamples": r".*\.json$",
    "hiyouga/LLaMA-Factory": r"examples/(deepspeed|accelerate|ktransformers/accelerate)/.*",
    "huggingface/trl": r".*accelerate_configs/.*\.ya?ml$",
    "huggingface/peft": r".*\.ya?ml$",
    "axolotl-ai-cloud/axolotl": r"deepspeed_configs/.*\.json$",
    "huggingface/alignment-handbook": r"recipes/accelerate_configs/.*",
    "allenai/open-instruct": r"configs/ds_configs/.*",
    "haotian-liu/LLaVA": r"scripts/.*\.json$",
}
DS_KEYS = re.compile(r'"(zero_optimization|train_micro_batch_size_per_gpu|train_batch_size)"')
ACC_KEY = re.compile(r"^distributed_type:", re.M)


def _load_index() -> list[dict]:
    import yaml

    return yaml.safe_load(INDEX.read_text()) if INDEX.exists() else []


def _save_index(entries: list[dict]) -> None:
    import yaml

    INDEX.write_text("# Public DeepSpeed JSON / accelerate YAML files and the engines' verdicts on them.\n"
                     "# Written by benchmarks/check_corpus.py (collect, engines); `file` is under files/.\n"
                     + yaml.safe_dump(entries, sort_keys=False, width=120))


# ---------------------------------------------------------------- collect

def collect(mirrors: Path) -> None:
    """Copy matching files from local git mirrors (``<owner>+<name>/repo``) and add them to the index."""
    entries = {e["file"]: e for e in _load_index()}
    for repo, pattern in SOURCES.items():
        git = mirrors / repo.replace("/", "+") / "repo"
        if not git.exists():
            print(f"skip {repo}: no mirror")
            continue
        commit = subprocess.run(["git", "-C", str(git), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        names = subprocess.run(["git", "-C", str(git), "ls-tree", "-r", "--name-only", commit], capture_output=True,
                               text=True).stdout.split("\n")
        for path in names:
            if not re.fullmatch(pattern, path) or not path.endswith((".json", ".yaml", ".yml", ".conf")):
                continue
            text = subprocess.run(["git", "-C", str(git), "show", f"{commit}:{path}"], capture_output=True,
                                  text=True).stdout
            kind = ("deepspeed" if path.endswith((".json", ".conf")) and DS_KEYS.search(text) else
                    "accelerate" if path.endswith((".yaml", ".yml")) and ACC_KEY.search(text) else None)
            if kind is None:
                continue
            rel = f"{repo.replace('/', '__')}/{path}"
            (FILES / rel).parent.mkdir(parents=True, exist_ok=True)
            (FILES / rel).write_text(text)
            entries.setdefault(rel, {"file": rel, "kind": kind, "repository": repo, "path": path,
                                     "commit": commit, "url": f"https://github.com/{repo}/blob/{commit}/{path}"})
    _save_index(sorted(entries.values(), key=lambda e: e["file"]))
    print(f"{len(entries)} files in {INDEX}")


# ---------------------------------------------------------------- engines

UNAVAILABLE = re.compile(r"not installed|No module named|is not available|pip install|requires? .* to be installed|"
                         r"could not find .* executable|command not found|were not found|"
                         # the engine itself crashed (a bug of that version), which is no verdict on the file
                         r"^AttributeError:", re.I)


def _gloo_world1() -> None:
    """One real process group of one rank (gloo), as DeepSpeed's config sees it on a one-GPU run."""
    import socket

    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


class _DataParallel:
    """DeepSpeed's ``mpu`` interface: only the data-parallel world size is asked for by DeepSpeedConfig."""

    def __init__(self, n: int):
        self.n = n

    def get_data_parallel_world_size(self) -> int:
        return self.n

    def get_sequence_parallel_world_size(self) -> int:
        return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: " + " ".join(text.split())[:300]


@contextlib.contextmanager
def _silent():
    import logging

    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _has_auto(obj) -> bool:
    if isinstance(obj, dict):
        return any(_has_auto(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_auto(v) for v in obj)
    return obj == "auto"


def _implied_world(cfg: dict) -> int | None:
    tb, mb, ga = (cfg.get(k) for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                        "gradient_accumulation_steps"))
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (tb, mb)):
        ga = ga if isinstance(ga, int) and not isinstance(ga, bool) and ga > 0 else 1
        if tb % (mb * ga) == 0 and tb // (mb * ga) > 1:
            return tb // (mb * ga)
    return None


def deepspeed_config(cfg: dict, world: int) -> dict:
    """DeepSpeed's verdict at ``world`` data-parallel ranks."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        with _silent():
            DeepSpeedConfig(copy.deepcopy(cfg), mpu=None if world == 1 else _DataParallel(world))
        return {"verdict": "ok"}
    except Exception as exc:
        msg = _first_line(exc)
        return {"verdict": "unavailable" if UNAVAILABLE.search(msg) else "refused", "message": msg}


def hf_trainer_config(cfg: dict, world: int) -> dict:
    """The HF Trainer's verdict: TrainingArguments(deepspeed=...) fills "auto", finalize, then DeepSpeedConfig."""
    import tempfile

    from transformers import TrainingArguments

    class Args(TrainingArguments):
        @property
        def world_size(self):      # the world the file is meant for (HF checks train_batch_size against it)
            return world

    kw = {}
    num = (int, float)
    mb, ga, clip = (cfg.get(k) for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                          "gradient_clipping"))
    if isinstance(mb, int):
        kw["per_device_train_batch_size"] = mb
    if isinstance(ga, int):
        kw["gradient_accumulation_steps"] = ga
    if isinstance(clip, num):
        kw["max_grad_norm"] = clip
    params = (cfg.get("optimizer") or {}).get("params") or {}
    if isinstance(params.get("lr"), num):
        kw["learning_rate"] = params["lr"]
    if isinstance(params.get("betas"), list) and all(isinstance(b, num) for b in params["betas"]):
        kw["adam_beta1"], kw["adam_beta2"] = params["betas"]
    if isinstance(params.get("eps"), num):
        kw["adam_epsilon"] = params["eps"]
    if isinstance(params.get("weight_decay"), num):
        kw["weight_decay"] = params["weight_decay"]
    for block in ("fp16", "bf16"):
        if isinstance(cfg.get(block), dict) and cfg[block].get("enabled") is True:
            kw[block] = True
    try:
        with _silent(), tempfile.TemporaryDirectory() as tmp:
            # use_cpu: this machine has no GPU, and TrainingArguments refuses bf16 without one otherwise
            args = Args(output_dir=tmp, deepspeed=copy.deepcopy(cfg), use_cpu=True, **kw)
            hf = args.hf_deepspeed_config

            class Model:
                class config:
                    hidden_size = 4096
            hf.trainer_config_finalize(args, Model(), 100)
            filled = hf.config
    except Exception as exc:
        msg = _first_line(exc)
        return {"verdict": "unavailable" if UNAVAILABLE.search(msg) else "refused", "message": msg}
    return deepspeed_config(filled, world)


def deepspeed_verdict(path: Path, gpus: int | None = None, plain: bool = False) -> dict:
    """The engines' verdict on a DeepSpeed JSON (plain DeepSpeed, or the HF Trainer for an "auto" template), at
    ``gpus`` ranks when the reporter's world size is known, else at the world the file implies."""
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        return {"verdict": "refused", "message": f"not JSON: {exc}"}
    _gloo_world1()
    world = gpus or _implied_world(cfg)
    out: dict = {"world": world or 1}
    if plain:
        out["engine"] = "DeepSpeedConfig (a custom loop: nothing fills \"auto\")"
        out.update(deepspeed_config(cfg, world or 1))
    elif _has_auto(cfg):
        out["engine"] = "transformers TrainingArguments + DeepSpeedConfig"
        out.update(hf_trainer_config(cfg, world or 1))
    else:
        out["engine"] = "DeepSpeedConfig"
        one = deepspeed_config(cfg, 1)
        out.update(deepspeed_config(cfg, world) if world else one)
        out["world1"] = one["verdict"]
    return out


def accelerate_verdict(path: Path, repo_root: Path) -> dict:
    """What accelerate launch makes of a YAML, up to the plugin it builds (no process is started), launched from
    the YAML's own folder or else the repository root (relative deepspeed_config_file paths are read from the
    directory accelerate is launched in; examples are written for one of the two)."""
    first = _accelerate_from(path, path.parent)
    if first["verdict"] != "refused" or path.parent == repo_root:
        return first
    second = _accelerate_from(path, repo_root)
    return second if second["verdict"] == "ok" else first


def _accelerate_from(path: Path, cwd_for_launch: Path) -> dict:
    import torch
    from unittest import mock

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as launch_utils

    out: dict = {"engine": "accelerate launch"}
    cwd = os.getcwd()
    os.chdir(cwd_for_launch)
    saved = dict(os.environ)
    try:
        with _silent():
            cfg = load_config_from_file(str(path))
            args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
            # a static check: this machine's busy ports are not the file's fault
            with mock.patch.object(launch_utils, "is_port_in_use", return_value=False):
                args, defaults, mp = _validate_launch_command(args)
            out["distributed_type"] = str(getattr(cfg.distributed_type, "value", cfg.distributed_type))
            if args.use_deepspeed and not args.cpu:
                fields = list(defaults.deepspeed_config.keys()) if defaults else []
                if mp:
                    fields.append("mixed_precision")
                args.deepspeed_fields_from_accelerate_config = ",".join(fields)
                _, env = launch_utils.prepare_deepspeed_cmd_env(args)
            elif (args.use_fsdp or args.multi_gpu or args.use_megatron_lm) and not args.cpu:
                env = launch_utils.prepare_multi_gpu_env(args)
            elif defaults is not None and str(defaults.compute_environment.value) == "AMAZON_SAGEMAKER":
                out["note"] = "SageMaker: launched by the sagemaker SDK, not on this machine"
                return {**out, "verdict": "ok"}
            else:
                env = launch_utils.prepare_simple_launcher_cmd_env(args)[1]
            child = {k: str(v) for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
            os.environ.update(child)
            if args.use_deepspeed and not args.cpu:
                from accelerate.utils import DeepSpeedPlugin

                DeepSpeedPlugin()
            elif args.use_fsdp and not args.cpu:
                import accelerate.utils.dataclasses as acc_dc
                from accelerate.utils import FullyShardedDataParallelPlugin

                # without a GPU, the plugin's sync_module_states device lookup is pointed at the CPU
                with mock.patch.object(acc_dc, "is_cuda_available", return_value=True), \
                        mock.patch.object(torch.cuda, "current_device", return_value="cpu"):
                    FullyShardedDataParallelPlugin()
        out["verdict"] = "ok"
    except BaseException as exc:     # SystemExit from argparse counts as a refusal
        msg = _first_line(exc)
        out.update(verdict="unavailable" if UNAVAILABLE.search(msg) else "refused", message=msg)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        os.chdir(cwd)
    return out


def engine_verdict(entry: dict) -> dict:
    path = FILES / entry["file"]
    if entry["kind"] == "deepspeed":
        return deepspeed_verdict(path, entry.get("gpus"), plain=bool(entry.get("script")))
    return accelerate_verdict(path.resolve(), (FILES / entry["file"].split("/")[0]).resolve())


def engines() -> None:
    entries = _load_index()
    for e in entries:
        v = engine_verdict(e)
        if e.get("expect"):                   # hand-written note for the broken-from-an-issue files stays
            v.setdefault("expect", e["expect"])
        e["engine"] = v
        print(f"{v['verdict']:<11} {e['file']}" + (f"  {v.get('message', '')[:150]}" if v.get("message") else ""))
    _save_index(entries)


# ---------------------------------------------------------------- DeepSpeed's top-level keys

# Read by the DeepSpeed engine outside DeepSpeedConfig's constructor (deepspeed/runtime/engine.py,
# activation_checkpointing/config.py, profiling/config.py, autotuning/config.py, ops/aio, runtime/swap_tensor):
# https://www.deepspeed.ai/docs/config-json/
READ_ELSEWHERE = ["optimizer", "scheduler", "activation_checkpointing", "flops_profiler", "aio", "autotuning",
                  "sequence_parallel_size", "zero_optimization", "fp16", "bf16", "moe", "monitor_config"]
KEYS = Path(__file__).resolve().parents[1] / "advisor" / "data" / "schemas" / "ds_top_level_keys.yaml"


def top_level_keys() -> None:
    """Write the top-level keys DeepSpeed reads: those DeepSpeedConfig looks up (recorded on a dict that logs
    lookups), those of the corpus files the engines accept, and READ_ELSEWHERE."""
    import yaml
    from deepspeed.runtime.config import DeepSpeedConfig

    seen: set[str] = set()

    class Recording(dict):
        def get(self, k, *a):
            seen.add(k)
            return super().get(k, *a)

        def __getitem__(self, k):
            seen.add(k)
            return super().__getitem__(k)

        def __contains__(self, k):
            seen.add(k)
            return super().__contains__(k)

    _gloo_world1()
    with _silent():
        DeepSpeedConfig(Recording({"train_micro_batch_size_per_gpu": 1}))
    corpus = set()
    for e in _load_index():
        if e["kind"] == "deepspeed" and e["engine"]["verdict"] == "ok":
            corpus |= set(json.loads((FILES / e["file"]).read_text()))
    import deepspeed

    keys = sorted({k for k in seen | corpus | set(READ_ELSEWHERE) if isinstance(k, str)})
    KEYS.write_text(f"# Top-level keys DeepSpeed {deepspeed.__version__} reads (benchmarks/check_corpus.py keys):\n"
                    "# DeepSpeedConfig's lookups, the keys of corpus files the engines accept, and keys the engine\n"
                    "# reads elsewhere (https://www.deepspeed.ai/docs/config-json/). DeepSpeed ignores any other.\n"
                    + yaml.safe_dump(keys))
    print(f"{len(keys)} keys -> {KEYS}")


# ---------------------------------------------------------------- benchmark

def expected_error(entry: dict) -> bool:
    """Must `check` report an error? Yes when the engine refuses it."""
    return entry["engine"]["verdict"] == "refused"


def outcome(entry: dict, got: dict) -> str:
    """agree / false positive (an error the engine does not confirm) / false negative (the engine refuses and
    check says no error; or a config a bug report shows broken, which the engine accepts, gets no warning)."""
    has = bool(got["errors"])
    if expected_error(entry):
        return "agree" if has else "false negative"
    if has:
        return "false positive"
    if entry.get("expect") == "warning" and not got["warnings"]:
        return "false negative"
    return "agree"


def check_entry(entry: dict) -> dict:
    """`dsadvise check` on one corpus file, from the repository root as it would be launched."""
    from advisor.render.lint import Problem, lint_file

    path = (FILES / entry["file"]).resolve()
    cwd = os.getcwd()
    os.chdir(FILES / entry["file"].split("/")[0])
    try:
        script = str((FILES / entry["script"]).resolve()) if entry.get("script") else None
        findings = lint_file(path, Problem(gpus=entry.get("gpus"), script=script))
    except Exception as exc:
        return {"errors": [f"{type(exc).__name__}: {exc}"], "warnings": []}
    finally:
        os.chdir(cwd)
    return {"errors": [f.line() for f in findings if f.severity == "error"],
            "warnings": [f.line() for f in findings if f.severity == "warning"]}


def benchmark(verbose: bool = False) -> dict:
    entries = _load_index()
    rows = {"agree": 0, "false positive": 0, "false negative": 0}
    t0 = time.perf_counter()
    for e in entries:
        got = check_entry(e)
        kind = outcome(e, got)
        rows[kind] += 1
        if kind != "agree" or verbose:
            print(f"{kind.upper()}: {e['file']}\n   engine: {e['engine']['verdict']} {e['engine'].get('message', '')}")
            for line in (got["errors"] + got["warnings"])[:3]:
                print(f"   check: {line}")
    n = len(entries)
    kinds = {k: sum(1 for e in entries if e["kind"] == k) for k in ("deepspeed", "accelerate")}
    repos = len({e["repository"] for e in entries})
    refused = sum(1 for e in entries if expected_error(e))
    issues = [e for e in entries if e.get("source") == "issue"]
    flagged = sum(1 for e in issues if outcome(e, check_entry(e)) == "agree")
    print(f"\nbroken configs from bug reports: {flagged} of {len(issues)} flagged")
    print(f"\n{n} files ({kinds['deepspeed']} DeepSpeed JSON, {kinds['accelerate']} accelerate YAML) from {repos} "
          f"repositories; the engines refuse {refused}; check took {time.perf_counter() - t0:.1f} s")
    print(f"{'outcome':<16} {'files':>5}")
    for k, v in rows.items():
        print(f"{k:<16} {v:>5}")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if len(sys.argv) > 1 and sys.argv[1] == "collect":
        collect(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "engines":
        engines()
    elif len(sys.argv) > 1 and sys.argv[1] == "verdicts":     # the engines' verdicts on the named files, as JSON
        by_file = {e["file"]: e for e in _load_index()}
        print(json.dumps({f: engine_verdict(by_file[f]) for f in sys.argv[2:]}))
    elif len(sys.argv) > 1 and sys.argv[1] == "keys":
        top_level_keys()
    else:
        benchmark(verbose="-v" in sys.argv)
