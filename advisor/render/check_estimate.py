"""``dsadvise check``'s fit verdict: the run a file launches, estimated with :func:`advisor.api.estimate` from the
inputs its keys set (:mod:`advisor.render.read_keys`), with the keys no input models named as not counted and
the ``dsadvise estimate`` command line that gives the same numbers."""

from __future__ import annotations

import shlex
from typing import Any

from ..errors import InputError
from ..formatting import fmt_bytes
from .read_keys import NotCounted, Reading
from .validate import Finding

# api.estimate keyword -> CLI flag (the flag table's names; booleans are switches)
_FLAG = {"micro_batch": "--micro-batch", "global_batch": "--global-batch", "seq_len": "--seq-len",
         "precision": "--precision", "optimizer": "--optimizer", "method": "--method", "lora_rank": "--lora-rank",
         "lora_targets": "--lora-targets", "lora_dropout": "--lora-dropout", "checkpointing": "--checkpointing",
         "attention": "--attention", "strategy": "--strategy", "offload_optimizer": "--offload-optimizer",
         "offload_param": "--offload-param", "bucket_sizes": "--bucket-sizes", "freeze_layers": "--freeze-layers",
         "sub_group_size": "--sub-group-size", "loss": "--loss", "offload_activations": "--offload-activations",
         "double_quant": "--no-double-quant", "base_dtype": "--base-dtype", "sync_each_batch": "--sync-each-batch",
         "checkpoint_save": "--checkpoint-save", "batch_lengths": "--batch-lengths",
         "tp": "--tp", "sp": "--sp", "cp": "--cp", "dp_replicate": "--dp-replicate", "fsdp_version": "--fsdp-version",
         "allow_cross_node_tp": "--allow-cross-node-tp", "nvme_path": "--nvme-path", "gpus": "--gpus",
         "nodes": "--nodes", "vram": "--vram", "gpu": "--gpu", "cpu_ram": "--cpu-ram"}
_LAYOUT = {"tp_size": "tp", "sp_size": "sp", "cp_size": "cp", "dp_replicate_size": "dp_replicate",
           "fsdp_version": "fsdp_version"}


def command(model: str, kwargs: dict[str, Any]) -> str:
    """The ``dsadvise estimate`` command line of these :func:`advisor.api.estimate` keyword arguments."""
    words = ["dsadvise", "estimate", "--model", model]
    for key, value in kwargs.items():
        flag = _FLAG[key]
        if isinstance(value, bool):
            if key == "double_quant":
                value = not value
            if value:
                words.append(flag)
            continue
        if isinstance(value, (tuple, list)):
            value = ",".join(value)
        words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def estimate_kwargs(p, reading: Reading, world: int, family: str) -> tuple[dict[str, Any], list[NotCounted]]:
    """The :func:`advisor.api.estimate` keyword arguments (hardware included) of the run, and what is not counted.
    ``p``: :class:`advisor.render.lint.Problem` (its seq_len / micro_batch / checkpointing / optimizer / method are
    the flags' or dsadvise.json's; the file's keys win)."""
    from .frameworks.common import LIGER_FAMILIES

    gpus = p.gpus or max(1, world // (p.nodes or 1))
    nodes = p.nodes or max(1, world // gpus)
    kw: dict[str, Any] = {"gpus": gpus, "nodes": nodes}
    for key in ("vram", "gpu", "cpu_ram"):
        if getattr(p, key) is not None:
            kw[key] = getattr(p, key)
    kw.update(seq_len=p.seq_len, micro_batch=p.micro_batch or 1, checkpointing=p.checkpointing,
              optimizer=p.optimizer, method=p.method)
    kw["batch_lengths"] = getattr(p, "batch_lengths", "fixed")   # issue 17 (L): --batch-lengths / dsadvise.json
    kw.update({_LAYOUT.get(k, k): v for k, v in reading.kwargs.items() if v is not None})
    if kw.get("batch_lengths") == "fixed":   # the default: not written into the command
        kw.pop("batch_lengths")
    notes = list(reading.not_counted)
    if reading.liger:
        if family in LIGER_FAMILIES:
            kw["loss"] = "fused-linear"
        else:
            notes.append(NotCounted("(Liger kernel)", f"Liger has no patch for {family} models: the plain loss "
                                    "runs and is counted", False))
    if kw.get("method") not in ("lora", "qlora"):
        for key in ("lora_rank", "lora_targets", "lora_dropout", "base_dtype"):
            kw.pop(key, None)
    if kw.get("method") != "qlora":
        kw.pop("double_quant", None)
    if kw.get("method") != "freeze":
        kw.pop("freeze_layers", None)
    if kw.get("tp", 1) > 1:
        kw["allow_cross_node_tp"] = True
    gas = reading.gas or 1
    if gas > 1:
        split = kw.get("tp", 1) * kw.get("sp", 1) * kw.get("cp", 1)
        kw["global_batch"] = kw["micro_batch"] * gas * max(1, gpus * nodes // split)
    return kw, notes


def estimate_findings(file: str, p, reading: Reading, world: int) -> list[Finding]:
    """The fit verdict (error when it does not fit, else info), one info line per key not counted, the keys not
    reviewed, and the equivalent ``dsadvise estimate`` command. The verdict's ``estimate`` (JSON) carries the
    numbers (bytes)."""
    from ..api import estimate
    from ..catalog.models import resolve_model

    model = resolve_model(p.model)
    kw, notes = estimate_kwargs(p, reading, world, model.architecture.family)
    cmd = command(p.model, kw)
    try:
        est = estimate(model, **kw)
    except InputError as exc:
        return [Finding("info", file, "", f"fit not checked: {exc} (as `{cmd}`)")]
    low = [n.setting for n in notes if n.raises]
    total, cap = est.per_gpu.total, est.hardware.vram_bytes
    s = est.strategy
    hw = est.hardware
    gas = reading.gas or 1
    what = (f"{model.name} ({est.model.parameters / 1e9:.2f}B parameters), {s.name}"
            + (f" + offload optimizer {s.offload_optimizer}" if s.offload_optimizer != "none" else "")
            + (f" + offload param {s.offload_param}" if s.offload_param != "none" else "")
            + "".join(f" {k.replace('_size', '')} {getattr(s, k)}" for k in ("tp_size", "sp_size", "cp_size",
                                                                             "dp_replicate_size")
                      if getattr(s, k) > 1)
            + f", {s.precision}, {kw['method']}, micro-batch {s.micro_batch_size} x seq {kw['seq_len']}, "
              f"checkpointing {s.activation_checkpointing}, {hw.nodes} x {hw.gpus_per_node} GPUs"
            + (f", accumulation {gas}" + (" (sync_each_batch)" if kw.get("sync_each_batch") else "") if gas > 1
               else ""))
    caveat = f"; may be low: not counted {', '.join(low)}" if low else ""
    data = {"per_gpu_bytes": total, "vram_bytes": cap, "fits": bool(total <= cap and est.per_node_cpu.fits),
            "per_node_cpu_bytes": est.per_node_cpu.total, "command": cmd, "may_be_low": bool(low),
            "not_counted": [n.to_json() for n in notes], "not_reviewed": list(reading.unreviewed)}
    if total > cap:
        top = sorted(est.per_gpu.breakdown.items(), key=lambda kv: -kv[1])[:3]
        verdict = Finding("error", file, "", f"does not fit: {what} needs about {fmt_bytes(total)} per GPU of "
                          f"{fmt_bytes(cap)} (largest: " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in top)
                          + f"){caveat}; try `dsadvise recommend`", estimate=data)
    elif not est.per_node_cpu.fits:
        verdict = Finding("error", file, "", f"CPU RAM: {what} needs about {fmt_bytes(est.per_node_cpu.total)} per "
                          f"node of {fmt_bytes(est.per_node_cpu.available_bytes)}{caveat}", estimate=data)
    else:
        verdict = Finding("info", file, "", f"fits: {what} needs about {fmt_bytes(total)} per GPU of {fmt_bytes(cap)} "
                          f"({fmt_bytes(cap - total)} headroom){caveat}", estimate=data)
    out = [verdict, Finding("info", file, "", f"estimated as: {cmd}")]
    for key, text in reading.said:   # issue 17 (L): how the file's keys were read (packing / padding)
        out.append(Finding("info", file, key, f"read: {key} {text}"))
    for n in notes:
        out.append(Finding("info", file, n.setting, f"not counted: {n.why}"
                           + (" (can need more memory: the estimate may be low)" if n.raises else "")))
    if reading.unreviewed:
        out.append(Finding("info", file, "", "not reviewed for memory (dsadvise does not know what they change): "
                           + ", ".join(reading.unreviewed)))
    return out
