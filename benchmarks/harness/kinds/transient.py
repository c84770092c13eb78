"""Backward transient: the peak during backward above the level the forward left, from the allocator.

2 decoder layers (the second sharing the first's parameters), full fine-tuning, fp32 (this CPU has no fast
16-bit GEMM for the backward). The backward is ``torch.autograd.grad(loss, first_layer_input)``: every
activation gradient is computed as in training, but no parameter gradient is formed (those are model
states, counted elsewhere). The caller keeps the model output (and so the logits) alive during backward,
as ``outputs = model(**batch)`` does. Peak and level come from the profiler's memory timeline.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.harness.cases import Case, model_label
from benchmarks.harness.kinds import Row
from benchmarks.harness.kinds.saved import _Recorder
from benchmarks.harness.models import (SELECTIVE, add_shared_layer, build_model, layer_list, register_selective,
                                       sdpa_no_attn_dropout)
from benchmarks.harness.profiling import live_curve, mark, profiled, window_peak
from benchmarks.harness.semantics import Semantics, autocast, cuda_semantics

TITLE = "Backward transients"
ORDER = 20
UNIT = "MiB"
SOURCES = ("semantics", "models", "profiling", "kinds/saved")
COLUMNS = ("forward level measured MiB", "estimated MiB")
DESCRIPTION = (
    "Peak during backward above the level the forward left (2 layers, full fine-tuning, fp32; the caller "
    "holds the model output). Backward is `torch.autograd.grad(loss, first_layer_input)`, so parameter "
    "gradients (model states) are not formed. Estimated = `temporaries` minus the held logits (already "
    "allocated when the forward ends): the larger of the loss moment and the last decoder layer's moment, "
    "both from the estimator's op-by-op replay of the backward. Rows with `vocab_size=1000` hide the loss "
    "moment to show the layer's. The forward level columns check activations + held logits + autocast "
    "weight copies against the allocator.")


@dataclass
class BackwardPeak:
    forward_level: int   # bytes allocated at the end of the forward above the level before it
    transient: int       # peak during backward above the end-of-forward level
    weight_copies: int   # autocast weight copies saved (part of forward_level)
    logits_held: int
    semantics: Semantics


def measure_backward_peak(cfg: dict[str, Any], *, seq_len: int, batch: int = 1, mode: str = "fp32",
                          attn: str = "sdpa", checkpointing: str = "none", seed: int = 0,
                          **overrides: Any) -> BackwardPeak:
    """Transient memory (bytes) of the backward pass on top of what the forward left allocated (module doc),
    under :func:`cuda_semantics`."""
    if attn == "sdpa":
        overrides = {**sdpa_no_attn_dropout(cfg), **overrides}
    impl = attn
    if checkpointing == "selective" and attn == "eager":
        register_selective()
        impl = SELECTIVE
    model = build_model(cfg, attn=impl, mode=mode, seed=seed, **overrides)
    add_shared_layer(model)
    if checkpointing == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g)
    captured: list[torch.Tensor] = []
    # the first decoder layer's input: saved by the layer anyway, so capturing it keeps nothing extra alive
    hook = layer_list(model)[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    rec = _Recorder(model)
    gc.collect()
    with cuda_semantics(mode) as sem:
        with profiled() as prof:
            mark()
            with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), autocast(mode):
                out = model(input_ids=ids, labels=ids)
            mark()
            torch.autograd.grad(out.loss, captured[:1])
            mark()
    hook.remove()
    logits_held = out.logits.untyped_storage().nbytes()
    curve, marks = live_curve(prof)
    base, _ = window_peak(curve, marks, 0)
    level, peak = window_peak(curve, marks, 1)
    snap = rec.snapshot()
    del out, model, captured
    gc.collect()
    return BackwardPeak(forward_level=level - base, transient=peak - level, weight_copies=snap.weight_copies,
                        logits_held=logits_held, semantics=sem)


label = model_label


def measure(case: Case) -> dict[str, Any]:
    """``{"transient", "forward_level", "weight_copies", "logits_held", "cuda_semantics"}`` (bytes)."""
    s = case.settings
    r = measure_backward_peak(case.config(), seq_len=s["seq"], batch=s["batch"], mode=s["mode"], attn=s["attn"],
                              checkpointing=s.get("ckpt", "none"))
    return {"transient": r.transient, "forward_level": r.forward_level, "weight_copies": r.weight_copies,
            "logits_held": r.logits_held, "cuda_semantics": r.semantics.record()}


def compare(case: Case, measured: dict[str, Any]) -> Row:
    """Transient against ``temporaries - held logits``; forward level against activations + held logits +
    the measured autocast weight copies (2 layers)."""
    from advisor.memory.activations import activation_memory

    from benchmarks.harness.estimates import architecture, training_spec

    est = activation_memory(architecture(case, 2), training_spec(case), case.settings["mode"])
    held = est.breakdown["info:logits_output_held"]
    fwd_est = est.activations + held + measured["weight_copies"]
    return Row(case, measured["transient"], est.temporaries - held,
               [f"{measured['forward_level'] / 2**20:.1f}", f"{fwd_est / 2**20:.1f}"])
