"""``dsadvise dry-run DIR`` for a folder ``generate --task infer`` wrote: the scripts themselves run on this
machine's CPU against a tiny model shaped like the target (built from the proxy config in dsadvise.json, saved
with a word-level tokenizer to a temporary folder: no downloads), and must generate for every prompt.

* ``device_map="auto"``: ``python infer_device_map.py --cpu`` (``from_pretrained(device_map="auto",
  max_memory={"cpu": the plan's total budget})``); and, where the real model's config is known, accelerate's own
  ``infer_auto_device_map`` over that model on the meta device with the rendered ``MAX_MEMORY`` must place every
  module on a GPU (none on cpu/disk): the budgets hold the real weights.
* one replica per GPU: ``accelerate launch --multi_gpu --num_processes 2 infer_replicas.py`` with gloo on the
  CPU; each rank must write its own shard, together every prompt once.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .validate import ConfigFileError, Finding, Step, StepStatus

PROMPTS = ["w4 w5 w6", "w7 w8", "w9 w10 w11 w12", "w13", "w14 w15 w16", "w17 w18"]
NEW_TOKENS = 4


def is_infer_folder(folder: Path) -> bool:
    """Whether ``folder`` holds what ``generate --task infer`` writes (its dsadvise.json says task infer)."""
    try:
        data = json.loads((folder / "dsadvise.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("task") == "infer"


def _env() -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ACCELERATE_DISABLE_RICH": "1",
                "CUDA_VISIBLE_DEVICES": ""})
    return env


def build_proxy(proxy: dict, dest: Path) -> None:
    """Save a randomly initialised model of config ``proxy`` and a word-level tokenizer over its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    config = AutoConfig.for_model(**proxy)
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    vocab_size = int(getattr(config, "vocab_size", 256))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(dest)


def rendered_max_memory(script: Path) -> dict[int, str]:
    """``MAX_MEMORY`` as written in ``infer_device_map.py`` (read with ast: the file is not imported)."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MAX_MEMORY" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ConfigFileError(f"{script.name}: no MAX_MEMORY")


def placement_step(folder: Path, manifest: dict) -> Step:
    """accelerate's placement of the real model (meta device) under the rendered MAX_MEMORY: every module on a GPU."""
    t0 = time.perf_counter()
    name = "device_map placement of the real model"
    cfg = manifest.get("hf_config")
    if not cfg:
        return Step(name, StepStatus.SKIP, detail="the model was given by size: no config.json to place")
    try:
        import torch
        from accelerate import init_empty_weights
        from accelerate.utils import get_balanced_memory, infer_auto_device_map
        from transformers import AutoConfig, AutoModelForCausalLM
        import logging

        logging.getLogger("accelerate.utils.modeling").setLevel(logging.ERROR)   # "Device 0 is not available"
        dtype = getattr(torch, manifest["plan_dtype"])
        budget = rendered_max_memory(folder / "infer_device_map.py")
        config = AutoConfig.for_model(**cfg)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        no_split = model._no_split_modules
        balanced = get_balanced_memory(model, max_memory=dict(budget), no_split_module_classes=no_split, dtype=dtype)
        device_map = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split, dtype=dtype)
    except Exception as exc:     # the engine refused: report it, never a traceback
        return Step(name, StepStatus.FAIL, time.perf_counter() - t0,
                    findings=[Finding("error", "infer_device_map.py", "MAX_MEMORY", f"{type(exc).__name__}: {exc}")])
    used = sorted({d for d in device_map.values()}, key=str)
    off = [d for d in used if not isinstance(d, int)]
    step = Step(name, seconds=time.perf_counter() - t0,
                detail=f"{len(device_map)} module groups on GPU(s) {', '.join(map(str, used))} of {len(budget)}")
    if off:
        step.status = StepStatus.FAIL
        step.findings.append(Finding("error", "infer_device_map.py", "MAX_MEMORY",
                                     f"accelerate puts part of the model on {off}: the budgets do not hold it"))
    return step


def _start(cmd: list[str], cwd: Path, stdout: Path, stderr: Path) -> subprocess.Popen:
    """Start ``cmd`` as the leader of its own process group (one killpg ends it and its workers)."""
    with open(stdout, "w", encoding="utf-8") as out, open(stderr, "w", encoding="utf-8") as err:
        return subprocess.Popen(cmd, cwd=str(cwd), env=_env(), stdout=out,
                                stderr=subprocess.STDOUT if stdout == stderr else err, start_new_session=True)


def _fail(step: Step, file: str, message: str, log: Path | None = None) -> Step:
    from .dryrun import _tail

    tail = _tail(log) if log is not None else ""
    step.status = StepStatus.FAIL
    step.findings.append(Finding("error", file, "", message + (f"; last output:\n{tail}" if tail else "")))
    return step


class _Launch:
    """One launched script: its process, and how to turn its outputs into a Step."""

    def __init__(self, step: Step, file: str, proc: subprocess.Popen, log: Path, collect):
        self.step, self.file, self.proc, self.log, self.collect = step, file, proc, log, collect
        self.t0 = time.perf_counter()

    def finish(self, timeout: float) -> Step:
        from .dryrun import wait_owned

        rc, timed_out = wait_owned(self.proc, max(timeout, 5))
        self.step.seconds = time.perf_counter() - self.t0
        file = self.file
        if timed_out:
            return _fail(self.step, file, f"timed out after {timeout:.0f} s", self.log)
        if rc != 0:
            return _fail(self.step, file, f"exited {rc}", self.log)
        return self.collect(self.step)


def start_device_map(folder: Path, work: Path, model_dir: Path, prompts: Path) -> _Launch:
    """Start infer_device_map.py --cpu on the proxy; it must print one JSON line per prompt."""
    step = Step("launch device_map=\"auto\" on CPU (infer_device_map.py --cpu)")
    log, out = work / "device_map.log", work / "device_map.jsonl"
    cmd = [sys.executable, str(folder / "infer_device_map.py"), "--model", str(model_dir), "--prompts-file",
           str(prompts), "--cpu", "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "4"]

    def collect(step: Step) -> Step:
        rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines() if x.strip().startswith("{")]
        got = sorted(r["index"] for r in rows)
        if got != list(range(len(PROMPTS))):
            return _fail(step, "infer_device_map.py", f"outputs for prompts {got}, expected 0..{len(PROMPTS) - 1}")
        placed = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.startswith("placed on:")]
        step.detail = f"{len(rows)} prompts generated; {placed[-1] if placed else ''}".rstrip("; ")
        return step

    return _Launch(step, "infer_device_map.py", _start(cmd, folder, out, log), log, collect)


def start_replicas(folder: Path, work: Path, model_dir: Path, prompts: Path, planned: int) -> _Launch:
    """Start 2 CPU processes of infer_replicas.py under accelerate launch (gloo); each must write its own shard,
    together every prompt once."""
    from .dryrun import _accelerate_cmd, _free_port

    procs = 2
    step = Step(f"launch replicas on CPU (accelerate launch --num_processes {procs} infer_replicas.py)")
    log, out_dir = work / "replicas.log", work / "replicas"
    cmd = _accelerate_cmd() + ["--multi_gpu", "--num_processes", str(procs), "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", str(_free_port()), str(folder / "infer_replicas.py"),
                               "--model", str(model_dir), "--prompts-file", str(prompts), "--out-dir", str(out_dir),
                               "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "2", "--cpu"]

    def collect(step: Step) -> Step:
        shards = {}
        for r in range(procs):
            path = out_dir / f"rank{r}.jsonl"
            if not path.is_file():
                return _fail(step, "infer_replicas.py", f"rank {r} wrote no {path.name}", log)
            shards[r] = [json.loads(x)["index"] for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        every = sorted(i for s in shards.values() for i in s)
        if every != list(range(len(PROMPTS))) or any(not s for s in shards.values()):
            return _fail(step, "infer_replicas.py", f"shards {shards}: expected every prompt once, split over both "
                                                    "ranks")
        step.detail = "; ".join(f"rank {r}: prompts {s}" for r, s in shards.items())
        if planned != procs:
            step.detail += f"; overrides: num_processes {planned} -> {procs}"
        return step

    return _Launch(step, "infer_replicas.py", _start(cmd, folder, log, log), log, collect)


def dry_run_infer(folder: Path, *, timeout: float, gpu: bool, keep: str | None):
    """The inference dry-run of ``folder`` (a :class:`advisor.render.dryrun.DryRunReport`)."""
    from .dryrun import DryRunReport

    start = time.perf_counter()
    report = DryRunReport(str(folder))
    manifest = json.loads((folder / "dsadvise.json").read_text(encoding="utf-8"))
    files = Step("files")
    t = time.perf_counter()
    scripts = [n for n in ("infer_device_map.py", "infer_replicas.py") if (folder / n).is_file()]
    for n in scripts:
        try:
            compile((folder / n).read_text(encoding="utf-8"), n, "exec")
        except SyntaxError as exc:
            files.findings.append(Finding("error", n, "", f"line {exc.lineno}: {exc.msg}"))
    if not scripts:
        files.findings.append(Finding("error", "dsadvise.json", "task", "no infer_*.py script in the folder"))
    files.status = StepStatus.FAIL if files.findings else StepStatus.PASS
    files.detail = ", ".join(scripts) + " compile"
    files.seconds = time.perf_counter() - t
    report.steps.append(files)
    if not report.passed:
        return report
    if gpu:
        report.steps.append(Step("launch", StepStatus.SKIP, detail="--gpu: the inference dry-run runs on the CPU"))
    if manifest.get("plan", {}).get("method") == "qlora":
        # bitsandbytes' 4-bit layers quantize and run on CUDA; on the CPU it would be a different (16-bit) model
        report.steps.append(Step("launch", StepStatus.SKIP, detail=(
            "cannot run on a CPU: the scripts load 4-bit NF4 weights with bitsandbytes (QUANTIZE_4BIT), which "
            "quantizes on a CUDA GPU; run these scripts on the GPU machine")))
        return report
    work = Path(tempfile.mkdtemp(prefix="dsadvise-infer-dryrun-"))
    try:
        t = time.perf_counter()
        model_dir = work / "proxy-model"
        try:
            build_proxy(manifest["proxy_model"], model_dir)
        except Exception as exc:
            report.steps.append(Step("proxy model", StepStatus.FAIL, time.perf_counter() - t, findings=[
                Finding("error", "dsadvise.json", "proxy_model", f"{type(exc).__name__}: {exc}")]))
            return report
        report.steps.append(Step("proxy model", seconds=time.perf_counter() - t,
                                 detail=f"{manifest['proxy_model'].get('model_type')} from dsadvise.json, saved with "
                                        "a word-level tokenizer (no download)"))
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
        deadline = start + timeout
        if "infer_device_map.py" in scripts:
            report.steps.append(placement_step(folder, manifest))
        # both layouts run at the same time (their own process groups); either is ended on a timeout or Ctrl+C
        launches: list[_Launch] = []
        try:
            if "infer_device_map.py" in scripts:
                launches.append(start_device_map(folder, work, model_dir, prompts))
            if "infer_replicas.py" in scripts:
                planned = int(manifest.get("hardware", {}).get("gpus_per_node", 2))
                launches.append(start_replicas(folder, work, model_dir, prompts, planned))
            for launch in launches:
                report.steps.append(launch.finish(deadline - time.perf_counter()))
        finally:
            from .dryrun import _kill_group

            for launch in launches:
                if launch.proc.poll() is None:
                    _kill_group(launch.proc)
        if keep:
            dest = Path(keep)
            dest.mkdir(parents=True, exist_ok=True)
            for p in work.glob("*.log"):
                shutil.copy2(p, dest / p.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def dry_run_folder(folder, *, timeout: float | None = None, gpu: bool = False, keep: str | None = None):
    """``dsadvise dry-run FOLDER`` for any folder ``generate`` wrote: the inference dry-run above for a
    ``--task infer`` folder, else the training one (:func:`advisor.render.dryrun.dry_run`)."""
    from .dryrun import DEFAULT_TIMEOUT, _terminate_as_interrupt, dry_run

    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    path = Path(folder).expanduser().resolve()
    if not is_infer_folder(path):
        return dry_run(folder, timeout=timeout, gpu=gpu, keep=keep)
    with _terminate_as_interrupt():
        return dry_run_infer(path, timeout=timeout, gpu=gpu, keep=keep)
