"""``--task infer``: one model replica per GPU (``accelerate launch``) or one process sharding the layers
over a node's GPUs (``device_map="auto"``), each with the largest batch that fits.

Replicas compute in parallel, so their throughput scales with the GPUs; ``device_map="auto"`` runs the
layers one GPU after the other (a naive pipeline), so it serves one batch at a time per node but fits a
model no single GPU holds. The estimator's ``Estimate.inference`` has the memory of both layouts.
"""

from __future__ import annotations

import time

from ..memory.core import estimate_memory
from ..memory.inference import weight_bytes_for_inference
from ..formatting import fmt_bytes
from ..estimate_result import Estimate
from ..ruleengine import apply_rules
from ..specs import StrategySpec
from . import facts as F
from .problem import Problem
from .recommendation import Alternative, InferenceChoice, Recommendation, RuleFired, StepTimeInfo, StrategyRef
from .search import narrow
from .step_time import efficiency, inference_speed

LAYOUTS = ("replica-per-gpu", "device-map-auto")


def search_inference(p: Problem, t0: float) -> Recommendation:
    """The inference recommendation: the layout with the highest throughput that fits, and its batch size."""
    allowed, fired, _blame, advice, _reject = narrow(p)
    precision = p.precision_fixed or next(x for x in ("bf16", "fp16")
                                          if x in allowed.get("precision", F.DOMAINS["precision"]))
    strategy = StrategySpec(backend="single" if p.hw.world_size == 1 else "ddp")
    vals = p.micro.values
    counter = {"n": 0}
    cache: dict[tuple, Estimate] = {}

    def est(method: str, batch: int) -> Estimate:
        key = (method, batch)
        if key not in cache:
            t = p.template.model_copy(update={"micro_batch_size": batch, "precision": precision, "method": method})
            cache[key] = estimate_memory(p.model, p.hw, t, strategy)
            counter["n"] += 1
        return cache[key]

    def layout_fits(e: Estimate, name: str) -> tuple[bool, int]:
        lay = next((x for x in e.inference if x.layout == name), None)
        if lay is None:
            return False, 0
        return lay.total <= p.usable_bytes, lay.total

    results = []   # (throughput, method, layout, batch, estimate, step seconds)
    failures: dict[str, str] = {}
    for method in p.methods:
        for name in LAYOUTS:
            if name == "device-map-auto" and p.hw.gpus_per_node == 1:
                continue
            ok, total = layout_fits(est(method, vals[0]), name)
            if not ok:
                failures[f"{name} ({method})"] = (f"does not fit: needs {fmt_bytes(total)} per GPU, "
                                                  f"{fmt_bytes(p.usable_bytes)} usable (batch {vals[0]})")
                continue
            lo, hi = 0, len(vals)
            if layout_fits(est(method, vals[-1]), name)[0]:
                lo = len(vals) - 1
            else:
                hi = len(vals) - 1
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if layout_fits(est(method, vals[mid]), name)[0]:
                        lo = mid
                    else:
                        hi = mid
            batch = vals[lo]
            weights = weight_bytes_for_inference(p.model, p.counts, p.template.model_copy(update={"method": method}))
            speed = inference_speed(p.arch, p.counts, p.hw, p.gpu, name, precision=precision, method=method,
                                    batch=batch, seq_len=p.template.seq_len, weight_bytes=weights,
                                    attention=p.template.attention, profile=p.profile)
            copies = speed.copies
            throughput = speed.prefill_tokens_per_second
            secs = copies * batch * p.template.seq_len / throughput
            results.append((throughput, method, name, batch, est(method, batch), secs, copies, speed))
        if results:
            break
    ms = (time.perf_counter() - t0) * 1000
    fired_json = [RuleFired.of(f) for f in fired]
    if not results:
        return Recommendation(task="infer", found=False, recommendation=None, estimate=None, step_time=None,
                              reasons=["nothing fits: " + "; ".join(f"{k}: {v}" for k, v in failures.items())],
                              advice=advice, assumptions=list(p.assumptions),
                              alternatives=[], rules_fired=fired_json, candidates_evaluated=counter["n"],
                              search_ms=ms)
    results.sort(key=lambda r: -r[0])
    throughput, method, name, batch, e, secs, copies, speed = results[0]
    launch = (f"accelerate launch --num_processes {p.hw.gpus_per_node} infer.py" if name == "replica-per-gpu"
              else "python infer.py  # from_pretrained(..., device_map=\"auto\")")
    if p.hw.nodes > 1:
        launch += f"  (on each of the {p.hw.nodes} nodes)"
    rec = InferenceChoice(**{**e.strategy.model_dump(), "name": name}, layout=name, batch_size=batch,
                          processes=copies, device_map="auto" if name == "device-map-auto" else None,
                          launcher=launch)
    reasons = [f"{name}: the highest throughput that fits, about {throughput:,.0f} prefill tokens/s "
               f"({copies} x batch {batch} x {p.template.seq_len} tokens every {secs:.3f} s) and "
               f"{speed.decode_tokens_per_second:,.0f} generated tokens/s (each decode step reads "
               f"{fmt_bytes(speed.bytes_per_decode_step)} of weights and KV cache per copy)"]
    if name == "replica-per-gpu":
        reasons.append("one replica per GPU: every GPU serves its own batches, so throughput scales with the GPUs")
    else:
        reasons.append("device_map=\"auto\": no single GPU holds the model, so one process splits the layers over "
                       "the node's GPUs; they compute one after the other, so a split copy is no faster than one GPU "
                       "holding it would be")
    reasons.append(f"batch {batch}: the largest that fits" if batch != vals[-1] else
                   f"batch {batch}: the largest allowed")
    if method == "qlora":
        reasons.append("4-bit (NF4) weights: the 16-bit model does not fit")
    alts = []
    for thr, m2, n2, b2, e2, s2, c2, _sp in results[1:]:
        lay = next(x for x in e2.inference if x.layout == n2)
        alts.append(Alternative(strategy=StrategyRef(**{**e2.strategy.model_dump(mode="json"), "name": n2,
                                                          "micro_batch_size": b2}),
                                fits=True, step_time_seconds=s2, tokens_per_second=thr,
                                rejected_because=f"lower throughput: {thr:,.0f} tokens/s vs {throughput:,.0f} "
                                                 f"({fmt_bytes(lay.total)} per GPU at batch {b2})"))
    for k, v in failures.items():
        alts.append(Alternative(strategy=StrategyRef(name=k), fits=False, step_time_seconds=None, rejected_because=v))
    facts = {**p.facts, "candidate.precision": precision, "candidate.method": method}
    extra = apply_rules([r for r in p.stages[F.CONFIG] if r.effect == "advise"
                         and r.facts <= set(facts)], facts, None, F.DOMAINS)
    advice = advice + [t for _, t in extra.advice]
    peak = p.rates.peak(precision) if p.rates else 1.0
    eff = efficiency(p.rates, precision, p.arch.hidden_size, batch * p.template.seq_len) if p.rates else 0.0
    step = StepTimeInfo(seconds=secs, compute_seconds=secs, communication_seconds=0.0, offload_seconds=0.0,
                        tokens_per_second=throughput, samples_per_second=copies * batch / secs,
                        compute_efficiency=eff,
                        mfu=2.0 * p.counts.active_per_token * throughput / (p.hw.world_size * peak),
                        gpu_profile=p.gpu.name, tokens_per_second_per_gpu=throughput / p.hw.world_size,
                        rates=p.rates.source if p.rates else "")
    return Recommendation(task="infer", found=True, recommendation=rec, estimate=e, step_time=step,
                          reasons=reasons, advice=advice, assumptions=list(p.assumptions), alternatives=alts,
                          rules_fired=fired_json + [RuleFired.of(f) for f in extra.fired],
                          candidates_evaluated=counter["n"], search_ms=(time.perf_counter() - t0) * 1000)

