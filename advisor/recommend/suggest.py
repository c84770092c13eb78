"""When nothing fits: what would, each change verified by re-running the search with it.

Tried in this order, each at most a few re-runs (a re-run is a full search, milliseconds): a lighter
method (LoRA, QLoRA), full activation checkpointing (when the user fixed less), the CPU RAM offload
needs, NVMe offload, more GPUs per node or more nodes, GPUs with more memory, shorter sequences, a
smaller starting micro-batch. At most :data:`MAX_RERUNS` re-runs in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..catalog.gpus import list_gpus
from ..errors import AdvisorError
from ..formatting import fmt_bytes
from ..specs import GiB
from .problem import Problem
from .recommendation import InferenceChoice, Recommendation, Suggestion

VRAM_STEPS_GIB = (16, 24, 32, 40, 48, 64, 80, 96, 141, 192)
MAX_RERUNS = 14


def _summary(r: Recommendation) -> str:
    rec = r.recommendation
    if rec is None:
        return "?"
    if isinstance(rec, InferenceChoice):
        return f"{rec.layout} at batch {rec.batch_size}"
    off = [f"{k.split('_')[1]}->{v}" for k, v in (("offload_optimizer", rec.offload_optimizer),
                                                  ("offload_param", rec.offload_param)) if v != "none"]
    total = fmt_bytes(r.estimate.per_gpu.total) if r.estimate else "?"
    step = f", ~{r.step_time_seconds:.1f} s/step" if r.step_time_seconds else ""
    return (f"{rec.name}{' + offload ' + ', '.join(off) if off else ''}, {rec.method}, checkpointing "
            f"{rec.activation_checkpointing}, micro-batch {rec.micro_batch_size}: {total} per GPU{step}")


def suggestions(p: Problem, rec: Recommendation, kwargs: dict, recommend: Callable[..., Recommendation],
                cpu_need: int | None = None) -> list[Suggestion]:
    """Verified changes that make the problem fit (see the module docstring for the order).

    ``recommend`` is :func:`advisor.recommend.recommend`, passed in (each change is verified by re-running it
    with ``suggest=False``) so that this module does not import its own package back.
    """
    out: list[Suggestion] = []
    runs = 0

    def attempt(change: str, flags: dict, *, hw=None, template=None, **overrides) -> bool:
        nonlocal runs
        if runs >= MAX_RERUNS:
            return False
        runs += 1
        try:
            r = recommend(p.model, hw or p.hw, template or p.template, **{**kwargs, **overrides}, suggest=False)
        except AdvisorError:
            return False
        if r.found:
            out.append(Suggestion(change=change, flags=flags, verified=True, result=_summary(r)))
        return r.found

    t, hw = p.template, p.hw
    current = None if p.method_auto else p.methods[0]
    if t.task == "train" and current in ("full", "freeze"):
        for m, why in (("lora", "train LoRA adapters instead of all weights"),
                       ("qlora", "train LoRA adapters on a 4-bit (NF4) base model")):
            attempt(why, {"--method": m}, method=m)
    elif t.task == "train" and current == "lora":
        attempt("quantize the base model to 4 bits (QLoRA)", {"--method": "qlora"}, method="qlora")
    elif t.task == "infer" and current == "full":
        attempt("load the weights in 4 bits (bitsandbytes NF4)", {"--method": "qlora"}, method="qlora")

    if t.task == "train" and p.checkpointing_fixed in ("none", "selective"):
        attempt("recompute activations: full activation checkpointing", {"--checkpointing": "full"},
                checkpointing="full")
    if cpu_need and hw.cpu_ram_bytes:
        want = math.ceil(cpu_need * 1.05 / (16 * GiB)) * 16
        attempt(f"offload with more CPU RAM: about {want} GiB per node (offload needs {fmt_bytes(cpu_need)})",
                {"--cpu-ram": want}, hw=hw.model_copy(update={"cpu_ram_bytes": want * GiB}))
    if t.task == "train" and hw.nvme_path is None:
        attempt("offload to NVMe (ZeRO-Infinity): give a local NVMe mount", {"--nvme-path": "/local_nvme"},
                hw=hw.model_copy(update={"nvme_path": "/local_nvme"}))

    for gpn, nodes in _more_gpus(hw.gpus_per_node, hw.nodes):
        flags = {"--gpus": gpn} if nodes == hw.nodes else {"--gpus": gpn, "--nodes": nodes}
        what = f"{gpn} GPUs per node" if nodes == hw.nodes else f"{nodes} nodes of {gpn} GPUs"
        if attempt(f"more GPUs: {what}", flags, hw=hw.model_copy(update={"gpus_per_node": gpn, "nodes": nodes})):
            break

    for label, flags, update in _more_memory(hw):
        if attempt(f"GPUs with more memory: {label}", flags, hw=hw.model_copy(update=update)):
            break

    seq = t.seq_len // 2
    while seq >= 256:
        if attempt(f"shorter sequences: --seq-len {seq}", {"--seq-len": seq},
                   template=t.model_copy(update={"seq_len": seq})):
            break
        seq //= 2
    if t.micro_batch_size > 1:
        attempt("start the micro-batch search at 1", {"--micro-batch": 1},
                template=t.model_copy(update={"micro_batch_size": 1}))
    return out


def _more_gpus(gpn: int, nodes: int) -> list[tuple[int, int]]:
    out = [(g, nodes) for g in (2, 4, 8) if g > gpn]
    base = max(gpn, 8)
    out += [(base, n) for n in (2, 4, 8, 16) if n > nodes]
    return out[:5]


def _more_memory(hw) -> list[tuple[str, dict, dict]]:
    if hw.gpu is not None:
        bigger = sorted((g for g in list_gpus() if g.memory_bytes > hw.vram_bytes and g.vendor == hw.gpu.vendor
                         and (g.bf16 or not hw.gpu.bf16)), key=lambda g: g.memory_bytes)
        seen, out = set(), []
        for g in bigger:
            size = round(g.memory_bytes / GiB)
            if size in seen:
                continue
            seen.add(size)
            out.append((f"{g.name} ({fmt_bytes(g.memory_bytes)})", {"--gpu": g.name},
                        {"gpu": g, "vram_bytes": g.memory_bytes}))
        return out[:3]
    return [(f"{v} GiB per GPU", {"--vram": v}, {"vram_bytes": v * GiB})
            for v in VRAM_STEPS_GIB if v * GiB > hw.vram_bytes][:3]
