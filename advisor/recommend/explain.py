"""Turning a training search :class:`Outcome` into a :class:`Recommendation`: the choice, reasons, runners-up."""

from __future__ import annotations

from ..formatting import fmt_bytes
from .problem import Problem
from .recommendation import (Alternative, Fp16Settings, Recommendation, RuleFired, StepTimeInfo, StrategyRef,
                             TrainingChoice)
from ..memory.batch_lengths import batch_length_notes   # issue 17 (L)
from .search import SAVING, Group, GroupStatus, Outcome, effective_global, ranking_key, sync_each_batch_hint

MIXED_PRECISION = {"bf16": "bf16", "pure-bf16": "bf16", "fp16": "fp16", "fp32": "no"}
GUIDANCE = "ZeRO-0 > ZeRO-1 > ZeRO-2 > ZeRO-2 + offload > ZeRO-3 > ZeRO-3 + offloads"


def fp16_settings(p: Problem) -> Fp16Settings:
    """DeepSpeed's ``fp16`` block with dynamic loss scaling, from the rules' constants."""
    c = p.rules.constants
    return Fp16Settings(initial_scale_power=c["const.fp16.initial_scale_power"],
                        loss_scale_window=c["const.fp16.loss_scale_window"], hysteresis=c["const.fp16.hysteresis"],
                        min_loss_scale=c["const.fp16.min_loss_scale"])


def strategy_ref(p: Problem, g: Group) -> StrategyRef:
    """The estimate's ``strategy`` block for a group (from its estimate when it has one)."""
    if g.estimate is not None:   # layout sizes only where a layout is used (issue 15), as before otherwise
        dump = g.estimate.strategy.model_dump(mode="json")
        return StrategyRef(**{k: v for k, v in dump.items()
                              if not (k in ("tp_size", "sp_size", "cp_size", "dp_replicate_size", "fsdp_version")
                                      and v == 1)})
    s, t = g.layout.strategy, p.template
    layout = {k: getattr(s, k) for k in ("tp_size", "sp_size", "cp_size", "fsdp_version")
              if getattr(s, k) > 1} if g.layout.parallel else {}
    return StrategyRef(name=s.name, backend=s.backend, zero_stage=s.zero_stage, fsdp_sharding=s.fsdp_sharding,
                       offload_optimizer=s.offload_optimizer, offload_param=s.offload_param, precision=g.precision,
                       activation_checkpointing=g.checkpointing, micro_batch_size=g.micro or p.micro.values[0],
                       seq_len=t.seq_len, attention=t.attention, optimizer=t.optimizer, method=g.method, **layout)


def launcher(p: Problem) -> str:
    hw = p.hw
    cmd = f"accelerate launch --num_processes {hw.world_size}"
    if hw.nodes > 1:
        cmd += f" --num_machines {hw.nodes} --machine_rank <0..{hw.nodes - 1}> --main_process_ip <node 0>"
    return cmd + " train.py"


def _describe(g: Group) -> str:
    return f"{g.layout.label} (checkpointing {g.checkpointing})"


def _step_info(p: Problem, g: Group) -> StepTimeInfo:
    st = g.step
    assert st is not None and g.micro is not None and g.gas is not None
    samples = effective_global(p, g, g.micro)
    return StepTimeInfo(seconds=st.seconds, compute_seconds=st.compute_seconds,
                        communication_seconds=st.communication_seconds, offload_seconds=st.offload_seconds,
                        tokens_per_second=st.tokens_per_second, samples_per_second=samples / st.seconds,
                        compute_efficiency=st.compute_efficiency, mfu=st.mfu, gpu_profile=p.gpu.name,
                        tokens_per_second_per_gpu=st.tokens_per_second_per_gpu, rates=st.rates)


def _layout_best(groups: list[Group]) -> dict[str, Group]:
    """Per layout, the group that best represents it: its fastest feasible one, else the most telling."""
    order = {GroupStatus.FEASIBLE: 0, GroupStatus.DOMINATED: 1, GroupStatus.REJECTED: 2, GroupStatus.INFEASIBLE: 3,
             GroupStatus.PENDING: 4}
    best: dict[str, Group] = {}
    for g in groups:
        cur = best.get(g.layout.label)
        key = (order[g.status], g.adj if g.status == GroupStatus.FEASIBLE else -SAVING[g.checkpointing])
        cur_key = (order[cur.status], cur.adj if cur.status == GroupStatus.FEASIBLE else -SAVING[cur.checkpointing]) \
            if cur is not None else None
        if cur_key is None or key < cur_key:
            best[g.layout.label] = g
    return best


def _more(g: Group, chosen: Group) -> str:
    """'N% more tokens/s (X vs Y)': throughput compared per token, whatever the two micro-batches are."""
    assert g.step is not None and chosen.step is not None
    weighed = abs((chosen.adj / g.adj) - chosen.step.seconds / chosen.step.tokens_per_step
                  / (g.step.seconds / g.step.tokens_per_step)) > 1e-9
    return (f"estimated {100 * (chosen.adj / g.adj - 1):.0f}% more tokens/s"
            f"{' after rule weights' if weighed else ''} ({g.step.tokens_per_second:,.0f} vs "
            f"{chosen.step.tokens_per_second:,.0f})")


def alternatives(p: Problem, out: Outcome) -> list[Alternative]:
    """One entry per layout not chosen: fits?, its step time, and why it lost."""
    chosen = out.chosen
    tier = chosen.method if chosen else (out.tiers_tried[-1] if out.tiers_tried else None)
    groups = [g for g in out.groups if g.method == tier]
    feasible = [g for g in groups if g.status == GroupStatus.FEASIBLE]
    best_adj = min((g.rank_time for g in feasible), default=1.0)
    rows: list[tuple[tuple, Alternative]] = []
    for label, g in _layout_best(groups).items():
        if chosen is not None and label == chosen.layout.label:
            continue
        fits: bool | None
        seconds = tps = None
        if g.status == GroupStatus.FEASIBLE:
            fits, seconds = True, g.step.seconds if g.step else None
            assert chosen is not None and g.step is not None and chosen.step is not None
            tps = g.step.tokens_per_second
            if g.adj < chosen.adj:
                why = (f"{_more(g, chosen)}, within the model's {p.band:.0%} resolution, where DeepSpeed's "
                       f"guidance ({GUIDANCE}) ranks {chosen.layout.label} first")
            elif tps > chosen.step.tokens_per_second:
                weights = [f"rule {r.id} weighs it x{f:g}" for r, f in g.factors if f > 1] + \
                    [f"rule {r.id} weighs {chosen.layout.label} x{f:g}" for r, f in chosen.factors if f < 1]
                why = (f"{tps:,.0f} vs {chosen.step.tokens_per_second:,.0f} tokens/s, but ranked lower: "
                       f"{'; '.join(weights) or 'rule weights'} (micro-batch {g.micro}, "
                       f"{g.step.seconds:.2f} s per step)")
            else:
                why = (f"slower: {tps:,.0f} vs {chosen.step.tokens_per_second:,.0f} tokens/s "
                       f"(micro-batch {g.micro}, {g.step.seconds:.2f} s per step)")
            key = (0, ranking_key(p, best_adj, g))
        elif g.status == GroupStatus.DOMINATED:
            fits = None
            lead = chosen.layout.label if chosen else "the best configuration"
            unfit = [x for x in groups if x.layout is g.layout and x.status == GroupStatus.INFEASIBLE
                     and SAVING[x.checkpointing] < SAVING[g.checkpointing]]
            why = (f"without checkpointing it does not fit ({unfit[0].reason.removeprefix('does not fit: ')}"
                   f"{sync_each_batch_hint(unfit[0])}); ") if unfit else ""
            why += (f"{'with ' + g.checkpointing + ' checkpointing ' if g.checkpointing != 'none' else ''}"
                    f"even the largest micro-batch would be slower than {lead} (not estimated)")
            if chosen is not None and g.layout.offloads and not chosen.layout.offloads:
                why += "; offloading only adds PCIe traffic and a CPU optimizer step when the model fits without it"
            key = (1, g.lb)
        elif g.status == GroupStatus.INFEASIBLE:
            fits, why, key = False, g.reason + sync_each_batch_hint(g), (2, g.need_bytes or 0)
        else:
            fits, why, key = None, g.reason or "rejected", (3, 0)
        rows.append((key, Alternative(strategy=strategy_ref(p, g), fits=fits, step_time_seconds=seconds,
                                      rejected_because=why, tokens_per_second=tps)))
    for label, reason in out.layout_rejects.items():
        lay = next((x for x in _all_layouts() if x.label == label), None)
        if lay is None:
            continue
        g = Group(lay, out.precision, tier or "full", "none", 0)
        rows.append(((4, lay.rank), Alternative(strategy=strategy_ref(p, g), fits=None, step_time_seconds=None,
                                                rejected_because=f"ruled out: {reason}")))
    rows.sort(key=lambda r: r[0])
    return [a for _, a in rows]


def _all_layouts():
    from .candidates import all_layouts

    return all_layouts()


def reasons(p: Problem, out: Outcome) -> list[str]:
    """Why the chosen configuration, in the order a user asks: what, precision, sizes, strategy, method."""
    g = out.chosen
    assert g is not None and g.step is not None and g.micro is not None and g.gas is not None
    st, world = g.step, p.hw.world_size
    r = [f"{_describe(g)} is the fastest configuration that fits: about {st.seconds:.2f} s per optimizer step, "
         f"{st.tokens_per_second:,.0f} tokens/s (compute {st.compute_seconds:.2f} s, exposed communication "
         f"{st.communication_seconds:.2f} s, offload {st.offload_seconds:.2f} s)"]
    prec = out.precision_reason
    if g.precision == "fp16":
        f = fp16_settings(p)
        prec += (f" - fp16 needs dynamic loss scaling: initial scale 2^{f.initial_scale_power}, window "
                 f"{f.loss_scale_window}, hysteresis {f.hysteresis}, minimum {f.min_loss_scale}")
    r.append(prec)
    vals = p.micro.values
    if g.micro == vals[-1]:
        cap = ("global batch / GPUs" if p.template.global_batch_size else "--max-micro-batch or const.max_micro_batch")
        r.append(f"micro-batch {g.micro}: the largest allowed ({cap}); it fits with "
                 f"{fmt_bytes(p.usable_bytes - (g.estimate.per_gpu.total if g.estimate else 0))} to spare")
    else:
        r.append(f"micro-batch {g.micro}: the largest that fits ({g.limit or 'a larger one does not fit'})")
    if g.layout.parallel:      # issue 15: tp/sp/cp ranks share one batch
        from ..layout import data_parallel_size

        world = data_parallel_size(p.hw, g.layout.strategy)
    if p.template.global_batch_size:
        r.append(f"gradient_accumulation_steps {g.gas}: global batch {effective_global(p, g, g.micro)} = "
                 f"micro-batch {g.micro} x {world} data-parallel rank(s) x {g.gas}")
    else:
        r.append(f"no --global-batch: no gradient accumulation, global batch {g.micro * world} "
                 f"(micro-batch {g.micro} x {world} GPU(s))")
    r.append(_checkpointing_reason(p, out, g))
    r.extend(_layout_reasons(p, out, g))
    if out.parallel_reason:
        r.append(out.parallel_reason)
    if g.layout.parallel:
        r.extend(_parallel_reasons(p, g))
    if p.method_auto:
        if g.method == "full":
            r.append("method auto: full fine-tuning fits, so neither LoRA nor QLoRA is needed")
        else:
            failed = "; ".join(f"{m}: {why}" for m, why in out.tier_summaries.items())
            r.append(f"method auto: {g.method}, because nothing fits with {', '.join(out.tier_summaries)} ({failed})")
    for rule, factor in g.factors:
        r.append(f"rule {rule.id} ({rule.file}) weighs the step time x{factor:g}: {rule.description}")
    return r


def _parallel_reasons(p: Problem, g: Group) -> list[str]:
    """What the chosen tensor/sequence/context-parallel layout does and costs (issue 15)."""
    from ..layout import data_parallel_size

    s, a = g.layout.strategy, p.arch
    out = []
    if s.tp_size > 1:
        out.append(f"tp {s.tp_size}: every GPU of a tensor-parallel group holds 1/{s.tp_size} of each layer's "
                   f"attention ({a.num_attention_heads} heads) and MLP and of the lm_head; two all-reduces per "
                   "layer in the forward and two in the backward run over the node's link, on the critical path")
    if s.sp_size > 1:
        out.append(f"sp {s.sp_size} (DeepSpeed Ulysses / ALST): each GPU keeps {p.template.seq_len // s.sp_size} of "
                   f"the {p.template.seq_len} tokens of a sample; all-to-alls around attention trade them for "
                   f"heads/{s.sp_size} over the whole sequence")
    if s.cp_size > 1:
        out.append(f"cp {s.cp_size} (ring attention under FSDP2): each GPU keeps {p.template.seq_len // s.cp_size} "
                   "tokens; K and V are all-gathered per layer")
    out.append(f"{data_parallel_size(p.hw, s)} data-parallel rank(s) take separate samples "
               f"({p.hw.world_size} GPUs / {s.tp_size * s.sp_size * s.cp_size})")
    return out


def _checkpointing_reason(p: Problem, out: Outcome, g: Group) -> str:
    if p.checkpointing_fixed:
        return f"activation checkpointing {g.checkpointing}: fixed by --checkpointing"
    if g.checkpointing == "none":
        return "no activation checkpointing: the activations fit, so nothing is recomputed"
    less = [x for x in out.groups if x.layout is g.layout and x.method == g.method
            and SAVING[x.checkpointing] < SAVING[g.checkpointing]]
    for x in sorted(less, key=lambda x: SAVING[x.checkpointing]):
        if x.status == GroupStatus.INFEASIBLE:
            return f"activation checkpointing {g.checkpointing}: without it ({x.checkpointing}) {x.reason}"
        if x.status == GroupStatus.FEASIBLE and x.step is not None:
            return (f"activation checkpointing {g.checkpointing}: recomputing lets micro-batch {g.micro} fit, which "
                    f"beats {x.checkpointing} at micro-batch {x.micro} ({x.step.tokens_per_second:,.0f} tokens/s)")
    return f"activation checkpointing {g.checkpointing}: less recomputation does not fit or is slower"


def _layout_reasons(p: Problem, out: Outcome, g: Group) -> list[str]:
    r: list[str] = []
    best = _layout_best([x for x in out.groups if x.method == g.method])
    faster = sorted((x for lab, x in best.items() if x.layout.rank < g.layout.rank and lab != g.layout.label),
                    key=lambda x: x.layout.rank)
    notes = []
    for x in faster:
        if x.status == GroupStatus.INFEASIBLE and x.need_bytes and x.need_bytes > p.usable_bytes:
            notes.append(f"{x.layout.label} needs {fmt_bytes(x.need_bytes)} per GPU (checkpointing "
                         f"{x.checkpointing}, micro-batch {p.micro.values[0]}{sync_each_batch_hint(x)})")
        elif x.status == GroupStatus.INFEASIBLE:
            notes.append(f"{x.layout.label} {x.reason}")
        elif x.status == GroupStatus.REJECTED:
            notes.append(f"{x.layout.label} is ruled out: {x.reason}")
    for label, why in out.layout_rejects.items():
        lay = next((y for y in _all_layouts() if y.label == label), None)
        if lay is not None and lay.rank < g.layout.rank and not lay.offloads and lay.strategy.name != "single" \
                and p.hw.world_size > 1:
            notes.append(f"{label} is ruled out: {why}")
    if notes:
        r.append(f"faster layouts by DeepSpeed's guidance are out ({fmt_bytes(p.usable_bytes)} usable per GPU): "
                 + "; ".join(notes[:4]) + (f"; and {len(notes) - 4} more (see alternatives)" if len(notes) > 4 else ""))
    near = [x for x in out.groups if x.status == GroupStatus.FEASIBLE and x.method == g.method and x.adj < g.adj]
    if near:
        x = min(near, key=lambda y: y.adj)
        r.append(f"{x.layout.label}: {_more(x, g)}, within the model's {p.band:.0%} resolution; DeepSpeed's "
                 f"guidance ({GUIDANCE}) ranks {g.layout.label} first")
    if g.layout.offloads:
        s = g.layout.strategy
        what = ", ".join(f"{k} to {v}" for k, v in (("optimizer states", s.offload_optimizer),
                                                   ("parameters", s.offload_param)) if v != "none")
        r.append(f"offload ({what}): needed to fit; it costs {g.step.offload_seconds:.2f} s per step "
                 f"over PCIe and in the CPU optimizer" if g.step else f"offload ({what})")
    elif any(x.layout.offloads for x in best.values()):
        r.append(f"no offload: {g.layout.label} fits without it, and offloading would only slow the step")
    return r


def training_recommendation(p: Problem, out: Outcome, search_ms: float) -> Recommendation:
    """The :class:`Recommendation` of a training search (without suggestions)."""
    fired = [RuleFired.of(f) for f in out.problem_fired]
    seen = set()
    for g in out.groups:
        for f in g.fired:
            if f.outcome == "advised" and g is not out.chosen:
                continue
            key = (f.rule.id, f.candidate, f.outcome)
            if key not in seen:
                seen.add(key)
                fired.append(RuleFired.of(f))
    g = out.chosen
    if g is None:
        if out.global_reject:
            why = [f"no configuration can run: {out.global_reject}"]
        else:
            why = [f"nothing fits: no configuration of {', '.join(out.tiers_tried)} fine-tuning fits "
                   f"{p.hw.world_size} x {fmt_bytes(p.hw.vram_bytes)} (usable {fmt_bytes(p.usable_bytes)} "
                   f"with the {p.margin:.0%} margin)"]
        why.extend(f"{m}: {s}" for m, s in out.tier_summaries.items())
        return Recommendation(task="train", found=False, recommendation=None, estimate=None, step_time=None,
                              reasons=why, advice=list(out.problem_advice), assumptions=list(p.assumptions),
                              alternatives=alternatives(p, out), rules_fired=fired,
                              candidates_evaluated=out.estimates, search_ms=search_ms)
    assert g.estimate is not None and g.micro is not None and g.gas is not None
    rec = TrainingChoice(**g.estimate.strategy.model_dump(), gradient_accumulation_steps=g.gas,
                         global_batch_size=effective_global(p, g, g.micro), world_size=p.hw.world_size,
                         gpus_per_node=p.hw.gpus_per_node, nodes=p.hw.nodes,
                         mixed_precision=MIXED_PRECISION[g.precision], launcher=launcher(p),
                         fp16=fp16_settings(p) if g.precision == "fp16" else None)
    advice: list[str] = []
    for text in list(out.problem_advice) + [t for _, t in g.advice]:
        if text not in advice:
            advice.append(text)
    return Recommendation(task="train", found=True, recommendation=rec, estimate=g.estimate,
                          step_time=_step_info(p, g), reasons=reasons(p, out), advice=advice,
                          assumptions=list(p.assumptions) + batch_length_notes(g.estimate),   # issue 17 (L)
                          alternatives=alternatives(p, out), rules_fired=fired,
                          candidates_evaluated=out.estimates, search_ms=search_ms)

