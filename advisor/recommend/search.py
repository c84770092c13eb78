"""The training search: rules prune, the estimator checks memory, the step-time model ranks.

Order of work (each step cheap before the next, costly one):

1. Stage-0 rules narrow the search space once (precision, methods, checkpointing, layouts) and reject
   user-fixed settings they rule out (exit 2). Stage-1/2 rules judge each layout / configuration without
   a memory estimate.
2. Every surviving *group* (layout x precision x method x checkpointing) gets a lower bound of its ranking
   time per sample: the step-time model at the largest micro-batch that may still fit (for DeepSpeed
   layouts also the bounds of the layouts the guidance ranks after them, see 5). Groups are visited in
   that order (branch and bound): a group whose bound exceeds ``(1 + band) x`` the best time found so far
   cannot be chosen and is never estimated ("dominated").
3. A visited group's largest fitting micro-batch is found with few estimates: the smallest size, then an
   interpolated or extrapolated guess on the (near-affine in micro-batch) memory total, bisection as
   fallback, and the size above is always checked to fail; memory falls with more checkpointing, so what
   one checkpointing level learned caps the others.
4. Stage-3 rules see the sized candidate (estimate, step time) and may reject, weigh or advise.
5. Choice (:func:`ranking_key`): among the feasible candidates within ``band`` (``const.time_resolution``,
   10%) of the fastest, the one DeepSpeed's guidance ranks first (ZeRO-0 > 1 > 2 > 2+offload > 3 >
   3+offloads), then time. For the same workload (equal micro-batch, checkpointing, method, precision) a
   DeepSpeed layout is never ranked behind one the guidance puts after it (:func:`apply_guidance`).
   Verified against an exhaustive search in ``tests/recommend/test_search.py``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from enum import Enum

from ..errors import InputError
from ..memory.core import estimate_memory, trainable_parameters
from ..formatting import fmt_bytes
from ..estimate_result import Estimate
from ..ruleengine import apply_rules, narrow_domains
from ..ruleengine.engine import Firing, Rule
from . import facts as F
from .candidates import Layout, all_layouts, parallel_layouts
from .problem import CHECKPOINTING, Problem
from .step_time import StepTime, training_step_time

SAVING = {"none": 0, "selective": 1, "full": 2}     # activation memory saved: more is less memory


class GroupStatus(str, Enum):
    """Where the search stands with one group (layout x precision x method x checkpointing)."""

    PENDING = "pending"          # not judged yet
    REJECTED = "rejected"        # a rule rules it out
    INFEASIBLE = "infeasible"    # even the smallest micro-batch does not fit
    DOMINATED = "dominated"      # cannot beat a configuration already found (not estimated)
    FEASIBLE = "feasible"        # fits, sized and timed


@dataclass
class Group:
    """A layout with precision, method and checkpointing; the search sizes its micro-batch."""

    layout: Layout
    precision: str
    method: str
    checkpointing: str
    trainable: int
    factor: float = 1.0                  # prefer/penalise factors of stage-1/2 rules
    fired: list[Firing] = field(default_factory=list)
    advice: list[tuple[Rule, str]] = field(default_factory=list)
    factors: list[tuple[Rule, float]] = field(default_factory=list)
    lb: float = 0.0                      # lower bound of the adjusted seconds per sample
    status: GroupStatus = GroupStatus.PENDING
    reason: str = ""
    micro: int | None = None
    gas: int | None = None
    estimate: Estimate | None = None
    step: StepTime | None = None
    adj: float = math.inf                # adjusted seconds per sample: model time x rule factors
    rank_time: float = math.inf          # adj, lowered by the DeepSpeed guidance at equal sizes (see ranking)
    need_bytes: int | None = None        # per-GPU total at the smallest micro-batch (infeasible groups)
    cpu_need_bytes: int | None = None    # per-node CPU RAM when only CPU RAM is short
    limit: str = ""                      # why the next micro-batch size does not fit
    nosync_bytes: int = 0                # FSDP's unsharded no_sync gradients in need_bytes (issue 17, helper L)

    @property
    def label(self) -> str:
        return f"{self.layout.label} {self.method} {self.precision} ckpt={self.checkpointing}"

    def settings(self) -> dict[str, object]:
        return {**self.layout.settings(), "precision": self.precision, "method": self.method,
                "activation_checkpointing": self.checkpointing}


@dataclass
class Outcome:
    """Everything the search learned, for the report."""

    chosen: Group | None
    groups: list[Group]
    layouts: list[Layout]
    layout_rejects: dict[str, str]             # layout label -> reason (rules)
    problem_fired: list[Firing]
    problem_advice: list[str]
    precision: str
    precision_reason: str
    tiers_tried: list[str]
    tier_summaries: dict[str, str]             # method -> why it failed (method auto)
    estimates: int
    global_reject: str = ""
    parallel_reason: str = ""                  # issue 15: why TP/SP/CP layouts were (not) searched


class _Search:
    def __init__(self, p: Problem):
        self.p = p
        self.cache: dict[tuple, Estimate | InputError] = {}
        self.estimates = 0
        # (layout, method, precision) -> {"fit": {level: idx}, "fail": {level: idx}, "why": {level: str}}
        self.memo: dict[tuple, dict] = {}
        self.slopes: dict[tuple, float] = {}    # (method, precision, checkpointing) -> bytes per sample
        self.per_sample_cache: dict[tuple, float] = {}
        prefer = [r.factor for r in p.stages[F.SIZED] if r.effect == "prefer"]
        self.stage3_floor = math.prod(prefer) if prefer else 1.0

    # ------------------------------------------------------------------ memory
    def estimate(self, g: Group, micro: int) -> Estimate | InputError:
        key = (g.layout.label, g.method, g.precision, g.checkpointing, micro)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        t = self.p.template.model_copy(update={"micro_batch_size": micro, "precision": g.precision,
                                               "method": g.method, "activation_checkpointing": g.checkpointing})
        try:
            result: Estimate | InputError = estimate_memory(self.p.model, self.p.hw, t, g.layout.strategy)
        except InputError as exc:
            result = exc
        self.estimates += 1
        self.cache[key] = result
        return result

    def fits(self, g: Group, micro: int) -> tuple[bool, str, Estimate | None]:
        """Does ``g`` fit at ``micro``: GPU total within the usable VRAM, CPU RAM and NVMe within what is given."""
        est = self.estimate(g, micro)
        if isinstance(est, InputError):
            return False, f"not runnable: {est}", None
        p = self.p
        if not est.per_node_cpu.fits:
            return False, (f"needs {fmt_bytes(est.per_node_cpu.total)} CPU RAM per node, "
                           f"{fmt_bytes(p.hw.cpu_ram_bytes or 0)} given"), est
        if p.hw.nvme_bytes is not None and est.per_node_nvme_bytes > p.hw.nvme_bytes:
            return False, (f"needs {fmt_bytes(est.per_node_nvme_bytes)} NVMe per node, "
                           f"{fmt_bytes(p.hw.nvme_bytes)} given"), est
        if est.per_gpu.total > p.usable_bytes:
            return False, (f"needs {fmt_bytes(est.per_gpu.total)} per GPU, {fmt_bytes(p.usable_bytes)} usable "
                           f"({fmt_bytes(p.hw.vram_bytes)} less the {p.margin:.0%} margin)"), est
        return True, "", est

    def gas(self, g: Group, micro: int) -> int:
        """Accumulation steps of ``g`` at ``micro``: tp/sp/cp ranks share a batch (advisor/layout.py)."""
        if not g.layout.parallel:
            return self.p.micro.accumulation(micro)
        return layout_accumulation(self.p, g.layout.strategy, micro)

    def step_time(self, g: Group, micro: int) -> StepTime:
        p = self.p
        return training_step_time(p.arch, p.counts, g.trainable, p.hw, p.gpu, g.layout.strategy,
                                  precision=g.precision, method=g.method, checkpointing=g.checkpointing,
                                  micro_batch=micro, seq_len=p.template.seq_len, gas=self.gas(g, micro),
                                  freeze_layers=p.template.freeze_trainable_layers, attention=p.template.attention,
                                  rates=p.rates, sync_each_batch=p.template.sync_each_batch)   # issue 17 (L)

    def per_sample(self, g: Group, micro: int, st: StepTime | None = None) -> float:
        """Model seconds per sample of ``g`` at ``micro`` (cached: bounds ask for it often)."""
        key = (id(g), micro)
        hit = self.per_sample_cache.get(key)
        if hit is None:
            st = st or self.step_time(g, micro)
            hit = st.seconds / (st.tokens_per_step / self.p.template.seq_len)   # samples per step
            self.per_sample_cache[key] = hit
        return hit

    # ------------------------------------------------------------------ sizing one group
    def _memo(self, g: Group) -> dict:
        return self.memo.setdefault((g.layout.label, g.method, g.precision), {"fit": {}, "fail": {}, "why": {}})

    def top_index(self, g: Group) -> int:
        """The largest micro-batch index that may still fit: memory falls with more checkpointing, so a
        failure at a more-saving level (or this one) caps it."""
        memo = self._memo(g)
        lvl = SAVING[g.checkpointing]
        fails = [i for lv, i in memo["fail"].items() if lv >= lvl]
        return min(fails, default=len(self.p.micro.values)) - 1

    def raw_bound(self, g: Group) -> float:
        """Lower bound of ``g.adj``: the step-time model at the largest size that may still fit."""
        top = self.top_index(g)
        if top < 0:
            return math.inf
        return self.per_sample(g, self.p.micro.values[top]) * g.factor * self.stage3_floor

    def bound(self, g: Group, siblings: dict) -> float:
        """Lower bound of ``g.rank_time``: for a DeepSpeed-guidance layout, also of the layouts it may take
        its time from (same method, precision and checkpointing, ranked after it by the guidance)."""
        own = self.raw_bound(g)
        if not in_guidance_chain(g):
            return own
        key = (g.method, g.precision, g.checkpointing)
        open_ = (GroupStatus.PENDING, GroupStatus.FEASIBLE)
        return min([own] + [self.raw_bound(h) for h in siblings.get(key, ())
                            if h.layout.rank > g.layout.rank and h.status in open_])

    def size(self, g: Group) -> None:
        """Find the largest micro-batch that fits: few estimates, exact (the size above is checked to fail).

        Memory is close to affine in the micro-batch, so after two sizes the next guess is interpolated
        (or extrapolated with the slope seen on another layout with the same checkpointing); bisection
        takes over whenever a guess is off.
        """
        vals = self.p.micro.values
        last = len(vals) - 1
        memo = self._memo(g)
        lvl = SAVING[g.checkpointing]
        hi: int | None = self.top_index(g) + 1
        if hi > last:
            hi = None
        if hi == 0:
            fail_lv = min(lv for lv, i in memo["fail"].items() if lv >= lvl and i == 0)
            g.status, g.reason = GroupStatus.INFEASIBLE, memo["why"][fail_lv]
            return
        totals: dict[int, int] = {}
        failed: dict[int, str] = {}

        def probe(i: int) -> bool:
            ok, why, est = self.fits(g, vals[i])
            if est is not None:
                totals[i] = est.per_gpu.total
            if not ok:
                failed[i] = why
                if i == 0:
                    g.need_bytes = est.per_gpu.total if est is not None else None
                    g.nosync_bytes = _nosync_bytes(est)
                    if est is not None and est.per_gpu.total <= self.p.usable_bytes and not est.per_node_cpu.fits:
                        g.cpu_need_bytes = est.per_node_cpu.total
            return ok

        if not probe(0):
            g.status = GroupStatus.INFEASIBLE
            g.reason = f"does not fit: {failed[0]} (micro-batch {vals[0]}, checkpointing {g.checkpointing})"
            memo["fail"][lvl] = 0
            memo["why"][lvl] = g.reason
            return
        lo = 0
        hint_key = (g.method, g.precision, g.checkpointing)
        while lo < last and (hi is None or hi - lo > 1):
            ceiling = last if hi is None else hi - 1
            known = sorted(totals)
            slope = None
            if len(known) >= 2 and totals[known[-1]] > totals[known[0]]:
                slope = (totals[known[-1]] - totals[known[0]]) / (vals[known[-1]] - vals[known[0]])
            elif hint_key in self.slopes:
                slope = self.slopes[hint_key]
            if slope and slope > 0 and lo in totals:
                guess = vals[lo] + (self.p.usable_bytes - totals[lo]) / slope
                j = lo
                while j < ceiling and vals[j + 1] <= guess:
                    j += 1
                j = min(max(j, lo + 1), ceiling)
            else:
                j = ceiling if hi is None else (lo + hi) // 2
            if probe(j):
                lo = j
            else:
                hi = j
        known = sorted(totals)
        if len(known) >= 2 and totals[known[-1]] > totals[known[0]]:
            self.slopes[hint_key] = (totals[known[-1]] - totals[known[0]]) / (vals[known[-1]] - vals[known[0]])
        memo["fit"][lvl] = max(memo["fit"].get(lvl, -1), lo)
        if hi is not None:
            memo["fail"][lvl] = min(memo["fail"].get(lvl, len(vals)), hi)
            memo["why"].setdefault(lvl, failed.get(hi, ""))
        ok, why, est = self.fits(g, vals[lo])
        if not ok or est is None:   # memory not monotone where assumed: take the smallest size
            ok, why, est = self.fits(g, vals[0])
            if not ok or est is None:
                g.status, g.reason = GroupStatus.INFEASIBLE, f"does not fit: {why}"
                return
            lo = 0
        g.micro, g.gas, g.estimate = vals[lo], self.gas(g, vals[lo]), est
        g.step = self.step_time(g, g.micro)
        if hi is not None and hi in failed:
            g.limit = f"micro-batch {vals[hi]} would not fit: {failed[hi]}"

    def judge_sized(self, g: Group) -> None:
        """Stage-3 rules on the sized candidate, then its ranking key."""
        p = self.p
        est, st = g.estimate, g.step
        assert est is not None and st is not None and g.micro is not None and g.gas is not None
        facts = {**p.facts, **g.layout.facts(), **config_facts(g), **sized_facts(p, g, est, st)}
        v = apply_rules(p.stages[F.SIZED], facts, g.settings(), F.DOMAINS, candidate=f"{g.label} mb={g.micro}")
        g.fired.extend(v.fired)
        g.advice.extend(v.advice)
        g.factors.extend(v.factors)
        if v.rejected:
            g.status, g.reason = GroupStatus.REJECTED, v.reason
            return
        g.status = GroupStatus.FEASIBLE
        g.adj = self.per_sample(g, g.micro, st) * g.factor * v.factor


def config_facts(g: Group) -> dict[str, object]:
    return {"candidate.precision": g.precision, "candidate.method": g.method,
            "candidate.activation_checkpointing": g.checkpointing, "candidate.trainable_parameters": g.trainable}


def sized_facts(p: Problem, g: Group, est: Estimate, st: StepTime) -> dict[str, object]:
    pg = est.per_gpu
    return {
        "candidate.micro_batch_size": g.micro, "candidate.gradient_accumulation_steps": g.gas,
        "candidate.global_batch_size": effective_global(p, g, g.micro or 1),
        "estimate.per_gpu.parameters": pg.parameters, "estimate.per_gpu.gradients": pg.gradients,
        "estimate.per_gpu.optimizer_states": pg.optimizer_states, "estimate.per_gpu.activations": pg.activations,
        "estimate.per_gpu.temporaries": pg.temporaries, "estimate.per_gpu.buffers": pg.buffers,
        "estimate.per_gpu.overhead": pg.overhead, "estimate.per_gpu.total": pg.total,
        "estimate.per_node_cpu.total": est.per_node_cpu.total, "estimate.per_node_cpu.fits": est.per_node_cpu.fits,
        "estimate.per_node_nvme_bytes": est.per_node_nvme_bytes,
        "estimate.headroom_bytes": p.usable_bytes - pg.total,
        "step.seconds": st.seconds, "step.compute_seconds": st.compute_seconds,
        "step.communication_seconds": st.communication_seconds, "step.offload_seconds": st.offload_seconds,
        "step.tokens_per_second": st.tokens_per_second,
    }


def _excluding(rules: list[Rule], setting: str, value: object) -> list[Rule]:
    out = []
    for r in rules:
        vals = r.settings.get(setting, frozenset())
        if (r.effect == "require" and value not in vals) or (r.effect == "forbid" and value in vals):
            out.append(r)
    return out


def _blame_text(rules: list[Rule]) -> str:
    return "; ".join(f"{r.description} [rule {r.id}, {r.file}]" for r in rules)


_FLAGS = {"precision": "--precision", "method": "--method", "activation_checkpointing": "--checkpointing"}


def narrow(p: Problem) -> tuple[dict, list[Firing], dict, list[str], str]:
    """Stage-0 rules: allowed values per setting, firings, blame, problem advice, global reject reason."""
    stage0 = p.stages[F.PROBLEM]
    constraints = [r for r in stage0 if r.effect in ("require", "forbid")]
    others = [r for r in stage0 if r.effect not in ("require", "forbid")]
    v0 = apply_rules(others, p.facts, None, F.DOMAINS)
    allowed, fired, blame = narrow_domains(constraints, p.facts, F.DOMAINS)
    fixed = {"precision": p.precision_fixed, "activation_checkpointing": p.checkpointing_fixed,
             "method": None if p.method_auto else p.methods[0]}
    for setting, value in fixed.items():
        if value is not None and setting in allowed and value not in allowed[setting]:
            raise InputError(f"{value} is ruled out: {_blame_text(_excluding(blame[setting], setting, value))}",
                             field=_FLAGS[setting])
    advice = [text for _, text in v0.advice]
    return allowed, v0.fired + fired, blame, advice, v0.reason


def search_training(p: Problem) -> Outcome:
    """Run the search described in the module docstring."""
    s = _Search(p)
    allowed, problem_fired, blame, problem_advice, global_reject = narrow(p)

    if p.precision_fixed:
        precision, precision_reason = p.precision_fixed, f"precision {p.precision_fixed}: fixed by --precision"
    else:
        options = [x for x in ("bf16", "fp16") if x in allowed.get("precision", F.DOMAINS["precision"])]
        if not options:
            raise InputError("the rules allow neither bf16 nor fp16; give --precision", field="--precision")
        precision = options[0]
        why = [r for r in blame.get("precision", []) if precision in r.settings["precision"] or r.effect == "forbid"]
        precision_reason = f"precision {precision}: " + ("; ".join(r.description for r in why) if why
                                                          else "the default where nothing rules it out")
    methods = [m for m in p.methods if m in allowed.get("method", F.DOMAINS["method"])]
    if not methods:
        raise InputError(f"the rules rule out every method tried ({', '.join(p.methods)}): "
                         f"{_blame_text(blame.get('method', []))}", field="--method")
    ckpts = [p.checkpointing_fixed] if p.checkpointing_fixed else \
        [c for c in CHECKPOINTING if c in allowed.get("activation_checkpointing", CHECKPOINTING)]

    layouts: list[Layout] = []
    layout_rejects: dict[str, str] = {}
    layout_verdicts = {}
    for lay in all_layouts():
        bad = [st for st, val in lay.settings().items() if st in allowed and val not in allowed[st]]
        if bad:
            rules = [r for st in bad for r in _excluding(blame[st], st, lay.settings()[st])]
            layout_rejects[lay.label] = "; ".join(f"{r.description} [rule {r.id}]" for r in rules)
            continue
        facts1 = {**p.facts, **lay.facts()}
        v1 = apply_rules(p.stages[F.LAYOUT], facts1, lay.settings(), F.DOMAINS, candidate=lay.label)
        problem_fired.extend(f for f in v1.fired if f.outcome != "advised")
        if v1.rejected:
            layout_rejects[lay.label] = v1.reason
            continue
        layouts.append(lay)
        layout_verdicts[lay.label] = v1

    groups: list[Group] = []
    tier_summaries: dict[str, str] = {}
    tiers_tried: list[str] = []
    chosen: Group | None = None
    parallel_reason = ""
    extra_layouts: list[Layout] | None = None
    if not global_reject:
        for method in methods:
            tiers_tried.append(method)
            trainable = trainable_parameters(p.model, p.counts, p.template.model_copy(update={"method": method}))
            tier = _build_groups(s, p, layouts, layout_verdicts, precision, method, ckpts, trainable)
            _branch_and_bound(s, p, tier)
            chosen = _choose(p, tier)
            # issue 15: tensor/sequence/context parallelism only where data parallelism alone cannot do it
            need = parallel_needed(chosen)
            if need:
                if extra_layouts is None:
                    extra_layouts = _judge_layouts(p, parallel_layouts(p.arch, p.hw, p.template), allowed, blame,
                                                   layout_rejects, layout_verdicts, problem_fired)
                    layouts.extend(extra_layouts)
                usable = [lay for lay in extra_layouts if chosen is None or _less_offload(lay, chosen.layout)]
                extra = _build_groups(s, p, usable, layout_verdicts, precision, method, ckpts, trainable)
                _seed_smallest(s, p, extra)
                _branch_and_bound(s, p, extra, best=chosen.adj if chosen is not None else math.inf)
                tier += extra
                chosen = _choose(p, tier)
                parallel_reason = (f"tensor/sequence/context-parallel layouts searched: {need}"
                                   if extra_layouts else f"{need}; no tensor/sequence/context-parallel layout "
                                   "applies (heads, kv heads, GPUs per node or sequence length do not divide)")
            elif chosen is not None:
                parallel_reason = (f"no tensor/sequence/context parallelism: {chosen.layout.label} fits without "
                                   "offload, and TP/SP/CP only add per-layer collectives on the critical path")
            groups.extend(tier)
            if chosen is not None:
                break
            tier_summaries[method] = _closest(tier)
    return Outcome(chosen=chosen, groups=groups, layouts=layouts, layout_rejects=layout_rejects,
                   problem_fired=problem_fired, problem_advice=problem_advice, precision=precision,
                   precision_reason=precision_reason, tiers_tried=tiers_tried, tier_summaries=tier_summaries,
                   estimates=s.estimates, global_reject=global_reject, parallel_reason=parallel_reason)


_OFFLOAD_LEVEL = {"none": 0, "cpu": 1, "nvme": 2}


def _less_offload(lay: Layout, dp: Layout) -> bool:
    """When data parallelism fits only by offloading, a parallel layout can be faster only by offloading less:
    the CPU optimizer step and the parameter fetches cost the same per optimizer step whatever shards the GPUs
    hold (the same optimizer states of every node stream through its CPU)."""
    a, b = lay.strategy, dp.strategy
    mine = (_OFFLOAD_LEVEL[a.offload_optimizer], _OFFLOAD_LEVEL[a.offload_param])
    theirs = (_OFFLOAD_LEVEL[b.offload_optimizer], _OFFLOAD_LEVEL[b.offload_param])
    return mine <= theirs and mine != theirs


def _seed_smallest(s: "_Search", p: Problem, groups: list[Group]) -> None:
    """One estimate per parallel layout at its smallest memory (smallest micro-batch, most checkpointing): a
    layout that does not fit there is infeasible at every checkpointing level without more estimates."""
    most = max((g for g in groups if g.status == GroupStatus.PENDING), key=lambda g: SAVING[g.checkpointing],
               default=None)
    if most is None:
        return
    level = SAVING[most.checkpointing]
    seen = set()
    for g in groups:
        if g.status != GroupStatus.PENDING or g.checkpointing != most.checkpointing or g.layout.label in seen:
            continue
        seen.add(g.layout.label)
        ok, why, est = s.fits(g, p.micro.values[0])
        if not ok:
            memo = s._memo(g)
            memo["fail"][level] = 0
            memo["why"][level] = f"does not fit: {why} (micro-batch {p.micro.values[0]}, checkpointing " \
                                 f"{g.checkpointing})"
            if est is not None:
                g.need_bytes = est.per_gpu.total
                g.nosync_bytes = _nosync_bytes(est)


def _nosync_bytes(est: "Estimate | None") -> int:
    """Per-GPU bytes of FSDP's unsharded gradients under accelerate's no_sync in ``est`` (0 without them)."""
    from ..memory.model_states import FSDP_NO_SYNC_GRADIENTS

    return est.per_gpu.breakdown.get(FSDP_NO_SYNC_GRADIENTS, 0) if est is not None else 0


def sync_each_batch_hint(g: "Group") -> str:
    """issue 17 (helper L): what --sync-each-batch would take off an FSDP layout that does not fit ('' if nothing)."""
    if not g.nosync_bytes:
        return ""
    from ..formatting import fmt_bytes

    return (f"; {fmt_bytes(g.nosync_bytes)} of it are FSDP's unsharded gradients under accelerate's no_sync, which "
            "--sync-each-batch (GradientAccumulationPlugin(sync_each_batch=True)) drops for a gradient "
            "reduce-scatter per micro-batch")


def parallel_needed(chosen: "Group | None") -> str:
    """Why the search adds tensor/sequence/context-parallel layouts, or '' when data parallelism alone does it:
    nothing fits, or it fits only by offloading (5-10x slower steps, issue 15)."""
    if chosen is None:
        return "data parallelism alone does not fit"
    if chosen.layout.offloads:
        return f"data parallelism fits only with offload ({chosen.layout.label})"
    return ""


def layout_accumulation(p: Problem, strategy, micro: int) -> int:
    """gradient_accumulation_steps of a parallel layout: global batch / (micro x data-parallel ranks)."""
    from ..batching import gradient_accumulation
    from ..layout import data_parallel_size

    return gradient_accumulation(p.template.global_batch_size, micro, data_parallel_size(p.hw, strategy))


def effective_global(p: Problem, g: "Group", micro: int) -> int:
    """Samples per optimizer step: micro x data-parallel ranks x accumulation."""
    if not g.layout.parallel:
        return p.micro.effective_global(micro)
    from ..layout import data_parallel_size

    return micro * data_parallel_size(p.hw, g.layout.strategy) * layout_accumulation(p, g.layout.strategy, micro)


def _judge_layouts(p: Problem, candidates, allowed: dict, blame: dict, layout_rejects: dict, verdicts: dict,
                   problem_fired: list) -> list[Layout]:
    """Stage-0 domains and stage-1 rules on extra layouts, as for the data-parallel ones."""
    out = []
    for lay in candidates:
        bad = [st for st, val in lay.settings().items() if st in allowed and val not in allowed[st]]
        if bad:
            rules = [r for st in bad for r in _excluding(blame[st], st, lay.settings()[st])]
            layout_rejects[lay.label] = "; ".join(f"{r.description} [rule {r.id}]" for r in rules)
            continue
        v1 = apply_rules(p.stages[F.LAYOUT], {**p.facts, **lay.facts()}, lay.settings(), F.DOMAINS,
                         candidate=lay.label)
        problem_fired.extend(f for f in v1.fired if f.outcome != "advised")
        if v1.rejected:
            layout_rejects[lay.label] = v1.reason
            continue
        out.append(lay)
        verdicts[lay.label] = v1
    return out


def _build_groups(s: _Search, p: Problem, layouts: list[Layout], verdicts: dict, precision: str, method: str,
                  ckpts: list[str], trainable: int) -> list[Group]:
    out = []
    for lay in layouts:
        v1 = verdicts[lay.label]
        facts1 = {**p.facts, **lay.facts()}
        for ckpt in ckpts:
            g = Group(lay, precision, method, ckpt, trainable, factor=v1.factor, advice=list(v1.advice),
                      factors=list(v1.factors), fired=[f for f in v1.fired if f.outcome == "advised"])
            v2 = apply_rules(p.stages[F.CONFIG], {**facts1, **config_facts(g)}, g.settings(), F.DOMAINS,
                             candidate=g.label)
            g.fired.extend(v2.fired)
            g.advice.extend(v2.advice)
            g.factors.extend(v2.factors)
            g.factor *= v2.factor
            if v2.rejected:
                g.status, g.reason = GroupStatus.REJECTED, v2.reason
            out.append(g)
    return out


def _branch_and_bound(s: _Search, p: Problem, groups: list[Group], best: float = math.inf) -> None:
    """Visit groups by lower bound (lazily tightened as memory is learned); stop when none can win."""
    siblings: dict[tuple, list[Group]] = {}
    for g in groups:
        if in_guidance_chain(g):
            siblings.setdefault((g.method, g.precision, g.checkpointing), []).append(g)
    for g in groups:
        if g.status == GroupStatus.PENDING:
            g.lb = s.bound(g, siblings)
    heap = [(g.lb, g.layout.rank, SAVING[g.checkpointing], i) for i, g in enumerate(groups)
            if g.status == GroupStatus.PENDING]
    heapq.heapify(heap)
    while heap:
        lb, rank, saving, i = heapq.heappop(heap)
        g = groups[i]
        fresh = s.bound(g, siblings)
        if fresh > lb * (1 + 1e-9):
            g.lb = fresh
            heapq.heappush(heap, (fresh, rank, saving, i))
            continue
        if lb > (1 + p.band) * best:
            g.status = GroupStatus.DOMINATED
            for *_, j in heap:
                groups[j].status = GroupStatus.DOMINATED
            break
        memo = s.memo.get((g.layout.label, g.method, g.precision))
        top = s.top_index(g)
        if memo and any(lv < SAVING[g.checkpointing] and idx >= top for lv, idx in memo["fit"].items()):
            g.status = GroupStatus.DOMINATED   # less recomputation already fits every size this one could
            continue
        s.size(g)
        if g.status == GroupStatus.PENDING:
            s.judge_sized(g)
            if g.status == GroupStatus.FEASIBLE:
                best = min(best, g.adj)


# DeepSpeed's guidance (HF transformers DeepSpeed docs): speed-wise ZeRO-0 (DDP) > ZeRO-1 > ZeRO-2 >
# ZeRO-2 + offload > ZeRO-3 > ZeRO-3 + offloads, for the same workload.
GUIDANCE_CHAIN = frozenset({"ddp", "zero0", "zero1", "zero2", "zero3"})


def in_guidance_chain(g: Group) -> bool:
    return g.layout.strategy.name in GUIDANCE_CHAIN and not g.layout.parallel


def apply_guidance(groups: list[Group]) -> None:
    """Set ``rank_time``: ``adj``, except that a DeepSpeed layout is never ranked slower than a layout the
    guidance puts after it running the same micro-batch, checkpointing, method and precision.

    The step-time model decides where sizes or topology differ (a larger micro-batch thanks to sharding, a
    hybrid layout across nodes); for the same workload the published ordering wins, e.g. ZeRO-2 + CPU
    offload over ZeRO-3 even where the model's CPU-Adam time exceeds ZeRO-3's extra all-gathers.
    """
    classes: dict[tuple, list[Group]] = {}
    for g in groups:
        if g.status != GroupStatus.FEASIBLE:
            continue
        g.rank_time = g.adj
        if in_guidance_chain(g):
            classes.setdefault((g.micro, g.checkpointing, g.method, g.precision), []).append(g)
    for members in classes.values():
        members.sort(key=lambda g: -g.layout.rank)
        running = math.inf
        for g in members:                    # from the most sharded / offloaded to the least
            running = min(running, g.adj)
            g.rank_time = running


def ranking_key(p: Problem, best: float, g: Group) -> tuple:
    """The order of feasible candidates: bands of ``const.time_resolution`` relative to the fastest (times
    closer than that are below the model's resolution), inside a band DeepSpeed's guidance rank, then time.
    The first band's first candidate is the recommendation. :func:`apply_guidance` sets ``rank_time``."""
    ratio = g.rank_time / best
    band = 0 if ratio <= 1 + p.band else 1 + int(math.log(ratio) / math.log(1 + p.band))
    # Inside a band, a candidate a `prefer` rule favours (e.g. hybrid sharding across nodes) comes before
    # the published ordering: a rule is explicit, the band only says the model cannot tell them apart.
    preferred = g.factor < 1 or any(f < 1 for _, f in g.factors)
    return (band, not preferred, g.layout.rank, g.rank_time, g.adj, SAVING[g.checkpointing])


def _choose(p: Problem, groups: list[Group]) -> Group | None:
    apply_guidance(groups)
    feasible = [g for g in groups if g.status == GroupStatus.FEASIBLE]
    if not feasible:
        return None
    best = min(g.rank_time for g in feasible)
    return min(feasible, key=lambda g: ranking_key(p, best, g))


def _closest(groups: list[Group]) -> str:
    tried = [g for g in groups if g.status == GroupStatus.INFEASIBLE and g.need_bytes]
    if not tried:
        reasons = sorted({g.reason for g in groups if g.reason})
        return reasons[0] if reasons else "no configuration to try"
    g = min(tried, key=lambda x: x.need_bytes or 0)
    return f"closest: {g.layout.label} with checkpointing {g.checkpointing}: {g.reason.removeprefix('does not fit: ')}"
