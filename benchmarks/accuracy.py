"""Accuracy campaign: dsadvise's activation estimate against what autograd really saves.

For every case, ``benchmarks/measure.py`` builds the real ``transformers`` model from the catalog config
(``advisor/data/models.yaml``, real widths, 1 and 2 decoder layers), runs a training forward with labels and
records the bytes saved for backward; ``advisor.memory.activations.activation_memory`` estimates the same
quantity from the :class:`~advisor.architecture.Architecture` alone. Both are for the full depth of the model
(measured: ``fixed + num_layers * per_layer``). Error = (estimated - measured) / measured.

Usage::

    python benchmarks/accuracy.py            # the whole campaign (~45 minutes on 2 CPU cores)
    python benchmarks/accuracy.py --quick    # a subset (~5 minutes)
    python benchmarks/accuracy.py --write docs/accuracy.md

``--temporaries`` adds the backward-transient check (fp32, where this CPU's matmuls are fast); ``--step`` the
whole-training-step peak against the estimator's ``per_gpu.total``; ``--distributed`` DDP and DeepSpeed ZeRO
steps in 2 CPU processes. ``--cache FILE`` keeps every measurement (they do not depend on the estimator) so
that a rerun after an estimator change re-estimates without re-measuring. The docs table comes from::

    python benchmarks/accuracy.py --temporaries --step --distributed --cache acc.json --write docs/accuracy.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import measure  # noqa: E402

from advisor.architecture import Architecture  # noqa: E402
from advisor.memory.activations import activation_memory  # noqa: E402
from advisor.hf_config import architecture_from_hf_config  # noqa: E402
from advisor.specs import LoraSpec, TrainingSpec  # noqa: E402


@dataclass(frozen=True)
class Case:
    model: str
    mode: str
    attn: str
    seq: int
    batch: int
    ckpt: str = "none"
    method: str = "full"
    overrides: tuple[tuple[str, Any], ...] = ()
    quick: bool = False

    @property
    def label(self) -> str:
        extra = "" if self.method == "full" else f" {self.method}"
        ov = "".join(f" {k}={v}" for k, v in self.overrides)
        return (f"{self.model} {self.mode} {self.attn} ckpt={self.ckpt} s={self.seq} b={self.batch}"
                f"{extra}{ov}")


def _c(model, mode, attn, seq, batch, ckpt="none", method="full", quick=False, **ov) -> Case:
    return Case(model, mode, attn, seq, batch, ckpt, method, tuple(sorted(ov.items())), quick)


# Widths are the real ones; sequence/batch are bounded by ~8 GiB of host memory per measurement.
CASES: list[Case] = [
    # Llama-2-7B: MHA, RMSNorm, SwiGLU 11008, 32k vocab
    _c("llama-2-7b", "fp32", "sdpa", 512, 1),
    _c("llama-2-7b", "fp32", "eager", 512, 1),
    _c("llama-2-7b", "autocast-bf16", "sdpa", 1024, 2, quick=True),
    _c("llama-2-7b", "autocast-bf16", "eager", 512, 2),
    _c("llama-2-7b", "autocast-bf16", "sdpa", 1024, 2, "full"),
    _c("llama-2-7b", "autocast-bf16", "eager", 512, 2, "selective"),
    _c("llama-2-7b", "autocast-fp16", "sdpa", 512, 1),
    _c("llama-2-7b", "half-bf16", "sdpa", 1024, 2),
    _c("llama-2-7b", "half-bf16", "eager", 1024, 1, quick=True),
    _c("llama-2-7b", "half-bf16", "eager", 512, 2, "full"),
    _c("llama-2-7b", "half-bf16", "sdpa", 128, 1),
    _c("llama-2-7b", "half-fp16", "eager", 256, 2),
    _c("llama-2-7b", "half-bf16", "sdpa", 512, 2, method="lora"),
    _c("llama-2-7b", "autocast-bf16", "eager", 512, 1, "full", method="lora"),
    _c("llama-2-7b", "half-bf16", "sdpa", 512, 1, method="freeze"),
    # Mistral-7B: GQA 32/8, SwiGLU 14336
    _c("mistral-7b-v0.1", "half-bf16", "sdpa", 1024, 2, quick=True),
    _c("mistral-7b-v0.1", "autocast-bf16", "eager", 512, 1),
    _c("mistral-7b-v0.1", "half-bf16", "eager", 1024, 1, "full"),
    _c("mistral-7b-v0.1", "fp32", "sdpa", 256, 2),
    # Qwen2.5-7B: GQA 28/4, qkv bias, 152k vocab
    _c("qwen2.5-7b", "half-bf16", "sdpa", 1024, 1),
    _c("qwen2.5-7b", "autocast-bf16", "sdpa", 256, 1, quick=True),
    _c("qwen2.5-7b", "half-bf16", "eager", 256, 2),
    _c("qwen2.5-7b", "half-bf16", "sdpa", 1024, 1, "full"),
    _c("qwen2.5-7b", "half-bf16", "sdpa", 512, 1, method="lora"),
    # Gemma-2-9B: head_dim 256, 4 norms/layer, soft-capping, GeGLU tanh, 256k vocab (eager: SDPA has no softcap)
    _c("gemma-2-9b", "half-bf16", "eager", 256, 2),
    _c("gemma-2-9b", "autocast-bf16", "eager", 256, 1, quick=True),
    _c("gemma-2-9b", "half-bf16", "eager", 512, 1, "full"),
    _c("gemma-2-9b", "half-bf16", "eager", 512, 1, "selective"),
    _c("gemma-2-9b", "fp32", "eager", 128, 1),
    # Phi-3-mini: fused qkv and gate_up, RoPE via cat, sliding window 2047
    _c("phi-3-mini-4k", "half-bf16", "sdpa", 1024, 2),
    _c("phi-3-mini-4k", "autocast-bf16", "eager", 512, 2),
    _c("phi-3-mini-4k", "fp32", "sdpa", 512, 1, "full"),
    _c("phi-3-mini-4k", "autocast-bf16", "sdpa", 128, 1, quick=True),
    _c("phi-3-mini-4k", "half-bf16", "sdpa", 2112, 1),          # past the window: SDPA gets a mask
    # GPT-2 XL: LayerNorm, GELU-new (pow: fp32 under CUDA autocast), dropout 0.1 everywhere, tied
    _c("gpt2-xl", "autocast-bf16", "eager", 1024, 2, quick=True),
    _c("gpt2-xl", "autocast-bf16", "sdpa", 1024, 2),
    _c("gpt2-xl", "half-bf16", "eager", 512, 1),
    _c("gpt2-xl", "fp32", "eager", 512, 2),
    _c("gpt2-xl", "half-bf16", "eager", 1024, 2, "full"),
    _c("gpt2-xl", "half-bf16", "sdpa", 128, 1),
    _c("gpt2-xl", "autocast-bf16", "eager", 512, 1, method="lora"),
    # GPT-NeoX-20B: parallel residual, 25% rotary, fused interleaved qkv, GELU-fast
    _c("gpt-neox-20b", "half-bf16", "sdpa", 1024, 2),
    _c("gpt-neox-20b", "autocast-bf16", "sdpa", 512, 1),
    _c("gpt-neox-20b", "half-bf16", "eager", 512, 1, quick=True),
    _c("gpt-neox-20b", "fp32", "eager", 256, 1),
    _c("gpt-neox-20b", "half-bf16", "sdpa", 1024, 2, "full"),
    # OPT-6.7B: LayerNorm, ReLU 16384, learned positions, dropout 0.1, tied
    _c("opt-6.7b", "half-bf16", "eager", 1024, 2),
    _c("opt-6.7b", "autocast-bf16", "sdpa", 512, 2, quick=True),
    _c("opt-6.7b", "fp32", "eager", 512, 1),
    _c("opt-6.7b", "half-bf16", "sdpa", 1024, 1, "full"),
    # Mixtral-8x7B: MoE top-2 of 8 (grouped_mm experts), GQA
    _c("mixtral-8x7b", "half-bf16", "sdpa", 512, 2),
    _c("mixtral-8x7b", "half-bf16", "eager", 256, 1),
]

# Backward transients (fp32: this CPU has no fast 16-bit GEMM for the backward). 2 layers, full FT. With a real
# vocabulary the loss backward is the peak; vocab_size=1000 hides it to expose the decoder-layer moment.
TEMP_CASES: list[Case] = [
    _c("llama-2-7b", "fp32", "sdpa", 256, 1, quick=True),
    _c("llama-2-7b", "fp32", "eager", 1024, 1),
    _c("llama-2-7b", "fp32", "sdpa", 512, 2, "full"),
    _c("gpt2-xl", "fp32", "eager", 512, 2, quick=True),
    _c("opt-6.7b", "fp32", "sdpa", 512, 1),
    _c("qwen2.5-7b", "fp32", "sdpa", 256, 1),
    _c("gpt-neox-20b", "fp32", "sdpa", 256, 1),
    _c("llama-2-7b", "fp32", "sdpa", 1024, 1, vocab_size=1000),
    _c("llama-2-7b", "fp32", "eager", 1024, 1, vocab_size=1000),
    _c("llama-2-7b", "fp32", "sdpa", 512, 2, "full", vocab_size=1000, quick=True),
    _c("llama-2-7b", "fp32", "eager", 512, 1, "full", vocab_size=1000),
    _c("gpt2-xl", "fp32", "eager", 512, 2, vocab_size=1000),
    _c("gpt2-xl", "fp32", "eager", 512, 1, "selective", vocab_size=1000),
    _c("opt-6.7b", "fp32", "sdpa", 512, 1, vocab_size=1000),
    _c("gpt-neox-20b", "fp32", "sdpa", 256, 1, "full", vocab_size=1000),
]


# Whole training step (fp32, AdamW foreach, 2 layers, real widths): the profiler's peak of a whole second
# step against the estimator's per-GPU total (less the GPU-only overhead: CUDA context, fragmentation).
# Chosen to put the peak at each moment of the step: the optimizer step (short sequences), the loss
# backward (large vocabularies), a layer's backward (eager attention, long sequences) and checkpointing.
STEP_CASES: list[Case] = [
    _c("gpt2-xl", "fp32", "sdpa", 512, 1, quick=True),
    _c("gpt2-xl", "fp32", "eager", 1024, 2),
    _c("qwen2.5-0.5b", "fp32", "sdpa", 512, 2, quick=True),
    _c("qwen2.5-0.5b", "fp32", "eager", 2048, 1),
    _c("llama-3.2-1b", "fp32", "eager", 256, 1, "full"),
    _c("llama-3.2-1b", "fp32", "eager", 2048, 1),
    _c("llama-2-7b", "fp32", "sdpa", 1024, 1),
    _c("opt-1.3b", "fp32", "sdpa", 2048, 2),
    _c("gemma-2-2b", "fp32", "eager", 512, 1),
    _c("phi-3-mini-4k", "fp32", "sdpa", 1024, 1, "full"),
    # a small vocabulary: at 7B width the optimizer step (gradients + foreach temporaries) peaks, unless eager
    # attention at a long sequence puts the peak in the decoder layers' backward
    _c("llama-2-7b", "fp32", "eager", 1024, 1, vocab_size=1000),
    _c("llama-2-7b", "fp32", "eager", 2048, 1, vocab_size=1000),
    _c("llama-2-7b", "fp32", "sdpa", 1024, 2, "full", vocab_size=1000),
]


def architecture(case: Case) -> Architecture:
    cfg = {**measure.catalog_config(case.model), **dict(case.overrides)}
    return architecture_from_hf_config(cfg, source=case.model)


def training_spec(case: Case) -> TrainingSpec:
    return TrainingSpec(seq_len=case.seq, micro_batch_size=case.batch, method=case.method,
                        activation_checkpointing=case.ckpt, attention=case.attn,
                        lora=LoraSpec(rank=16, target_modules=("all-linear",)))


def layers_that_save(arch: Architecture, tr: TrainingSpec) -> int:
    """Decoder layers whose saved tensors the full model holds (frozen layers in front save nothing)."""
    if tr.method == "freeze" and tr.activation_checkpointing != "full":
        return min(tr.freeze_trainable_layers, arch.num_layers)
    return arch.num_layers


@dataclass
class Row:
    case: Case
    measured: int
    estimated: int
    per_layer_measured: int
    per_layer_estimated: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> float:
        return (self.estimated - self.measured) / self.measured


# Measurements are ground truth, independent of the estimator: ``--cache FILE`` keeps them (by case label)
# so that a rerun after an estimator change re-estimates without re-measuring.
_CACHE: dict[str, dict[str, int]] = {}
_CACHE_PATH: Path | None = None


def _measured(kind: str, label: str, fn) -> dict[str, int]:
    """``fn()``'s measurement for the case ``label``, from the cache when present (then stored back)."""
    import json

    key = f"{kind}: {label}"
    if key not in _CACHE:
        _CACHE[key] = fn()
        if _CACHE_PATH is not None:
            _CACHE_PATH.write_text(json.dumps(_CACHE, indent=1, sort_keys=True), encoding="utf-8")
    return _CACHE[key]


def run_case(case: Case) -> Row:
    t0 = time.time()
    arch = architecture(case)
    tr = training_spec(case)
    cfg = {**measure.catalog_config(case.model), **dict(case.overrides)}

    def saved() -> dict[str, int]:
        m = measure.measure_saved(cfg, seq_len=case.seq, batch=case.batch, mode=case.mode, attn=case.attn,
                                  checkpointing=case.ckpt, method=case.method, lora_rank=tr.lora.rank)
        return {"fixed": m.fixed, "per_layer": m.per_layer}

    m = _measured("saved", case.label, saved)
    est = activation_memory(arch, tr, case.mode)
    measured = m["fixed"] + layers_that_save(arch, tr) * m["per_layer"]
    gc.collect()
    return Row(case, measured, est.activations, m["per_layer"], est.breakdown["per_layer"], time.time() - t0)


def run_temp_case(case: Case) -> Row:
    """Backward transient above the end-of-forward level; estimate = temporaries - logits tensor held
    (the held logits are already allocated at the end of the forward)."""
    t0 = time.time()
    arch = architecture(case).model_copy(update={"num_layers": 2})
    tr = training_spec(case)
    cfg = {**measure.catalog_config(case.model), **dict(case.overrides)}
    def peak() -> dict[str, int]:
        r = measure.measure_backward_peak(cfg, seq_len=case.seq, batch=case.batch, mode=case.mode,
                                          attn=case.attn, checkpointing=case.ckpt)
        return {"transient": r.transient, "forward_level": r.forward_level, "weight_copies": r.weight_copies}

    r = _measured("backward", case.label, peak)
    est = activation_memory(arch, tr, case.mode)
    held = est.breakdown["info:logits_output_held"]
    fwd_est = est.activations + held + r["weight_copies"]
    row = Row(case, r["transient"], est.temporaries - held, r["forward_level"], fwd_est, time.time() - t0)
    gc.collect()
    return row


def step_estimate(case: Case, num_layers: int = 2):
    """The estimator's whole answer for a case: ``advisor.api.estimate`` on one GPU (single strategy, AdamW)."""
    from advisor.api import estimate
    from advisor.catalog.models import ResolvedModel

    arch = architecture(case).model_copy(update={"num_layers": num_layers})
    model = ResolvedModel(name=case.model, architecture=arch, source="config", note="")
    precision = {"fp32": "fp32", "autocast-bf16": "bf16", "autocast-fp16": "fp16"}[case.mode]
    tr = training_spec(case)
    return estimate(model, gpus=1, vram=1024, seq_len=tr.seq_len, micro_batch=tr.micro_batch_size,
                    precision=precision, optimizer="adamw", method=tr.method, lora_rank=tr.lora.rank,
                    lora_targets=tr.lora.target_modules, checkpointing=tr.activation_checkpointing,
                    attention=tr.attention, strategy="single")


def run_step_case(case: Case) -> Row:
    """Peak of a whole second training step (parameters + Adam states + everything the step allocates)
    against the estimator's ``per_gpu.total`` minus its GPU-only overhead terms."""
    t0 = time.time()
    cfg = {**measure.catalog_config(case.model), **dict(case.overrides)}

    def step() -> dict[str, int]:
        r = measure.measure_step_peak(cfg, num_layers=2, seq_len=case.seq, batch=case.batch, mode=case.mode,
                                      attn=case.attn, checkpointing=case.ckpt)
        return {"params": r.params, "adam_states": r.adam_states, "peak": r.peak}

    r = _measured("step", case.label, step)
    g = step_estimate(case).per_gpu
    measured = r["params"] + r["adam_states"] + r["peak"]
    row = Row(case, measured, g.total - g.overhead, r["params"], g.parameters, time.time() - t0,
              extra={"moment": g.peak_moment or "all terms added", "overlap": g.phase_overlap,
                     "states_measured": r["params"] + r["adam_states"],
                     "states_estimated": g.parameters + g.optimizer_states})
    gc.collect()
    return row


def run_distributed() -> list[dict[str, Any]]:
    """DDP and DeepSpeed ZeRO steps in 2 real CPU processes (``benchmarks/ddp_step.py``,
    ``benchmarks/zero_step.py``): rank 0's whole-step peak against ``per_gpu.total - overhead``."""
    import ddp_step
    import zero_step

    rows = []
    for attn, seq, vocab in ddp_step.CASES:
        label = f"DDP small llama fp32 {attn} s={seq} V={vocab}"
        m = _measured("ddp", label, lambda: ddp_step.measure_case(attn, seq, vocab))
        rows.append({**ddp_step.run_case(attn, seq, vocab, m), "label": label})
    for stage, seq, vocab in zero_step.CASES:
        label = f"ZeRO-{stage} small llama bf16 sdpa s={seq} V={vocab}"
        m = _measured("zero", label, lambda: zero_step.measure_case(stage, seq, vocab))
        rows.append({**zero_step.run_case(stage, seq, vocab, m), "label": label, "moment": "all terms added"})
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f}"


def summarize(rows: list[Row]) -> str:
    errs = [r.error for r in rows]
    worst_low = min(rows, key=lambda r: r.error)
    worst_high = max(rows, key=lambda r: r.error)
    return (f"{len(rows)} cases: median |error| {statistics.median(abs(e) for e in errs) * 100:.2f}%, "
            f"worst low {worst_low.error * 100:+.2f}% ({worst_low.case.label}), "
            f"worst high {worst_high.error * 100:+.2f}% ({worst_high.case.label}); "
            f"in band [-3%, +10%]: {sum(-0.03 <= e <= 0.10 for e in errs)}/{len(errs)}")


def table(rows: list[Row], what: str = "activations") -> str:
    head = (f"| case | measured GiB | estimated GiB | error | per-layer measured MiB | per-layer estimated MiB |\n"
            f"|---|---:|---:|---:|---:|---:|\n") if what == "activations" else (
            "| case | measured transient MiB | estimated MiB | error | forward level measured MiB "
            "| estimated MiB |\n|---|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        if what == "activations":
            lines.append(f"| {r.case.label} | {_gib(r.measured)} | {_gib(r.estimated)} | {r.error * 100:+.2f}% "
                         f"| {r.per_layer_measured / 2**20:.1f} | {r.per_layer_estimated / 2**20:.1f} |")
        else:
            lines.append(f"| {r.case.label} | {r.measured / 2**20:.1f} | {r.estimated / 2**20:.1f} "
                         f"| {r.error * 100:+.2f}% | {r.per_layer_measured / 2**20:.1f} "
                         f"| {r.per_layer_estimated / 2**20:.1f} |")
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="run the quick subset")
    ap.add_argument("--only", default="", help="substring filter on the case label")
    ap.add_argument("--temporaries", action="store_true", help="also check backward transients")
    ap.add_argument("--step", action="store_true", help="also compare whole-training-step peaks")
    ap.add_argument("--write", metavar="PATH", help="write the tables (markdown) to PATH")
    ap.add_argument("--distributed", action="store_true",
                    help="also compare DDP and ZeRO steps in 2 CPU processes (torchrun)")
    ap.add_argument("--skip-saved", action="store_true", help="skip the saved-bytes cases (temporaries/step only)")
    ap.add_argument("--cache", metavar="JSON", help="keep measurements in JSON and reuse them (by case label)")
    a = ap.parse_args(argv)
    if a.cache:
        import json

        global _CACHE_PATH
        _CACHE_PATH = Path(a.cache)
        if _CACHE_PATH.exists():
            _CACHE.update(json.loads(_CACHE_PATH.read_text(encoding="utf-8")))

    def pick(cases: list[Case]) -> list[Case]:
        return [c for c in cases if (c.quick or not a.quick) and a.only in c.label]

    command = "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[Row] = []
    print("case | measured | estimated | error%")
    for case in ([] if a.skip_saved else pick(CASES)):
        r = run_case(case)
        rows.append(r)
        print(f"{case.label} | {r.measured:,} | {r.estimated:,} | {r.error * 100:+.2f}%   "
              f"(per layer {r.per_layer_measured:,} vs {r.per_layer_estimated:,}; {r.seconds:.0f}s)", flush=True)
    summary = summarize(rows) if rows else "no cases"
    print("SUMMARY:", summary)

    temp_rows: list[Row] = []
    if a.temporaries:
        print("\nbackward transient: case | measured | estimated | error%")
        for case in pick(TEMP_CASES):
            r = run_temp_case(case)
            temp_rows.append(r)
            print(f"{case.label} | {r.measured:,} | {r.estimated:,} | {r.error * 100:+.2f}%   (forward level "
                  f"{r.per_layer_measured:,} vs {r.per_layer_estimated:,}; {r.seconds:.0f}s)", flush=True)
        if temp_rows:
            print("TEMPORARIES:", summarize(temp_rows))

    step_rows: list[Row] = []
    if a.step:
        print("\nwhole step: case | measured | estimated (total - overhead) | error% | moment")
        for case in pick(STEP_CASES):
            r = run_step_case(case)
            step_rows.append(r)
            print(f"{case.label} | {r.measured:,} | {r.estimated:,} | {r.error * 100:+.2f}% | "
                  f"{r.extra['moment']} (overlap {r.extra['overlap']:,}; parameters {r.per_layer_measured:,} vs "
                  f"{r.per_layer_estimated:,}; {r.seconds:.0f}s)", flush=True)
        if step_rows:
            print("STEP:", summarize(step_rows))

    dist_rows: list[dict[str, Any]] = []
    if a.distributed:
        print("\ndistributed step (rank 0): case | measured | estimated | error%")
        for r in run_distributed():
            dist_rows.append(r)
            print(f"{r['label']} | {r['measured']:,} | {r['estimated']:,} | {r['error'] * 100:+.2f}% | "
                  f"{r['moment']}", flush=True)

    if a.write:
        write_doc(Path(a.write), command, rows, summary, temp_rows, step_rows, dist_rows)
    return 0


def write_doc(path: Path, command: str, rows: list[Row], summary: str, temp_rows: list[Row],
              step_rows: list[Row] | None = None, dist_rows: list[dict[str, Any]] | None = None) -> None:
    import platform

    import torch
    import transformers

    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "# Memory estimate accuracy",
        "",
        f"Generated by `{command.strip()}` on {date} (torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {platform.machine()} CPU). Do not edit by hand: rerun the command.",
        "",
        "**Measured**: bytes autograd saves for backward in one training forward with labels, recorded with "
        "`torch.autograd.graph.saved_tensors_hooks`, deduplicated by storage, parameters and autocast weight "
        "copies excluded (`benchmarks/measure.py`); real `transformers` models built from the catalog configs "
        "at their real widths with 1 and 2 layers, extrapolated to the full depth "
        "(`fixed + num_layers * per_layer`). The CPU run reproduces CUDA's autocast op lists and fused "
        "dropout kernel (see the harness docstring). **Estimated**: `advisor.memory.activations`, from the "
        "architecture alone. Error = (estimated - measured) / measured; the target band is -3%..+10%.",
        "",
        f"**Summary**: {summary}",
        "",
        table(rows),
    ]
    if temp_rows:
        parts += [
            "",
            "## Backward transients",
            "",
            "Peak during backward above the level the forward left (2 layers, full fine-tuning, fp32; the caller "
            "holds the model output). Backward is `torch.autograd.grad(loss, first_layer_input)`, so parameter "
            "gradients (model states) are not formed. Estimated = `temporaries` minus the held logits "
            "(already allocated when the forward ends): the larger of the loss moment and the last decoder "
            "layer's moment, both from the estimator's op-by-op replay of the backward. Rows with "
            "`vocab_size=1000` hide the loss moment to show the layer's. Dropout backward runs as CUDA's fused "
            "kernel (one allocation; the CPU kernel adds a cast of the mask). The forward level columns check "
            "activations + held logits + autocast weight copies against the allocator.",
            "",
            f"**Summary**: {summarize(temp_rows)}",
            "",
            table(temp_rows, "temporaries"),
        ]
    if step_rows:
        lines = [f"| {r.case.label} | {_gib(r.measured)} | {_gib(r.estimated)} | {r.error * 100:+.2f}% "
                 f"| {r.extra['moment']} | {_gib(r.extra['overlap'])} | {_gib(r.extra['states_measured'])} "
                 f"| {_gib(r.extra['states_estimated'])} |" for r in step_rows]
        parts += [
            "",
            "## Whole training step",
            "",
            "Peak allocated bytes of a whole training step (the second one: forward with labels, backward, "
            "`torch.optim.AdamW(foreach=True).step()`, `zero_grad(set_to_none=True)`; the caller holds the "
            "model output until after the step, as accelerate's loop does), from the profiler's memory "
            "timeline (`measure_step_peak`), plus the parameters and Adam states that exist before it. "
            "2 decoder layers at real widths, fp32, one process. Estimated = dsadvise's `per_gpu.total` for "
            "the same model and settings (`single` strategy) minus its GPU-only overhead (CUDA context, "
            "allocator fragmentation). The peak moment and the bytes that the phase model takes off the "
            "plain sum (gradients formed while backward frees activations, `advisor/memory/peak.py`) are "
            "shown.",
            "",
            f"**Summary**: {summarize(step_rows)}",
            "",
            "| case | measured GiB | estimated GiB | error | peak moment | not alive together GiB "
            "| params + Adam measured GiB | estimated GiB |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
            *lines,
        ]
    if dist_rows:
        errs = [r["error"] for r in dist_rows]
        lines = [f"| {r['label']} | {r['world']} | {r['measured'] / 2**20:.1f} | {r['estimated'] / 2**20:.1f} "
                 f"| {r['error'] * 100:+.2f}% | {r['moment']} |" for r in dist_rows]
        parts += [
            "",
            "## Distributed training steps (2 CPU processes)",
            "",
            "Rank 0's whole-step peak in real multi-process runs (`torchrun --nproc_per_node 2`, gloo): "
            "`benchmarks/ddp_step.py` (torch DDP, fp32, AdamW foreach; DDP rebuilds its buckets in step 2, "
            "so the profiled step holds them) and `benchmarks/zero_step.py` (`deepspeed.initialize` with "
            "dsadvise's own rendered `ds_config.json`, bf16; the tensors alive before step 2 by a `gc` scan "
            "plus the profiler's peak of step 2; an in-place chunked Adam stands in for FusedAdam, which the "
            "CPU cannot build). Estimated = `per_gpu.total - overhead` for 2 GPUs. Small Llama: h=512, "
            "1408 intermediate, 8 heads (2 layers for DDP, 4 for ZeRO).",
            "",
            f"**Summary**: {len(errs)} cases: median |error| {statistics.median(abs(e) for e in errs) * 100:.2f}%, "
            f"worst low {min(errs) * 100:+.2f}%, worst high {max(errs) * 100:+.2f}%; in band [-3%, +10%]: "
            f"{sum(-0.03 <= e <= 0.10 for e in errs)}/{len(errs)}",
            "",
            "| case | world | measured MiB | estimated MiB | error | peak moment |",
            "|---|---:|---:|---:|---:|---|",
            *lines,
        ]
    parts += ["", _NOTES]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {path}")


_NOTES = """## What is and is not modeled

* Exact per-op accounting of the transformers v5 code paths for llama, mistral, qwen2/qwen3, gemma/gemma2,
  phi3, gpt2, opt, gpt_neox, mixtral (and falcon/bloom through the generic LayerNorm/fused-QKV path, not
  measured here): norms with their fp32 upcasts, RoPE cos/sin, GQA (SDPA `enable_gqa`, eager `repeat_kv`),
  fused-QKV views keeping the whole projection alive, MLP activations op by op (`gelu_new`/`gelu_fast`
  chains, fp32 under CUDA autocast because of `pow`), dropout masks (1 byte, CUDA `native_dropout`),
  soft-capping, MoE routing (grouped_mm experts), the fp32 `log_softmax` of the loss, labels.
* LayerNorm statistics are counted in fp32 (CUDA); the CPU kernel keeps them in bf16, so half-precision
  LayerNorm models measure a few bytes per token lower (+0.01%).
* Full checkpointing also counts the RoPE cos/sin and, for eager attention, the 4-D causal mask that the
  checkpointed layers' kwargs keep alive (not saved tensors, so not in the measurement: +0.1% at most).
* SDPA attention dropout: the CPU has no fused SDPA-dropout kernel, so SDPA cases run with attention
  dropout 0; CUDA's flash/memory-efficient kernels save only a Philox seed for it, which is what the estimate
  assumes. Flash attention 2 is accounted like SDPA's flash kernel.
* fp32 with SDPA on a GPU uses the memory-efficient kernel (no flash for fp32); with GQA it may fall back to
  the math kernel, which saves the b*h*s^2 probabilities: not modeled (fp32 training of GQA models is rare).
* LoRA/QLoRA: peft is not installed; the harness wraps linears exactly as `peft.tuners.lora.Linear.forward`
  does (fp32 adapters, input cast to fp32). bitsandbytes is not installed: QLoRA's 4-bit base is modeled as
  a frozen base that saves no input, plus one dequantized weight as a temporary.
* Selective checkpointing: transformers has none; the harness checkpoints the attention interface call
  (Megatron's selective recompute of the core attention). With SDPA/flash it equals no checkpointing.
* Temporaries: the estimator replays the backward node by node in autograd's order (descending sequence
  number): each node allocates its inputs' gradients (or hands on a view of the incoming one), plus its
  formula's temporaries (`pow`: two, `mean`: an expanded copy, `slice`: a zero-filled base, a broadcast
  input's gradient reduced from full size), then frees its saved tensors (once no other node holds the
  storage) and its incoming gradient; gradients meeting at a tensor are accumulated in place or out of
  place by autograd's `InputBuffer` rule (out of place when the old one is a view or is shared); a
  checkpointed layer (full) or attention core (selective) rebuilds its saved set when its first node
  unpacks a tensor. The loss moment (two fp32 N x V gradients plus the held logits) and the last layer's
  moment are both replayed; rows with `vocab_size=1000` hide the loss moment to show the layer's.
  Workspaces internal to fused attention kernels (SDPA/flash backward) are not modeled.
* Dropout backward: CUDA's `native_dropout_backward` is one fused kernel; the CPU kernel first casts the bool
  mask to the gradient's dtype (one more gradient-sized buffer), so the transient harness swaps in a
  one-allocation CPU equivalent.
* The half-precision (bf16/fp16) backward is not measured: this CPU has no fast 16-bit GEMM (minutes per
  7B-width matmul). The replay applies the same accounting with the dtypes' sizes (gradients in the
  dtype of the tensor they belong to, the engine's casts where dtypes change).
* Mixtral autocast/fp32 are not measured (one 8-expert layer is 5.6 GB in fp32); Falcon and BLOOM are
  estimated through the generic LayerNorm/fused-QKV/parallel paths and not measured.
"""


if __name__ == "__main__":
    raise SystemExit(main())
