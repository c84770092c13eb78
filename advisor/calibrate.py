"""``dsadvise calibrate``: measure the machine it runs on and write a :class:`advisor.profile.MachineProfile`.

What is measured (each a median of repeats after warm-up):

* dense matmul throughput per dtype (fp32, bf16, fp16): ``torch.matmul`` of two square n x n matrices,
  2·n³ FLOPs per product, on the first CUDA device, else on the CPU (labelled so);
* ring all-reduce and all-gather bus bandwidth across the local devices (nccl-tests convention: all-reduce
  ``bytes x 2(n-1)/n / t``, all-gather ``total bytes x (n-1)/n / t``): NCCL over the CUDA devices, or gloo
  between CPU processes when there are fewer than two (what the CPU measures is then the host's loopback, not a
  GPU link, and the profile says so);
* pinned host -> device and device -> host copies (CUDA only; null on a CPU-only machine);
* AdamW parameters/s on the CPU: torch fused, torch for-each, and DeepSpeedCPUAdam where its op loads.

Torch is imported inside the functions: ``import advisor.calibrate`` stays cheap.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .profile import MachineProfile, default_profile_path, profile_yaml


@dataclass(frozen=True)
class Settings:
    """Sizes and repeats of one calibration run (``quick`` keeps a CPU run to seconds)."""

    matmul_n: int
    repeats: int
    collective_bytes: int
    copy_bytes: int
    adam_params: int
    processes: int            # CPU collective processes when fewer than two GPUs


QUICK_CPU = Settings(matmul_n=256, repeats=3, collective_bytes=1 << 20, copy_bytes=8 << 20, adam_params=1 << 18,
                     processes=2)
FULL_CPU = Settings(matmul_n=1024, repeats=5, collective_bytes=16 << 20, copy_bytes=64 << 20,
                    adam_params=1 << 22, processes=2)
QUICK_GPU = Settings(matmul_n=2048, repeats=5, collective_bytes=32 << 20, copy_bytes=64 << 20,
                     adam_params=1 << 22, processes=2)
FULL_GPU = Settings(matmul_n=8192, repeats=10, collective_bytes=256 << 20, copy_bytes=512 << 20,
                    adam_params=1 << 25, processes=2)


def _timed(fn, repeats: int, sync=lambda: None) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_matmul(device: str, n: int, repeats: int) -> dict[str, float]:
    """Dense matmul FLOP/s per dtype on ``device`` (``cpu`` or ``cuda``): 2·n³ / median seconds."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            seconds = _timed(lambda: torch.matmul(a, b), repeats, sync)
        except (RuntimeError, TypeError):      # a dtype this device cannot multiply
            continue
        out[name] = 2.0 * n ** 3 / seconds
    return out


def measure_copies(nbytes: int, repeats: int) -> tuple[float, float]:
    """(host->device, device->host) bytes/s of pinned copies to and from the first CUDA device."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    h2d = _timed(lambda: dev.copy_(host, non_blocking=True), repeats, torch.cuda.synchronize)
    d2h = _timed(lambda: host.copy_(dev, non_blocking=True), repeats, torch.cuda.synchronize)
    return nbytes / h2d, nbytes / d2h


def measure_adam(params: int, repeats: int, deepspeed: bool) -> dict[str, float]:
    """AdamW parameters per second on the CPU: torch fused, torch for-each, DeepSpeedCPUAdam (where it loads)."""
    import torch

    out: dict[str, float] = {}
    p = torch.nn.Parameter(torch.randn(params))
    p.grad = torch.randn(params)
    for name, kwargs in (("torch_fused", {"fused": True}), ("torch_foreach", {"foreach": True})):
        try:
            opt = torch.optim.AdamW([p], lr=1e-4, **kwargs)
            out[name] = params / _timed(opt.step, repeats)
        except (RuntimeError, TypeError, ValueError):
            continue
    if deepspeed:
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            opt = DeepSpeedCPUAdam([p], lr=1e-4)
            out["deepspeed"] = params / _timed(opt.step, repeats)
        except (ImportError, OSError, RuntimeError, subprocess.SubprocessError):
            pass   # the op cannot be built or loaded here (no compiler, no AVX): the profile says so
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collective_worker(rank: int, world: int, port: int, backend: str, nbytes: int, repeats: int, result) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = f"cuda:{rank}" if backend == "nccl" else "cpu"
        if backend == "nccl":
            torch.cuda.set_device(rank)
        sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
        n = nbytes // 4
        x = torch.ones(n, dtype=torch.float32, device=device)
        shards = [torch.empty(n // world, dtype=torch.float32, device=device) for _ in range(world)]
        mine = torch.ones(n // world, dtype=torch.float32, device=device)

        def allreduce():
            dist.all_reduce(x)

        def allgather():
            dist.all_gather(shards, mine)

        ar = _timed(allreduce, repeats, sync)
        ag = _timed(allgather, repeats, sync)
        dist.barrier()
        if rank == 0:
            q = (world - 1) / world
            result.put((n * 4 * 2 * q / ar, (n // world) * world * 4 * q / ag))
    finally:
        dist.destroy_process_group()


def measure_collectives(world: int, backend: str, nbytes: int, repeats: int) -> tuple[float, float]:
    """(all-reduce, all-gather) bus bandwidth in bytes/s across ``world`` local processes."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    result = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_collective_worker, args=(r, world, port, backend, nbytes, repeats, result))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    if any(p.exitcode != 0 for p in procs) or result.empty():
        raise RuntimeError(f"the {backend} collective benchmark failed (exit codes "
                           f"{[p.exitcode for p in procs]})")
    return result.get()


def calibrate(*, quick: bool = False, device: str = "auto", collectives: bool = True,
              deepspeed_adam: bool = True, progress=lambda what: None) -> MachineProfile:
    """Measure this machine (see the module docstring) and return its profile; ``progress(text)`` is told
    what is being measured next."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA device visible to torch here; run without --device cuda to measure the CPU",
                         field="--device")
    gpu = device == "cuda"
    s = (QUICK_GPU if quick else FULL_GPU) if gpu else (QUICK_CPU if quick else FULL_CPU)
    notes: list[str] = []
    if gpu:
        name = torch.cuda.get_device_name(0)
        ndev = torch.cuda.device_count()
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, " \
               f"{torch.get_num_threads()} torch threads)"
        ndev = 1
        notes.append("measured on the CPU: the matmul figures are this CPU's, not a GPU's; estimates that use this "
                     "profile describe training on this CPU")
    progress(f"matmul on {device} ({s.matmul_n} x {s.matmul_n}, fp32/bf16/fp16)")
    matmul = measure_matmul(device, s.matmul_n, s.repeats)
    ar = ag = None
    backend = None
    if collectives:
        if gpu and ndev >= 2:
            backend, world = "nccl", ndev
        else:
            backend, world = "gloo", s.processes
            notes.append(f"collectives measured between {world} CPU processes over gloo (host loopback), not over a "
                         "GPU link" if not gpu else "one GPU only: collectives measured between CPU processes "
                         "over gloo, not over a GPU link")
        progress(f"all-reduce and all-gather over {backend}, {world} processes")
        ar, ag = measure_collectives(world, backend, s.collective_bytes, s.repeats)
        ndev = world if backend == "nccl" else ndev
    h2d = d2h = None
    if gpu:
        progress("pinned host <-> device copies")
        h2d, d2h = measure_copies(s.copy_bytes, s.repeats)
    else:
        notes.append("no CUDA device: host<->device copies not measured (the catalog's PCIe figure stays)")
    progress("AdamW on the CPU" + (" (DeepSpeedCPUAdam's first use compiles its op: minutes; --no-deepspeed-adam "
                                   "skips it)" if deepspeed_adam else ""))
    adam = measure_adam(s.adam_params, s.repeats, deepspeed_adam)
    if deepspeed_adam and "deepspeed" not in adam:
        notes.append("DeepSpeedCPUAdam could not be loaded here: the profile's torch fused AdamW rate stands in")
    if quick:
        notes.append("quick settings: small sizes and few repeats, figures less stable")
    return MachineProfile(device=name, device_kind=device, devices=ndev, matmul_flops=matmul,
                          allreduce_bus_bytes_per_s=ar, allgather_bus_bytes_per_s=ag, collective_backend=backend,
                          host_to_device_bytes_per_s=h2d, device_to_host_bytes_per_s=d2h,
                          cpu_adam_params_per_s=adam, host=platform.node(), torch_version=torch.__version__,
                          created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          quick=quick, notes=notes)


def write_profile(profile: MachineProfile, out: str | os.PathLike | None, *, force: bool = False) -> Path:
    """Write ``profile`` as documented YAML to ``out`` (default: the user's config folder); never overwrites
    an existing file without ``force``."""
    path = Path(out).expanduser() if out else default_profile_path()
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it", field="--out")
    if path.exists() and path.is_dir():
        raise InputError(f"{path} is a folder; give a file name such as {path / 'profile.yaml'}", field="--out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile_yaml(profile), encoding="utf-8")
    return path


def summary(profile: MachineProfile) -> list[str]:
    """One line per measured figure, in the units people read (TFLOPS, GB/s, 1e9 params/s)."""
    lines = [f"device      {profile.device} ({profile.device_kind}, {profile.devices} device(s))"]
    lines += [f"matmul      {k}: {v / 1e12:.3f} TFLOPS" for k, v in profile.matmul_flops.items()]
    if profile.allreduce_bus_bytes_per_s:
        lines.append(f"all-reduce  {profile.allreduce_bus_bytes_per_s / 1e9:.2f} GB/s bus "
                     f"({profile.collective_backend})")
    if profile.allgather_bus_bytes_per_s:
        lines.append(f"all-gather  {profile.allgather_bus_bytes_per_s / 1e9:.2f} GB/s bus "
                     f"({profile.collective_backend})")
    if profile.host_to_device_bytes_per_s:
        lines.append(f"host->dev   {profile.host_to_device_bytes_per_s / 1e9:.2f} GB/s pinned")
        lines.append(f"dev->host   {(profile.device_to_host_bytes_per_s or 0) / 1e9:.2f} GB/s pinned")
    lines += [f"cpu adam    {k}: {v / 1e9:.3f}e9 params/s" for k, v in profile.cpu_adam_params_per_s.items()]
    lines += [f"note        {n}" for n in profile.notes]
    return lines
