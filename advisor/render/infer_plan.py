"""What ``dsadvise generate --task infer`` writes: the inference layouts that fit, each with the batch that fits
and its per-GPU memory (bytes), and for ``device_map="auto"`` the per-GPU ``max_memory`` that leaves room for
the KV cache. Pure: validated specs and the inference recommendation in, a typed plan out; no torch.

The layouts and their memory are the estimator's (:mod:`advisor.memory.inference`), the batch sizes the
inference search's (:mod:`advisor.recommend.inference_search`): this module only reads them off.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..catalog.models import ResolvedModel
from ..specs import HardwareSpec, StrategySpec, TrainingSpec

MIB = 1024 ** 2
# transformers' bitsandbytes 4-bit quantizer hands accelerate 90 % of each max_memory ("need more space for buffers
# that are created during quantization", quantizers/quantizer_bnb_4bit.py adjust_max_memory)
BNB_4BIT_MAX_MEMORY_FRACTION = 0.90
LAYOUT_NAMES = ("device-map-auto", "replica-per-gpu")   # the order the files are listed in


class LayoutPlan(BaseModel):
    """One launchable layout; memory figures are per GPU, in bytes."""

    model_config = ConfigDict(frozen=True)

    layout: Literal["device-map-auto", "replica-per-gpu"]
    batch_size: int                 # prompts per generate() call in one process
    processes: int                  # per node
    weights: int
    kv_cache: int
    transient: int
    overhead: int
    total: int
    max_memory_bytes: int | None    # device-map-auto: the weights budget of each GPU handed to accelerate
    prefill_tokens_per_second: float | None
    recommended: bool


class InferPlan(BaseModel):
    """Everything the inference templates need besides formatting."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_id: str | None            # what from_pretrained loads by default (hub id or local folder); None: user gives it
    family: str
    precision: str
    method: str
    double_quant: bool
    attention: str
    seq_len: int
    prompt_len: int
    max_new_tokens: int
    nodes: int
    gpus_per_node: int
    vram_bytes: int
    usable_bytes: int
    margin: float
    layouts: tuple[LayoutPlan, ...]
    not_fitting: tuple[str, ...]
    assumptions: tuple[str, ...]

    def layout(self, name: str) -> LayoutPlan | None:
        return next((x for x in self.layouts if x.layout == name), None)


def default_model_id(model: ResolvedModel, model_arg: str) -> str | None:
    """The ``from_pretrained`` argument the scripts default to: the catalog's hub id, or the folder of a given
    config.json; None for a model given by size (the user must pass ``--model``)."""
    from pathlib import Path

    if model.source == "catalog":
        from ..catalog.models import find_model

        found = find_model(model.name) or find_model(model_arg)
        return found.hf_id if found is not None else None
    if model.source in ("config", "traced"):
        p = Path(model_arg).expanduser()
        return str(p.parent if p.name.endswith(".json") else p)
    return None


def max_memory_bytes(usable: int, layout_kv: int, transient: int, overhead: int) -> int:
    """Weights budget per GPU for accelerate's ``max_memory``: usable VRAM minus what the estimate puts beside
    the weights (KV cache share, prefill transient, CUDA context + allocator overhead), rounded down to MiB.

    accelerate's ``infer_auto_device_map`` fills each GPU with modules up to ``max_memory`` and knows nothing
    of the KV cache (accelerate/utils/modeling.py), so the budget must leave that room itself."""
    return max(0, (usable - layout_kv - transient - overhead) // MIB * MIB)


def plan_inference(model: ResolvedModel, model_arg: str, hw: HardwareSpec, template: TrainingSpec, rec, *,
                   margin: float | None = None) -> InferPlan:
    """The plan from the inference recommendation ``rec`` (task infer, found): every layout that fits, with the
    batch the search found for it, and its per-GPU memory re-read from the estimate at that batch."""
    from ..formatting import fmt_bytes
    from ..memory.core import estimate_memory

    r = rec.recommendation
    batches = {r.layout: r.batch_size}
    speeds = {r.layout: rec.step_time.tokens_per_second if rec.step_time else None}
    not_fitting = []
    for alt in rec.alternatives:
        name = alt.strategy.name
        if alt.fits and name in LAYOUT_NAMES and name not in batches:
            batches[name] = int(getattr(alt.strategy, "micro_batch_size"))
            speeds[name] = alt.tokens_per_second
        elif not alt.fits:
            not_fitting.append(f"{name}: {alt.rejected_because}")
    margin = _margin() if margin is None else margin
    usable = int(hw.vram_bytes * (1 - margin))
    training = template.model_copy(update={"precision": r.precision, "method": r.method})
    strategy = StrategySpec(backend="single" if hw.world_size == 1 else "ddp")
    layouts = []
    assumptions = list(rec.assumptions)
    reserve = accelerate_reserve_bytes(model, training)

    def at(name: str, batch: int):
        est = estimate_memory(model, hw, training.model_copy(update={"micro_batch_size": batch}), strategy)
        lay = next(x for x in est.inference if x.layout == name)
        return lay, max_memory_bytes(usable, lay.kv_cache, lay.transient, lay.overhead)

    for name in LAYOUT_NAMES:
        if name not in batches:
            continue
        lay, mm = at(name, batches[name])
        if name == "device-map-auto":
            # GPU 0 must hold its layers plus accelerate's reserve: shrink the batch (KV cache) until it does.
            found = batches[name]
            lo, hi = 0, found          # largest batch in [1, found] whose budget covers weights + reserve
            usable_fraction = BNB_4BIT_MAX_MEMORY_FRACTION if training.method == "qlora" else 1.0
            while hi - lo > 0:
                mid = (lo + hi + 1) // 2
                if at(name, mid)[1] * usable_fraction >= lay.weights + reserve:
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:
                not_fitting.append(f"device-map-auto: GPU 0 cannot hold its {fmt_bytes(lay.weights)} of weights, "
                                   f"accelerate's {fmt_bytes(reserve)} reserve for the largest layer and the KV cache")
                continue
            if lo != found:
                assumptions.append(f"device_map=\"auto\": batch {lo} instead of the search's {found}, so that each "
                                   "GPU's max_memory also holds the largest layer accelerate keeps free on GPU 0 "
                                   "(infer_auto_device_map, accelerate/utils/modeling.py)"
                                   + (" within the 90 % of it transformers' 4-bit quantizer passes on"
                                      if training.method == "qlora" else ""))
                batches[name] = lo
                lay, mm = at(name, lo)
        else:
            mm = None
        layouts.append(LayoutPlan(layout=name, batch_size=batches[name],
                                  processes=hw.gpus_per_node if name == "replica-per-gpu" else 1,
                                  weights=lay.weights, kv_cache=lay.kv_cache, transient=lay.transient,
                                  overhead=lay.overhead, total=lay.total, max_memory_bytes=mm,
                                  prefill_tokens_per_second=speeds.get(name) if batches[name] == lay_batch(rec, name)
                                  else None, recommended=name == r.layout))
    if template.prompt_len:
        prompt, new = template.prompt_len, template.seq_len - template.prompt_len
    else:
        new = max(1, template.seq_len // 4)
        prompt = template.seq_len - new
        assumptions.append(f"--prompt-len not given: the scripts keep prompts to {prompt} tokens and generate up to "
                           f"{new} (prompt + new = --seq-len {template.seq_len}, what the KV cache was sized for)")
    return InferPlan(model_name=model.name, model_id=default_model_id(model, model_arg),
                     family=model.architecture.family, precision=r.precision, method=r.method,
                     double_quant=template.double_quant, attention=template.attention, seq_len=template.seq_len,
                     prompt_len=prompt, max_new_tokens=max(new, 1), nodes=hw.nodes, gpus_per_node=hw.gpus_per_node,
                     vram_bytes=hw.vram_bytes, usable_bytes=usable, margin=margin, layouts=tuple(layouts),
                     not_fitting=tuple(not_fitting), assumptions=tuple(assumptions))


def accelerate_reserve_bytes(model: ResolvedModel, training: TrainingSpec) -> int:
    """Bytes accelerate's ``infer_auto_device_map`` keeps free on the first GPU: the largest layer (a decoder layer,
    or the embedding / output projection when larger), so that an offloaded layer could be brought in
    (``current_max_size - max_layer_size`` for main devices, accelerate/utils/modeling.py)."""
    from ..memory.bytes_per_param import NF4_BYTES
    from ..param_count import count_parameters

    counts = count_parameters(model.architecture)
    if training.method == "qlora":
        # decoder linears in NF4, embeddings and lm_head stay 16-bit (as weight_bytes_for_inference counts them)
        return int(max(counts.per_layer * NF4_BYTES, 2 * counts.embedding, 2 * counts.lm_head)) + 1
    per_param = 4 if training.precision == "fp32" else 2
    return max(counts.per_layer, counts.embedding, counts.lm_head) * per_param


def lay_batch(rec, name: str) -> int | None:
    """The batch the inference search found for layout ``name``."""
    if rec.recommendation.layout == name:
        return rec.recommendation.batch_size
    for alt in rec.alternatives:
        if alt.fits and alt.strategy.name == name:
            return int(getattr(alt.strategy, "micro_batch_size"))
    return None


def _margin() -> float:
    """The safety margin the search uses by default (the rules' ``const.margin_fraction``)."""
    from ..recommend.ruleset import recommend_rules

    return float(recommend_rules(()).constant("margin_fraction"))  # type: ignore[arg-type]
