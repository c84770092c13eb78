"""``dsadvise dry-run DIR``: load the generated configs with the real engines, then launch them with
``accelerate launch --config_file DIR/accelerate_config.yaml`` on this machine and train a tiny proxy model
for two optimizer steps, asserting inside the run that what is in effect is what the files say.

On the CPU (the default) it runs with ``DS_ACCELERATOR=cpu`` and gloo, at most 2 processes (at least 2 for
distributed types) on one machine; every change from the files (process count, machines, the
``train_batch_size`` that follows from a smaller world) is reported. What cannot run on a CPU is reported
as skipped with the reason, never faked. ``--gpu`` runs the same on CUDA when there is a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validate import (ConfigFileError, Finding, Step, StepStatus, engine_steps, fill_auto, parse_text, read_text,
                       schema_findings)

PROXY_SCRIPT = Path(__file__).with_name("proxy_train.py")
DEFAULT_TIMEOUT = 300
DEFAULT_PROXY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 256,
                 "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


@dataclass
class DryRunReport:
    folder: str
    steps: list[Step] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.status != StepStatus.FAIL for s in self.steps)

    @property
    def launched(self) -> bool:
        return any(s.name.startswith("launch") and s.status == StepStatus.PASS for s in self.steps)

    def to_json(self) -> dict:
        return {"folder": self.folder, "passed": self.passed, "overrides": self.overrides,
                "steps": [s.to_json() for s in self.steps]}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate_cmd() -> list[str]:
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if exe:
        return [exe, "launch"]
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _load_files(folder: Path) -> tuple[dict, dict | None, dict]:
    if not folder.is_dir():
        raise ConfigFileError(f"{folder}: not a directory (give the folder `dsadvise generate --out` wrote)")
    yaml_path = folder / "accelerate_config.yaml"
    if not yaml_path.is_file():
        raise ConfigFileError(f"{folder}: no accelerate_config.yaml in it")
    acc = parse_text("accelerate_config.yaml", read_text(yaml_path))
    ds = None
    if (folder / "ds_config.json").is_file():
        ds = parse_text("ds_config.json", read_text(folder / "ds_config.json"))
    manifest = {}
    if (folder / "dsadvise.json").is_file():
        try:
            manifest = json.loads(read_text(folder / "dsadvise.json"))
        except ValueError:
            manifest = {}
    return acc, ds, manifest


def dry_run(folder: str | os.PathLike, *, timeout: float = DEFAULT_TIMEOUT, gpu: bool = False,
            keep: str | None = None) -> DryRunReport:
    """Run both steps on ``folder``; ``keep`` (a folder) keeps the launch logs and per-rank results."""
    with _terminate_as_interrupt():
        return _dry_run(folder, timeout=timeout, gpu=gpu, keep=keep)


class _Terminated(KeyboardInterrupt):
    """SIGTERM while a dry-run runs: unwinds like Ctrl+C, so the launched process group is ended."""


def _terminate_as_interrupt():
    import contextlib
    import threading

    @contextlib.contextmanager
    def cm():
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def raise_(signum, frame):
            raise _Terminated()

        old = signal.signal(signal.SIGTERM, raise_)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old)
    return cm()


def _dry_run(folder, *, timeout: float, gpu: bool, keep: str | None) -> DryRunReport:
    start = time.perf_counter()
    folder = Path(folder).expanduser().resolve()
    report = DryRunReport(str(folder))
    acc, ds, manifest = _load_files(folder)

    # Step 1: both files in the real engines (accelerate's launch-time processing, DeepSpeedConfig).
    t = time.perf_counter()
    schema = Step("schema")
    schema.findings += schema_findings("accelerate", acc, "accelerate_config.yaml")
    if ds is not None:
        schema.findings += schema_findings("deepspeed", ds, "ds_config.json")
    schema.seconds = time.perf_counter() - t
    schema.status = StepStatus.FAIL if any(f.severity == "error" for f in schema.findings) else StepStatus.PASS
    report.steps.append(schema)
    report.steps += engine_steps(folder, {"accelerate_config.yaml": acc, **({"ds_config.json": ds} if ds else {})},
                                 manifest)
    if not report.passed:
        report.steps.append(Step("launch", StepStatus.SKIP, detail="not launched: the configs do not load (see above)"))
        return report

    # Step 2: launch.
    report.steps += _launch(folder, acc, ds, manifest, report, gpu=gpu, deadline=start + timeout, keep=keep)
    return report


BUILD_TIMEOUT = 1800   # s: a first cpu_adam build takes minutes on a small machine; not part of --timeout
PROGRESS_EVERY = 20    # s between progress lines while building


def extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built ops are cached: $TORCH_EXTENSIONS_DIR when set, else a folder of dsadvise's
    cache per environment (Python, torch, DeepSpeed and the environment's prefix), so two environments never
    share a build and a build of one is never taken for the other's."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import hashlib
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "none"

    tag = (f"py{sys.version_info[0]}{sys.version_info[1]}-torch{version('torch')}-ds{version('deepspeed')}-"
           + hashlib.sha1(sys.prefix.encode()).hexdigest()[:10])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dsadvise" / "torch_extensions" / tag


def cache_lock(cache: Path, *, exclusive: bool, say=None):
    """An flock on ``cache/.dsadvise-build.lock``: builds hold it exclusively, launches (whose ranks load the ops
    and briefly take torch's own lock) hold it shared. The kernel releases it when the holder dies."""
    import contextlib
    import fcntl

    @contextlib.contextmanager
    def cm():
        cache.mkdir(parents=True, exist_ok=True)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        with open(cache / ".dsadvise-build.lock", "a+") as guard:
            try:
                fcntl.flock(guard, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if say:
                    say(f"waiting for another dsadvise run using {cache}")
                fcntl.flock(guard, mode)
            yield
    return cm()


def _owned_cache() -> bool:
    """The extensions folder is dsadvise's own (not one the user chose with TORCH_EXTENSIONS_DIR)."""
    return not os.environ.get("TORCH_EXTENSIONS_DIR")


# DeepSpeed's JIT-built ops a dry-run needs (deepspeed/ops/op_builder): the builder's class and NAME (its cache
# folder). Every DeepSpeed rank on the CPU loads the shared-memory all-reduce (deepspeed/comm/torch.py
# build_shm_op); optimizer offload loads cpu_adam.
OPS = {"cpu_adam": ("CPUAdamBuilder", "DeepSpeed cpu_adam op (optimizer offload)"),
       "deepspeed_shm_comm": ("ShareMemCommBuilder", "DeepSpeed shared-memory comm op (CPU all-reduce)")}


def _build_cpu_adam(*, gpu: bool, progress=None) -> Step:
    """:func:`build_op` for cpu_adam."""
    return build_op("cpu_adam", gpu=gpu, progress=progress)


def build_op(op: str, *, gpu: bool, progress=None) -> Step:
    """Build (or load the cached) DeepSpeed op ``op`` (a key of OPS) in one process before the ranks start: two ranks
    compiling it at once wait on each other's lock, and a JIT build takes minutes on a small machine. The
    build has its own BUILD_TIMEOUT (a first build must not fail the dry-run's --timeout) and prints progress.

    Locks: torch's build lock (``<op>/lock``, a FileBaton) is never deleted while another process may own it.
    In dsadvise's own cache folder only dsadvise builds and launches take it, each under :func:`cache_lock`;
    holding that exclusively, a ``lock`` there can only be the remainder of a killed run, and only then is it
    removed. In a folder the user chose (TORCH_EXTENSIONS_DIR), never."""
    t0 = time.perf_counter()
    builder, label = OPS[op]
    step = Step(label)
    cache = extensions_dir()
    cache.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: print(f"dsadvise: {msg}", file=sys.stderr, flush=True))
    code = ("from deepspeed.accelerator import get_accelerator; "
            f"b = get_accelerator().create_op_builder({builder!r}); "
            "import sys; sys.exit(3) if b is None or not b.is_compatible(verbose=False) else b.load(verbose=False)")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(cache))
    if not gpu:
        env["DS_ACCELERATOR"] = "cpu"
    with cache_lock(cache, exclusive=True, say=say):
        stale = [p for p in cache.glob("*/lock")] if _owned_cache() else []
        for lock in stale:
            lock.unlink(missing_ok=True)
            say(f"removed {lock}: left by an interrupted dsadvise build (no dsadvise build holds the cache)")
        built = any(cache.glob(f"{op}/*.so"))
        if not built:
            say(f"building DeepSpeed's {op} op for this environment (first time only, a few minutes; cached "
                f"in {cache})")
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        output = ""
        try:
            while True:
                try:
                    output, _ = proc.communicate(timeout=PROGRESS_EVERY)
                    break
                except subprocess.TimeoutExpired:
                    waited = time.perf_counter() - t0
                    if waited > BUILD_TIMEOUT:
                        raise
                    say(f"still building {op} ({waited:.0f} s)")
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            step.status = StepStatus.FAIL
            step.findings.append(Finding("error", "ds_config.json", "zero_optimization.offload_optimizer.device",
                                         f"building DeepSpeed's {op} op took longer than {BUILD_TIMEOUT} s; "
                                         f"see {cache}"))
            step.seconds = time.perf_counter() - t0
            return step
        except BaseException:            # Ctrl+C, SIGTERM: the compiler goes with us
            _kill_group(proc)
            raise
    step.seconds = time.perf_counter() - t0
    if proc.returncode == 3:
        step.status = StepStatus.SKIP
        step.detail = f"DeepSpeed's {op} op cannot be built on this machine (no compatible compiler)"
    elif proc.returncode != 0:
        step.status = StepStatus.FAIL
        tail = "\n".join((output or "").strip().splitlines()[-5:])
        step.findings.append(Finding("error", "ds_config.json", "zero_optimization.offload_optimizer.device",
                                     f"DeepSpeed's {op} op does not build: {tail}"))
    else:
        step.detail = ("loaded from the cache" if built else "built") + f" in {cache}"
    return step


def _expectations(acc: dict, ds: dict | None, manifest: dict, world: int, device: str) -> dict:
    dtype = acc.get("distributed_type", "NO")
    training = manifest.get("training", {})
    exp: dict[str, Any] = {
        "distributed_type": dtype, "device": device, "world_size": world,
        "proxy_model": manifest.get("proxy_model") or DEFAULT_PROXY, "steps": 2, "seq_len": 32,
        "mixed_precision": acc.get("mixed_precision") or "no",
        "gradient_checkpointing": training.get("activation_checkpointing", "none") != "none",
    }
    if dtype == "DEEPSPEED" and ds is not None:
        from .lint import ds_precision

        zero = ds.get("zero_optimization") or {}
        mb = ds.get("train_micro_batch_size_per_gpu")
        ga = ds.get("gradient_accumulation_steps")
        exp.update(zero_stage=int(zero.get("stage", 0)),
                   offload_optimizer=(zero.get("offload_optimizer") or {}).get("device", "none") or "none",
                   offload_param=(zero.get("offload_param") or {}).get("device", "none") or "none",
                   precision=ds_precision(ds) or "fp32",
                   micro_batch=mb if isinstance(mb, int) else 1,
                   gradient_accumulation_steps=ga if isinstance(ga, int) else 1,
                   ds_optimizer_block="optimizer" in ds)
    else:
        exp.update(micro_batch=1, gradient_accumulation_steps=1)
    if dtype == "FSDP":
        fc = acc.get("fsdp_config") or {}
        exp.update(fsdp_sharding=str(fc.get("fsdp_sharding_strategy") or fc.get("fsdp_reshard_after_forward")
                                     or "FULL_SHARD").upper(),
                   fsdp_offload=bool(fc.get("fsdp_offload_params")),
                   fsdp_layer_cls=fc.get("fsdp_transformer_layer_cls_to_wrap"))
    return exp


# ---------------------------------------------------------------- parallel layouts (issue 15)

MAX_LAYOUT_PROCS = 4


def file_layout(acc: dict, ds: dict | None) -> dict | None:
    """The layout the files ask for: FSDP version, accelerate's parallelism_config sizes, DeepSpeed's autotp_size
    and sequence_parallel_size (None for a plain data-parallel run)."""
    from .lint_parallel import pc_sizes

    dtype = acc.get("distributed_type")
    fc = acc.get("fsdp_config") if isinstance(acc.get("fsdp_config"), dict) else {}
    fsdp2 = dtype == "FSDP" and str(fc.get("fsdp_version", 1)) == "2"
    block = acc.get("parallelism_config") if isinstance(acc.get("parallelism_config"), dict) else {}
    s = pc_sizes(block)
    ds = ds or {}
    tpb = ds.get("tensor_parallel") if isinstance(ds.get("tensor_parallel"), dict) else {}
    autotp = tpb.get("autotp_size") if dtype == "DEEPSPEED" else None
    sp = s["sp_size"] if dtype == "DEEPSPEED" else 1
    if dtype == "DEEPSPEED" and isinstance(ds.get("sequence_parallel_size"), int):
        sp = max(sp, ds["sequence_parallel_size"])
    lay = {"fsdp_version": 2 if fsdp2 else 1, "dp_replicate": s["dp_replicate_size"], "dp_shard": s["dp_shard_size"],
           "tp": s["tp_size"] if fsdp2 else 1, "cp": s["cp_size"] if fsdp2 else 1, "sp": sp,
           "autotp": autotp if isinstance(autotp, int) and autotp > 1 else None,
           "sp_attn": s.get("sp_attn_implementation") or "sdpa", "block": bool(block)}
    if not fsdp2 and lay["autotp"] is None and sp == 1:
        return None
    if fsdp2 and not block:
        lay["dp_shard"] = int(acc.get("num_processes") or 2)
    return lay


def proxy_layout(lay: dict, *, cpu: bool = True) -> tuple[dict, int, list[str]]:
    """The same layout at degree 2 per dimension (at most MAX_LAYOUT_PROCS processes): (layout, processes, what
    changed). ``cpu``: flash attention becomes sdpa (no flash kernels on a CPU)."""
    out, changed = dict(lay), []

    def two(key: str) -> None:
        if lay[key] > 2:
            changed.append(f"{key} {lay[key]} -> 2")
        out[key] = min(lay[key], 2)

    if lay["autotp"]:
        if lay["autotp"] > 2:
            changed.append(f"tensor_parallel.autotp_size {lay['autotp']} -> 2")
        out.update(autotp=2, tp=1, sp=1)
        return out, 2, changed
    if lay["sp"] > 1:
        two("sp")
        if lay["dp_shard"] * lay["dp_replicate"] != 1:
            changed.append(f"dp_shard {lay['dp_shard']} -> 1")
        out.update(dp_shard=1, dp_replicate=1)
        if lay["sp_attn"] != "sdpa" and cpu:
            changed.append(f"sp_attn_implementation {lay['sp_attn']} -> sdpa (no flash-attn kernels on a CPU)")
            out["sp_attn"] = "sdpa"
        return out, 2, changed
    for key in ("tp", "cp", "dp_replicate", "dp_shard"):
        two(key)
    if out["tp"] * out["cp"] * out["dp_replicate"] * out["dp_shard"] > MAX_LAYOUT_PROCS and out["dp_replicate"] > 1:
        changed.append("dp_replicate 2 -> 1 (at most %d processes on a CPU)" % MAX_LAYOUT_PROCS)
        out["dp_replicate"] = 1
    if out["cp"] > 1 and out["dp_shard"] > 1 and out["tp"] * out["cp"] * out["dp_replicate"] * 2 > MAX_LAYOUT_PROCS:
        changed.append("dp_shard 2 -> 1 (cp carries the FSDP2 shard)")
        out["dp_shard"] = 1
    if out["dp_shard"] == 1 and out["cp"] == 1:
        out["dp_shard"] = 2          # FSDP2 needs a dimension to shard across
    procs = out["tp"] * out["cp"] * out["dp_replicate"] * out["dp_shard"]
    return out, procs, changed


def layout_yaml(acc: dict, lay: dict, procs: int, folder: Path) -> dict:
    """The accelerate YAML for the proxy layout (num_processes and the parallelism_config sizes)."""
    cfg = json.loads(json.dumps(acc))
    cfg["num_processes"] = procs
    dscfg = cfg.get("deepspeed_config")
    if isinstance(dscfg, dict) and dscfg.get("deepspeed_config_file"):
        dscfg["deepspeed_config_file"] = str((folder / str(dscfg["deepspeed_config_file"])).resolve())
    block = cfg.get("parallelism_config") if isinstance(cfg.get("parallelism_config"), dict) else None
    if block is not None:
        p = "parallelism_config_"
        block.update({p + "dp_replicate_size": lay["dp_replicate"], p + "dp_shard_size": lay["dp_shard"],
                      p + "tp_size": lay["tp"], p + "cp_size": lay["cp"]})
        if lay["sp"] > 1:
            block.update({p + "sp_size": lay["sp"], p + "sp_attn_implementation": lay["sp_attn"],
                          p + "dp_shard_size": 1})
    return cfg


def _cpu_blocker(acc: dict, ds: dict | None, exp: dict) -> str | None:
    """Why this configuration cannot run on a CPU at all (so it is skipped, not faked), or None."""
    dtype = exp["distributed_type"]
    if dtype == "DEEPSPEED":
        if exp["precision"] == "fp16":
            return ("ds_config.json fp16.enabled: DeepSpeed's CPU accelerator has no fp16 (the engine stops with "
                    "'Type fp16 is not supported on your device'); run `dsadvise dry-run --gpu` on a GPU machine")
        if "nvme" in (exp["offload_optimizer"], exp["offload_param"]):
            try:
                from deepspeed.ops.op_builder import AsyncIOBuilder

                if not AsyncIOBuilder().is_compatible(verbose=False):
                    return ("ds_config.json zero_optimization offload device nvme: DeepSpeed's async_io op (libaio) "
                            "cannot be built here")
            except Exception as exc:
                return f"ds_config.json offload device nvme: DeepSpeed's async_io op is unavailable ({exc})"
    if dtype == "FSDP" and exp.get("fsdp_sharding", "").startswith("HYBRID_SHARD"):
        return (f"accelerate_config.yaml fsdp_config.fsdp_sharding_strategy {exp['fsdp_sharding']}: torch FSDP sizes "
                "the intra-node shard group by the GPUs per node (device_handle.device_count()), which is 0 on a "
                "CPU, so it would quietly run as NO_SHARD")
    if dtype == "FSDP" and exp.get("fsdp_offload"):
        return ("accelerate_config.yaml fsdp_config.fsdp_offload_params: FSDP's CPUOffload needs an accelerator "
                "device (torch: 'Cannot access accelerator device when none is available')")
    if dtype in ("NO", "MULTI_GPU", "FSDP") and exp["mixed_precision"] == "fp16":
        return ("accelerate_config.yaml mixed_precision fp16: on a CPU accelerate turns fp16 autocast and the "
                "GradScaler off (Accelerator.native_amp needs a GPU), so the run would be fp32, not what the file "
                "says; run `dsadvise dry-run --gpu` on a GPU machine")
    return None


def _launch(folder: Path, acc: dict, ds: dict | None, manifest: dict, report: DryRunReport, *, gpu: bool,
            deadline: float, keep: str | None) -> list[Step]:
    """The launch step (preceded by building DeepSpeed's CPU Adam when optimizer offload needs it)."""
    steps: list[Step] = []
    step = _launch_one(folder, acc, ds, manifest, report, gpu=gpu, deadline=deadline, keep=keep, steps=steps)
    return steps + [step]


def _launch_one(folder: Path, acc: dict, ds: dict | None, manifest: dict, report: DryRunReport, *, gpu: bool,
                deadline: float, keep: str | None, steps: list[Step]) -> Step:
    t0 = time.perf_counter()
    dtype = acc.get("distributed_type", "NO")
    configured = int(acc.get("num_processes") or 1)
    machines = int(acc.get("num_machines") or 1)
    device = "cuda" if gpu else "cpu"
    name = f"launch on {'CUDA' if gpu else 'CPU'}"
    if gpu:
        n_gpu = _cuda_devices()
        if n_gpu == 0:
            return Step(name, StepStatus.SKIP, detail="--gpu: no CUDA device on this machine")
        procs = 1 if dtype == "NO" else min(configured, n_gpu)
        if dtype == "MULTI_GPU" and procs < 2:
            return Step(name, StepStatus.SKIP, detail=f"--gpu: MULTI_GPU needs 2 GPUs, this machine has {n_gpu}")
    else:
        procs = 1 if dtype == "NO" else 2
    filled: list[str] = []
    if ds is not None:
        training = manifest.get("training", {})
        ds, filled = fill_auto(ds, micro_batch=training.get("micro_batch_size", 1),
                               gradient_accumulation_steps=manifest.get("gradient_accumulation_steps", 1),
                               hidden_size=manifest.get("model", {}).get("architecture", {}).get("hidden_size"))
    layout = file_layout(acc, ds)
    layout_changes: list[str] = []
    if layout is not None:
        layout, want, layout_changes = proxy_layout(layout, cpu=not gpu)
        if gpu and want > procs:
            return Step(name, StepStatus.SKIP, detail=f"--gpu: this layout needs {want} GPUs at degree 2 per "
                        f"dimension, this machine has {procs}")
        procs = want
    exp = _expectations(acc, ds, manifest, procs, device)
    exp["layout"] = layout
    if not gpu:
        blocker = _cpu_blocker(acc, ds, exp)
        if blocker:
            return Step(name, StepStatus.SKIP, time.perf_counter() - t0, detail=f"cannot run on a CPU: {blocker}")
    if dtype == "DEEPSPEED":
        ops = ([] if gpu else ["deepspeed_shm_comm"]) + (
            ["cpu_adam"] if exp.get("offload_optimizer", "none") != "none" else [])
        for op in ops:
            build = build_op(op, gpu=gpu)
            deadline += build.seconds      # a one-time build is not part of --timeout
            if op == "deepspeed_shm_comm" and build.status != StepStatus.PASS:
                build.status = StepStatus.SKIP      # DeepSpeed falls back to torch.distributed's all-reduce without it
                build.findings = []
            steps.append(build)
            if op == "cpu_adam" and build.status != StepStatus.PASS:
                return Step(name, StepStatus.SKIP, detail="not launched: DeepSpeed's cpu_adam op is not available")
    timeout = max(deadline - time.perf_counter(), 5)
    t0 = time.perf_counter()

    overrides = list(layout_changes)
    if procs != configured:
        overrides.append(f"num_processes {configured} -> {procs}")
    if machines > 1:
        overrides.append(f"num_machines {machines} -> 1, machine_rank 0 (a multi-node config, run on one machine)")
    tmp = Path(tempfile.mkdtemp(prefix="dsadvise-dryrun-"))
    try:
        config_file = folder / "accelerate_config.yaml"
        if layout is not None and (layout_changes or procs != configured):
            import yaml

            config_file = tmp / "accelerate_config.yaml"
            config_file.write_text(yaml.safe_dump(layout_yaml(acc, layout, procs, folder)), encoding="utf-8")
        cmd = _accelerate_cmd() + ["--config_file", str(config_file),
                                   "--num_processes", str(procs), "--num_machines", "1", "--machine_rank", "0",
                                   "--main_process_port", str(_free_port())]
        if machines > 1:
            cmd += ["--main_process_ip", "127.0.0.1"]
        if dtype == "FSDP" and not gpu:
            fc = acc.get("fsdp_config") or {}
            if fc.get("fsdp_sync_module_states", True) is not False or fc.get("fsdp_cpu_ram_efficient_loading"):
                cmd += ["--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false"]
                overrides.append("fsdp_sync_module_states and fsdp_cpu_ram_efficient_loading -> false (torch FSDP "
                                 "broadcasts module states only from GPU tensors; every rank builds the same seeded "
                                 "proxy instead)")
        if dtype == "DEEPSPEED" and ds is not None:
            proxy_ds, changed = _ds_for_world(ds, exp, procs)
            if filled:
                changed.insert(0, "ds_config.json 'auto' values filled as the HF Trainer would: " + ", ".join(filled))
            if changed:
                overrides += changed
                path = tmp / "ds_config.json"
                path.write_text(json.dumps(proxy_ds, indent=2), encoding="utf-8")
                cmd += ["--deepspeed_config_file", str(path)]
        report.overrides = overrides
        (tmp / "expect.json").write_text(json.dumps(exp, indent=1), encoding="utf-8")
        results = tmp / "results"
        results.mkdir()
        cmd += [str(PROXY_SCRIPT), "--expect", str(tmp / "expect.json"), "--result-dir", str(results)]
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ACCELERATE_DISABLE_RICH": "1"})
        env["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())   # the ranks' op builds (comm, cpu_adam) share it
        if not gpu:
            env["DS_ACCELERATOR"] = "cpu"
            env["CUDA_VISIBLE_DEVICES"] = ""
        log = tmp / "launch.log"
        with open(log, "w", encoding="utf-8") as fh:
            # Its own session, so that one killpg ends accelerate launch, its workers and any op compile they
            # started, on a timeout and on Ctrl+C / SIGTERM alike.
            with cache_lock(extensions_dir(), exclusive=False):
                proc = subprocess.Popen(cmd, cwd=str(folder), env=env, stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                rc, timed_out = wait_owned(proc, timeout)
        step = _collect(name, results, log, procs, rc, timed_out, timeout)
        step.seconds = time.perf_counter() - t0
        if overrides:
            step.detail = (step.detail + "; " if step.detail else "") + "overrides: " + ", ".join(overrides)
        if keep:
            dest = Path(keep)
            dest.mkdir(parents=True, exist_ok=True)
            for p in tmp.rglob("*"):
                if p.is_file():
                    shutil.copy2(p, dest / p.name)
        return step
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ds_for_world(ds: dict, exp: dict, procs: int) -> tuple[dict, list[str]]:
    """The DeepSpeed config for the proxy world: train_batch_size follows micro x accumulation x world (world / sp
    under Ulysses); autotp_size and sequence_parallel_size follow the proxy layout."""
    cfg = json.loads(json.dumps(ds))
    changed = []
    lay = exp.get("layout") or {}
    if lay.get("autotp") and isinstance(cfg.get("tensor_parallel"), dict) \
            and cfg["tensor_parallel"].get("autotp_size") != lay["autotp"]:
        changed.append(f"ds_config.json tensor_parallel.autotp_size {cfg['tensor_parallel'].get('autotp_size')} -> "
                       f"{lay['autotp']}")
        cfg["tensor_parallel"]["autotp_size"] = lay["autotp"]
    if lay.get("sp", 1) > 1 and cfg.get("sequence_parallel_size") not in (None, lay["sp"]):
        changed.append(f"ds_config.json sequence_parallel_size {cfg['sequence_parallel_size']} -> {lay['sp']}")
        cfg["sequence_parallel_size"] = lay["sp"]
    tb = cfg.get("train_batch_size")
    if isinstance(tb, int) and not isinstance(tb, bool):
        want = exp["micro_batch"] * exp["gradient_accumulation_steps"] * (procs // lay.get("sp", 1))
        if tb != want:
            cfg["train_batch_size"] = want
            changed.append(f"ds_config.json train_batch_size {tb} -> {want} (micro-batch "
                           f"{exp['micro_batch']} x accumulation {exp['gradient_accumulation_steps']} x {procs})")
    return cfg, changed


def wait_owned(proc: subprocess.Popen, timeout: float) -> tuple[int, bool]:
    """Wait for ``proc`` (the leader of its own process group): (returncode, timed out). On a timeout, and on
    anything raised while waiting (Ctrl+C, SIGTERM turned into KeyboardInterrupt), the whole group is ended."""
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return -1, True
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    keep = [ln for ln in text if ln.strip() and "Warning" not in ln and "warn(" not in ln]
    return "\n".join(keep[-lines:])


def _collect(name: str, results: Path, log: Path, procs: int, rc: int, timed_out: bool, timeout: float) -> Step:
    step = Step(name)
    ranks = {}
    for p in sorted(results.glob("rank*.json")):
        try:
            ranks[int(p.stem[4:])] = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue
    if timed_out:
        step.status = StepStatus.FAIL
        log_text = ""
        try:
            log_text = log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
        building = any(w in log_text for w in ("Building extension module", "Emitting ninja", "ninja: "))
        step.findings.append(Finding("error", "accelerate_config.yaml", "", f"timed out after {timeout:.0f} s "
                                     f"({len(ranks)} of {procs} ranks finished)"
                                     + ("; DeepSpeed was JIT-building a C++ op, which is cached once built: run "
                                        "again or raise --timeout" if building else "")))
    r0 = ranks.get(0)
    if r0 is not None:
        passed = [c for c in r0["checks"] if c["ok"]]
        step.detail = f"{procs} process(es); rank 0: " + "; ".join(
            f"{c['check']} = {c['got']}" for c in passed if c["check"] in (
                "torch.distributed world size", "ZeRO stage (engine.zero_optimization_stage())",
                "precision in effect", "optimizer offload device", "parameter offload device",
                "FSDP sharding strategy in effect", "accelerate mixed_precision", "optimizer steps taken",
                "accelerate device mesh (ParallelismConfig)", "tensor-parallel shards (q_proj rows / tp)",
                "rows of q_proj held by this rank",
                "DeepSpeed autotp_size in effect", "AutoTP column shard: q_proj rows on this rank",
                "sequence split: tokens per rank", "context parallel: tokens per rank",
                "Ulysses sequence-parallel group size"))
        skipped = [c for c in r0["checks"] if c.get("skipped")]
        if skipped:
            step.detail += "; not run on this machine: " + "; ".join(f"{c['check']} ({c['skipped']})"
                                                                     for c in skipped)
        t = r0.get("timings", {})
        if t:
            step.detail += " (" + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + ")"
    for rank, r in sorted(ranks.items()):
        for c in r["checks"]:
            if not c["ok"]:
                step.findings.append(Finding("error", c.get("file", ""), c.get("setting", ""),
                                             f"rank {rank}: {c['check']}: got {c['got']!r}, expected "
                                             f"{c['expected']!r}"))
        if r.get("error"):
            step.findings.append(Finding("error", _blame_file(r["error"]), "", f"rank {rank}: {r['error']}"))
    missing = [r for r in range(procs) if r not in ranks]
    if rc != 0 or missing:
        if not step.findings:
            tail = _tail(log)
            step.findings.append(Finding("error", _blame_file(tail), "",
                                         f"accelerate launch exited {rc}"
                                         + (f"; no result from rank(s) {missing}" if missing else "")
                                         + (f"; last output:\n{tail}" if tail else "")))
    if step.findings and step.status == StepStatus.PASS:
        step.status = StepStatus.FAIL
    # Ranks report the same checks; dedupe identical messages modulo rank.
    seen, unique = set(), []
    for f in step.findings:
        key = (f.file, f.setting, f.message.split(": ", 1)[-1])
        if key not in seen:
            seen.add(key)
            unique.append(f)
    step.findings = unique
    return step


def _blame_file(text: str) -> str:
    low = text.lower()
    if any(w in low for w in ("zero", "deepspeed", "offload", "train_batch", "fp16", "bf16")):
        return "ds_config.json"
    return "accelerate_config.yaml"


__all__ = ["dry_run", "DryRunReport", "DEFAULT_TIMEOUT"]
