"""Whole training step: peak allocated bytes of a real second step (forward, backward, AdamW), one process.

``num_layers`` decoder layers at real widths (no parameter sharing), AdamW ``foreach=True``,
``zero_grad(set_to_none=True)``; the caller holds the model output until after the optimizer step, as
accelerate's loop does. The first step allocates the optimizer states; the second one is profiled. Measured
= parameters + Adam states (alive before the step) + the profiler's peak of the step above its start.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.harness.cases import Case, model_label
from benchmarks.harness.kinds import Row
from benchmarks.harness.models import instantiate, make_config, sdpa_no_attn_dropout
from benchmarks.harness.profiling import live_curve, mark, profiled, window_peak
from benchmarks.harness.semantics import Semantics, autocast, cuda_semantics, mode_dtypes

TITLE = "Whole training step"
ORDER = 30
UNIT = "GiB"
SOURCES = ("semantics", "models", "profiling")
COLUMNS = ("peak moment", "not alive together GiB", "params + Adam measured GiB", "estimated GiB")
DESCRIPTION = (
    "Peak allocated bytes of a whole training step (the second one: forward with labels, backward, "
    "`torch.optim.AdamW(foreach=True).step()`, `zero_grad(set_to_none=True)`; the caller holds the model "
    "output until after the step, as accelerate's loop does), from the profiler's memory timeline, plus the "
    "parameters and Adam states that exist before it. 2 decoder layers at real widths, fp32, one process. "
    "Estimated = dsadvise's `per_gpu.total` for the same model and settings (`single` strategy) minus its "
    "GPU-only overhead (CUDA context, allocator fragmentation). The peak moment and the bytes that the phase "
    "model takes off the plain sum (gradients formed while backward frees activations, "
    "`advisor/memory/peak.py`) are shown.")


@dataclass
class StepPeak:
    peak: int          # peak bytes allocated during step 2 (forward + backward + AdamW step) above its start
    baseline: int      # bytes allocated inside the profiled window before step 2 (0: params etc. predate it)
    params: int
    adam_states: int
    semantics: Semantics


def measure_step_peak(cfg: dict[str, Any], *, num_layers: int = 2, seq_len: int = 128, batch: int = 1,
                      mode: str = "fp32", attn: str = "sdpa", checkpointing: str = "none",
                      seed: int = 0, **overrides: Any) -> StepPeak:
    """Peak CPU-allocator bytes of the second full training step (module doc), under :func:`cuda_semantics`."""
    if attn == "sdpa":
        overrides = {**sdpa_no_attn_dropout(cfg), **overrides}
    wdtype, _ = mode_dtypes(mode)
    config = make_config(cfg, attn, num_layers, **overrides)
    model = instantiate(config, attn, wdtype, seed)
    if checkpointing == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len))

    def step():
        with autocast(mode):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()                      # the caller's output (and its logits) is still alive, as in
        opt.zero_grad(set_to_none=True)  # accelerate's loop: outputs = model(**batch); ...; optimizer.step()
        del out

    with cuda_semantics(mode) as sem:
        step()
        gc.collect()
        with profiled() as prof:
            mark()
            step()
            mark()
    curve, marks = live_curve(prof)
    base, peak = window_peak(curve, marks)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    states = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor) and t.dim() > 0)
    del model, opt
    gc.collect()
    return StepPeak(peak=peak - base, baseline=base, params=params, adam_states=states, semantics=sem)


label = model_label


def measure(case: Case) -> dict[str, Any]:
    """``{"params", "adam_states", "peak", "cuda_semantics"}`` (bytes) of the case's second step."""
    s = case.settings
    r = measure_step_peak(case.config(), num_layers=s.get("layers", 2), seq_len=s["seq"], batch=s["batch"],
                          mode=s["mode"], attn=s["attn"], checkpointing=s.get("ckpt", "none"))
    return {"params": r.params, "adam_states": r.adam_states, "peak": r.peak,
            "cuda_semantics": r.semantics.record()}


def compare(case: Case, measured: dict[str, Any]) -> Row:
    """Parameters + Adam states + step peak against ``per_gpu.total - per_gpu.overhead`` (``single``)."""
    from benchmarks.harness.estimates import estimate_for

    g = estimate_for(case, gpus=1, strategy="single", num_layers=case.settings.get("layers", 2)).per_gpu
    states = measured["params"] + measured["adam_states"]
    gib = 2**30
    return Row(case, states + measured["peak"], g.total - g.overhead,
               [g.peak_moment or "all terms added", f"{g.phase_overlap / gib:.3f}", f"{states / gib:.3f}",
                f"{(g.parameters + g.optimizer_states) / gib:.3f}"],
               info={"moment": g.peak_moment, "overlap": g.phase_overlap})
