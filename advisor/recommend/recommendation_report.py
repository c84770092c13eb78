"""The readable ``dsadvise recommend`` report: the choice, a per-GPU bar, step time, why, runners-up."""

from __future__ import annotations

from ..formatting import BAR_LEGEND, bar, fmt_bytes, fmt_count
from .recommendation import Recommendation, StrategyRef, TrainingChoice

MAX_ALTERNATIVES = 10


def _strategy_label(s: TrainingChoice | StrategyRef) -> str:
    fields = s.model_dump()
    out = fields.get("name", "?")
    off = [f"{k.removeprefix('offload_')}->{v}" for k, v in fields.items() if k.startswith("offload_") and v != "none"]
    # issue 15: the parallel layout (tp/sp/cp sizes, FSDP2)
    par = " ".join(f"{k} {fields[k + '_size']}" for k in ("tp", "sp", "cp") if (fields.get(k + "_size") or 1) > 1)
    if fields.get("fsdp_version") == 2:
        out += " (fsdp2)"
    return out + (f" + {par}" if par else "") + (f" + offload {', '.join(off)}" if off else "")


def render_recommendation(rec: Recommendation) -> str:
    """The text report of a recommendation (or of what would fit when nothing does)."""
    lines: list[str] = []
    if rec.estimate is not None:       # which model "7B" or a config.json resolved to, as estimate says it
        m = rec.estimate.model
        lines.append(f"Model  {m.name} ({m.family}): {fmt_count(m.parameters)} parameters [{m.source}]")
    if rec.found and rec.recommendation is not None and rec.estimate is not None:
        r, est = rec.recommendation, rec.estimate
        if rec.task == "infer":
            lines.append(f"Recommendation  {r.layout}: batch {r.batch_size} x seq {r.seq_len}, "
                         f"{r.precision}, {'4-bit weights' if r.method == 'qlora' else 'full weights'}")
            lines.append(f"  launch: {r.launcher}")
        else:
            offloads = any(v != "none" for k, v in r.model_dump().items() if k.startswith("offload_"))
            unchecked = offloads and not est.per_node_cpu.available_bytes
            lines.append(f"Recommendation  {_strategy_label(r)}, {r.precision}, {r.method}, activation "
                         f"checkpointing {r.activation_checkpointing}"
                         + (" -- host RAM NOT checked (give --cpu-ram)" if unchecked else ""))
            ranks = r.world_size // (r.tp_size * r.sp_size * r.cp_size)     # issue 15: data-parallel ranks
            lines.append(f"  micro-batch {r.micro_batch_size} x {ranks} {'GPU(s)' if ranks == r.world_size else 'data-parallel rank(s)'} x gradient accumulation "
                         f"{r.gradient_accumulation_steps} = global batch {r.global_batch_size} "
                         f"(seq {r.seq_len})")
            if r.fp16 is not None:
                f = r.fp16
                lines.append(f"  fp16 dynamic loss scaling: initial_scale_power {f.initial_scale_power}, "
                             f"loss_scale_window {f.loss_scale_window}, hysteresis {f.hysteresis}, "
                             f"min_loss_scale {f.min_loss_scale}")
            lines.append(f"  launch: {r.launcher}")
        st = rec.step_time
        if st is not None:
            if rec.task == "infer":
                lines.append(f"  throughput ~{st.tokens_per_second:,.0f} prefill tokens/s ({st.seconds:.3f} s per "
                             f"batch, GPU profile {st.gpu_profile})")
            else:
                lines.append(f"  step time ~{st.seconds:.2f} s (compute {st.compute_seconds:.2f}, exposed communication "
                             f"{st.communication_seconds:.2f}, offload {st.offload_seconds:.2f}); "
                             f"{st.tokens_per_second:,.0f} tokens/s; compute at {st.compute_efficiency:.0%} of peak, "
                             f"MFU {st.mfu:.0%}; rates: {st.rates or st.gpu_profile}")
        g = est.per_gpu
        lines.append("")
        lines.append(f"Per GPU  {fmt_bytes(g.total)} of {fmt_bytes(est.hardware.vram_bytes)} (usable "
                     f"{fmt_bytes(rec.usable_vram_bytes)} with the {rec.margin:.0%} margin)")
        rows = [("parameters", g.parameters), ("gradients", g.gradients), ("optimizer states", g.optimizer_states),
                ("activations", g.activations), ("temporaries", g.temporaries), ("buffers", g.buffers),
                ("overhead", g.overhead)]
        if rec.task == "infer":
            rows = [("weights", g.parameters), ("-", 0), ("-", 0), ("KV cache", g.activations),
                    ("transient", g.temporaries), ("-", 0), ("overhead", g.overhead)]
        # the bar shows what is alive at the peak moment: the phase overlap comes off the activations
        shown = [(n, max(v - g.phase_overlap, 0) if n == "activations" else v) for n, v in rows]
        lines.append("  " + bar(shown, est.hardware.vram_bytes))
        lines.append("  " + BAR_LEGEND)
        overlap = [("not alive together", -g.phase_overlap)] if g.phase_overlap else []
        lines.append("  " + "  ".join(f"{n} {fmt_bytes(v)}" for n, v in rows + overlap if v))
        cpu = est.per_node_cpu
        if cpu.total:
            avail = f" of {fmt_bytes(cpu.available_bytes)}" if cpu.available_bytes else " (no --cpu-ram given)"
            lines.append(f"CPU RAM per node  {fmt_bytes(cpu.total)}{avail}")
        if est.per_node_nvme_bytes:
            lines.append(f"NVMe per node     {fmt_bytes(est.per_node_nvme_bytes)}")
    else:
        lines.append("Nothing fits.")
    lines.append("")
    lines.append("Why" if rec.found else "Why not")
    lines.extend(f"  - {x}" for x in rec.reasons)
    if rec.suggestions:
        lines.append("")
        lines.append("What would fit (each re-checked)")
        for s in rec.suggestions:
            flags = " ".join(f"{k} {v}" for k, v in s.flags.items())
            lines.append(f"  - {s.change}  [{flags}]")
            lines.append(f"      -> {s.result}")
    elif not rec.found:
        lines.append("")
        lines.append("No single change tried (method, CPU RAM, NVMe, more GPUs, more memory, shorter sequences) "
                     "makes it fit.")
    if rec.advice:
        lines.append("")
        lines.append("Advice")
        lines.extend(f"  - {x}" for x in rec.advice)
    if rec.assumptions:
        lines.append("")
        lines.append("Assumptions")
        lines.extend(f"  - {x}" for x in rec.assumptions)
    if rec.alternatives:
        lines.append("")
        lines.append("Runners-up" if rec.found else "Configurations tried")
        shown = rec.alternatives[:MAX_ALTERNATIVES]
        labels = []
        for a in shown:
            ck = a.strategy.activation_checkpointing
            labels.append(_strategy_label(a.strategy) + (f" ckpt={ck}" if ck and ck != "none" and a.fits else ""))
        width = max([len(x) for x in labels] + [8]) + 2
        lines.append(f"  {'strategy':<{width}}{'fits':<6}{'tokens/s':>10}  why not")
        for a, label in zip(shown, labels):
            fits = "-" if a.fits is None else ("yes" if a.fits else "no")
            tps = f"{a.tokens_per_second:,.0f}" if a.tokens_per_second is not None else "-"
            lines.append(f"  {label:<{width}}{fits:<6}{tps:>10}  {a.rejected_because}")
        if len(rec.alternatives) > MAX_ALTERNATIVES:
            lines.append(f"  ... {len(rec.alternatives) - MAX_ALTERNATIVES} more in --json")
    lines.append("")
    lines.append(f"{len(rec.rules_fired)} rule firings, {rec.candidates_evaluated} memory estimates, "
                 f"search {rec.search_ms:.0f} ms (details: --json)")
    return "\n".join(lines)
