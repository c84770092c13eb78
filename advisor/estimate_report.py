"""Human-readable text of an estimate (``dsadvise estimate``); number formatting is in :mod:`advisor.formatting`."""

from __future__ import annotations

from .estimate_result import Estimate
from .formatting import BAR_LEGEND, bar, fmt_bytes, fmt_count


def render_estimate(est: Estimate) -> str:
    """A readable breakdown of one estimate: per-GPU states, activations, buffers, overhead, CPU RAM."""
    m, hw, st, g = est.model, est.hardware, est.strategy, est.per_gpu
    gpu = hw.gpu or "GPU"
    lines = [
        f"Model     {m.name} ({m.family}): {fmt_count(m.parameters)} parameters, "
        f"{fmt_count(m.trainable_parameters)} trainable [{m.source}]",
        f"Hardware  {hw.nodes} node(s) x {hw.gpus_per_node} x {gpu} {fmt_bytes(hw.vram_bytes)}"
        + (f", CPU RAM {fmt_bytes(hw.cpu_ram_bytes)}/node" if hw.cpu_ram_bytes else ""),
    ]
    if est.task == "infer":
        lines.append(f"Task      inference, {st.precision}, batch {st.micro_batch_size} x seq {st.seq_len}")
        lines.append("")
        lines.append(f"{'layout':<18}{'weights':>12}{'KV cache':>12}{'transient':>12}{'overhead':>12}"
                     f"{'total':>12}  fits")
        for lay in est.inference:
            lines.append(f"{lay.layout:<18}{fmt_bytes(lay.weights):>12}{fmt_bytes(lay.kv_cache):>12}"
                         f"{fmt_bytes(lay.transient):>12}{fmt_bytes(lay.overhead):>12}{fmt_bytes(lay.total):>12}"
                         f"  {'yes' if lay.fits else 'NO'}")
    else:
        offl = []
        if st.offload_optimizer != "none":
            offl.append(f"optimizer->{st.offload_optimizer}")
        if st.offload_param != "none":
            offl.append(f"params->{st.offload_param}")
        # issue 15: the parallel layout, as accelerate's ParallelismConfig names the sizes
        layout = [f"{k} {getattr(st, k + '_size')}" for k in ("tp", "sp", "cp", "dp_replicate")
                  if getattr(st, k + "_size") > 1] + (["fsdp2"] if st.fsdp_version == 2 else [])
        if layout:
            lines.append(f"Layout    {', '.join(layout)} (world = dp_replicate x dp_shard x tp x sp x cp)")
        lines.append(f"Strategy  {st.name}{' + offload ' + ', '.join(offl) if offl else ''}; {st.precision}, "
                     f"{st.optimizer}, {st.method}; micro-batch {st.micro_batch_size} x seq {st.seq_len}"
                     + (f" at most, each batch padded to its longest (peak at {est.batch_lengths.peak_seq_len})"
                        if est.batch_lengths else "")   # issue 17 (L): --batch-lengths variable
                     + f"; checkpointing {st.activation_checkpointing}; attention {st.attention}")
        lines.append("")
        lines.append("Per GPU")
        rows = [("parameters", g.parameters), ("gradients", g.gradients), ("optimizer states", g.optimizer_states),
                ("activations", g.activations), ("temporaries", g.temporaries), ("buffers", g.buffers),
                ("overhead", g.overhead)]
        for name, v in rows:
            lines.append(f"  {name:<20}{fmt_bytes(v):>12}")
        if g.phase_overlap:
            lines.append(f"  {'not alive together':<20}{fmt_bytes(-g.phase_overlap):>12}   "
                         "(gradients are formed as backward frees activations)")
        moment = f"; peak at the {g.peak_moment}" if g.phase_overlap else ""
        lines.append(f"  {'total':<20}{fmt_bytes(g.total):>12}   of {fmt_bytes(hw.vram_bytes)}{moment}")
        if g.reserved:
            lines.append(f"  {'allocator':<20}{'':>12}   max_memory_allocated {fmt_bytes(g.allocated)}, "
                         f"max_memory_reserved {fmt_bytes(g.reserved)} (CUDA caching allocator model; "
                         "total = reserved + CUDA context + NCCL)")
        # the bar shows what is alive at the peak: the overlap comes off the activations
        shown = [(n, max(v - g.phase_overlap, 0) if n == "activations" else v) for n, v in rows]
        lines.append("  " + bar(shown, hw.vram_bytes))
        lines.append("  " + BAR_LEGEND)
        lines.append("")
        lines.append("  breakdown")
        for name, v in sorted(g.breakdown.items(), key=lambda kv: -kv[1]):
            if v:
                lines.append(f"    {name:<52}{fmt_bytes(v):>12}")
    lines.append("")
    cpu = est.per_node_cpu
    avail = f" of {fmt_bytes(cpu.available_bytes)}" if cpu.available_bytes else ""
    lines.append(f"CPU RAM per node  {fmt_bytes(cpu.total)}{avail}"
                 f"{'' if cpu.fits else '  (DOES NOT FIT)'}")
    for name, v in sorted(cpu.breakdown.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<52}{fmt_bytes(v):>12}")
    if est.per_node_nvme_bytes:
        lines.append(f"NVMe per node     {fmt_bytes(est.per_node_nvme_bytes)}")
    lines.append("")
    verdict = "FITS" if est.fits else "DOES NOT FIT"
    lines.append(f"Verdict   {verdict}: headroom {fmt_bytes(est.headroom_bytes)} per GPU")
    for note in est.notes:
        lines.append(f"Note      {note}")
    lines.extend(render_speed(est))
    return "\n".join(lines)


def render_speed(est: Estimate) -> list[str]:
    """The step time (training) or the prefill/decode speed per layout (inference), with its assumptions."""
    lines: list[str] = []
    st = est.step_time
    if st is not None:
        lines.append("")
        lines.append(f"Step time ~{st.seconds:.2f} s per optimizer step ({st.tokens_per_step:,} tokens): compute "
                     f"{st.compute_seconds:.2f} s, exposed communication {st.communication_seconds:.2f} s, "
                     f"offload {st.offload_seconds:.2f} s")
        lines.append(f"          {st.tokens_per_second:,.0f} tokens/s ({st.tokens_per_second_per_gpu:,.0f} per GPU); "
                     f"compute at {st.compute_efficiency:.0%} of the {st.peak_tflops:,.4g} TFLOPS peak, "
                     f"MFU {st.mfu:.0%}")
        lines.extend(f"Assumed   {a}" for a in st.assumptions)
    if est.inference_speed:
        lines.append("")
        lines.append(f"{'speed':<18}{'copies':>7}{'prefill tok/s':>15}{'decode tok/s':>14}{'decode step':>13}"
                     f"{'read/step':>12}")
        for s in est.inference_speed:
            lines.append(f"{s.layout:<18}{s.copies:>7}{s.prefill_tokens_per_second:>15,.0f}"
                         f"{s.decode_tokens_per_second:>14,.0f}{1000 * s.decode_seconds_per_token:>10.1f} ms"
                         f"{fmt_bytes(s.bytes_per_decode_step):>12}")
        lines.append("          decode reads the weights and the KV cache (at the full --seq-len context) once per "
                     "generated token (memory-bound); device_map=\"auto\" runs its GPUs one after another, so a "
                     "split copy is no faster than one GPU")
    return lines
