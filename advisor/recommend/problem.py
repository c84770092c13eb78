"""The recommendation problem: the model, hardware and inputs, which dimensions are fixed and which searched.

Fixed vs searched (the API and the CLI agree):

* ``method``: a method name fixes it; ``"auto"`` tries full fine-tuning first, then LoRA, then QLoRA
  (quality first: a method is only tried when no configuration of the previous one fits).
* ``precision``: a name fixes it; ``"auto"`` lets the rules choose (bf16 where the GPU has it, else fp16
  with dynamic loss scaling). ``checkpointing``: a name fixes it; ``"auto"`` searches none/selective/full.
  ``None`` for either means: the template's value if it was set explicitly, else ``"auto"``.
* micro-batch: the template's ``micro_batch_size`` is the smallest size searched; the search goes up to
  ``max_micro_batch`` (default: global batch / GPUs, else the rules' ``const.max_micro_batch``).
* margin: fraction of each GPU's memory kept free (default ``const.margin_fraction``, 5%).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..architecture import Architecture
from ..catalog.models import ResolvedModel, resolve_model
from ..errors import InputError
from ..param_count import ParameterCounts, count_parameters, lora_targets_head, lora_trainable_parameters
from ..ruleengine import RuleSet
from ..ruleengine.engine import Rule
from ..specs import GPUInfo, HardwareSpec, TrainingSpec
from . import facts as F
from .candidates import MicroBatches, micro_batches
from .ruleset import recommend_rules
from .step_time import GENERIC_GPU_NOTE, Rates, generic_gpu, rates_for, step_time_assumptions

if TYPE_CHECKING:  # annotations only: the profile model is built when a profile is loaded
    from ..profile import MachineProfile

CHECKPOINTING = ("none", "selective", "full")
METHOD_TIERS = ("full", "lora", "qlora")


@dataclass
class Problem:
    """Everything the search needs, resolved and validated once."""

    model: ResolvedModel
    counts: ParameterCounts
    hw: HardwareSpec
    gpu: GPUInfo                        # the catalog GPU, or the generic class
    gpu_assumed: bool
    template: TrainingSpec
    methods: tuple[str, ...]            # tried in order (one unless method auto)
    method_auto: bool
    precision_fixed: str | None
    checkpointing_fixed: str | None
    margin: float
    usable_bytes: int
    micro: MicroBatches
    rules: RuleSet
    stages: list[list[Rule]]
    band: float                         # const.time_resolution
    facts: dict[str, object] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)
    profile: MachineProfile | None = None  # measured rates (dsadvise calibrate), replacing the catalog's
    rates: Rates | None = None

    @property
    def arch(self) -> Architecture:
        return self.model.architecture


def _explicit(template: TrainingSpec, name: str) -> bool:
    return name in template.model_fields_set


def make_problem(model: ResolvedModel | str, hw: HardwareSpec, template: TrainingSpec | None, *,
                 margin: float | None, method: str | None, precision: str | None, checkpointing: str | None,
                 max_micro_batch: int | None, rules: Sequence[str | Path],
                 profile: MachineProfile | None = None) -> Problem:
    """Resolve and validate the inputs; raises InputError (exit 2) with the flag at fault."""
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(str(model))
    template = template or TrainingSpec()
    ruleset = recommend_rules(rules)
    counts = count_parameters(resolved.architecture)

    if margin is None:
        margin = float(ruleset.constant("margin_fraction"))  # type: ignore[arg-type]
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not 0 <= margin < 0.9 or margin != margin:
        raise InputError(f"the safety margin is a fraction of VRAM between 0 and 0.9 (e.g. 0.05), got {margin!r}",
                         field="--margin")

    if method is None:
        method = template.method
    if method == "auto":
        methods, auto = METHOD_TIERS, True
    elif method in F.DOMAINS["method"]:
        methods, auto = (method,), False
    else:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(F.DOMAINS['method'])}, auto",
                         field="--method")
    if template.task == "infer":
        methods = ("full", "qlora") if auto else methods
    if precision is None:
        precision = template.precision if _explicit(template, "precision") else "auto"
    if precision != "auto" and precision not in F.DOMAINS["precision"]:
        raise InputError(f"unknown precision {precision!r}", field="--precision")
    if checkpointing is None:
        checkpointing = template.activation_checkpointing if _explicit(template, "activation_checkpointing") \
            else "auto"
    if checkpointing != "auto" and checkpointing not in CHECKPOINTING:
        raise InputError(f"unknown checkpointing {checkpointing!r}", field="--checkpointing")
    if any(m in ("lora", "qlora") for m in methods) and template.task == "train":
        lora_trainable_parameters(resolved.architecture, template.lora.rank, template.lora.target_modules)

    if max_micro_batch is not None and (isinstance(max_micro_batch, bool) or int(max_micro_batch) < 1):
        raise InputError(f"must be at least 1, got {max_micro_batch!r}", field="--max-micro-batch")
    start = template.micro_batch_size
    if max_micro_batch is not None and max_micro_batch < start:
        raise InputError(f"{max_micro_batch} is below --micro-batch {start}", field="--max-micro-batch")
    default_cap = int(ruleset.constant("max_micro_batch"))  # type: ignore[arg-type]
    if template.global_batch_size is not None:
        cap = max_micro_batch or max(start, template.global_batch_size // hw.world_size)
    else:
        cap = max_micro_batch or max(start, default_cap)
    micro = micro_batches(start, cap, template.global_batch_size, hw)

    gpu, assumed = (hw.gpu, False) if hw.gpu is not None else (generic_gpu(hw.vram_bytes), True)
    stages = ruleset.partition(F.rule_stage, F.STAGES)
    p = Problem(model=resolved, counts=counts, hw=hw, gpu=gpu, gpu_assumed=assumed, template=template,
                methods=methods, method_auto=auto, precision_fixed=None if precision == "auto" else precision,
                checkpointing_fixed=None if checkpointing == "auto" else checkpointing, margin=float(margin),
                usable_bytes=int(hw.vram_bytes * (1 - margin)), micro=micro, rules=ruleset, stages=stages,
                band=float(ruleset.constant("time_resolution")))  # type: ignore[arg-type]
    p.facts = problem_facts(p, method)
    p.profile = profile
    p.rates = rates_for(gpu, profile)
    if assumed and profile is None:
        p.assumptions.append(GENERIC_GPU_NOTE)
    p.assumptions.extend(step_time_assumptions(p.rates, hw, template.task))
    if template.task == "train" and ("lora" in methods or "qlora" in methods):
        from ..memory.model_states import LORA_16BIT_BASE_NOTE, QLORA_16BIT_REST_NOTE

        p.assumptions += [n for m, n in (("lora", LORA_16BIT_BASE_NOTE), ("qlora", QLORA_16BIT_REST_NOTE))
                          if m in methods and getattr(template, "base_dtype", "16-bit") != "fp32"]   # given: no assumption
    return p


def problem_facts(p: Problem, method: str) -> dict[str, object]:
    """Stage-0 facts: model, hardware, inputs and the rules' constants."""
    a, hw, t, gpu = p.arch, p.hw, p.template, p.gpu
    out: dict[str, object] = dict(p.rules.constants)
    out.update({
        "model.name": p.model.name, "model.family": a.family, "model.source": p.model.source,
        "model.parameters": p.counts.total, "model.active_parameters": p.counts.active_per_token,
        "model.layers": a.num_layers, "model.hidden_size": a.hidden_size, "model.vocab_size": a.vocab_size,
        "model.is_moe": a.is_moe, "model.position": a.position,
        "model.max_position_embeddings": a.max_position_embeddings,
        "model.attention_heads": a.num_attention_heads, "model.kv_heads": a.num_key_value_heads,   # issue 15
        "hardware.gpu": hw.gpu.name if hw.gpu else None, "hardware.gpu_known": hw.gpu is not None,
        "hardware.vendor": gpu.vendor, "hardware.gpus_per_node": hw.gpus_per_node, "hardware.nodes": hw.nodes,
        "hardware.world_size": hw.world_size, "hardware.multi_node": hw.nodes > 1,
        "hardware.vram_bytes": hw.vram_bytes, "hardware.usable_vram_bytes": p.usable_bytes,
        "hardware.bf16": hw.bf16_supported, "hardware.link": gpu.intra_node_link,
        "hardware.intra_node_bandwidth_gbps": gpu.intra_node_bandwidth_gbps,
        "hardware.inter_node_bandwidth_gbps": gpu.inter_node_bandwidth_gbps,
        "hardware.pcie_bandwidth_gbps": gpu.pcie_bandwidth_gbps, "hardware.cpu_ram_bytes": hw.cpu_ram_bytes,
        "hardware.nvme_path": hw.nvme_path, "hardware.nvme_bytes": hw.nvme_bytes,
        "training.task": t.task, "training.seq_len": t.seq_len, "training.micro_batch": t.micro_batch_size,
        "training.max_micro_batch": p.micro.values[-1], "training.global_batch": t.global_batch_size,
        "training.precision": p.precision_fixed, "training.method": method,
        "training.checkpointing": p.checkpointing_fixed, "training.optimizer": t.optimizer,
        "training.attention": t.attention, "training.loss": t.loss, "training.lora_rank": t.lora.rank, "training.margin": p.margin,
        "training.tiled_mlp": bool(getattr(t, "tiled_mlp", False)),   # issue 15 (helper T)
        "training.lora_head": lora_targets_head(t.lora.target_modules),   # issue 17 (L)
        "training.batch_lengths": getattr(t, "batch_lengths", "fixed"),   # issue 17 (L): variable-length batches
        "training.expandable_segments": bool(t.expandable_segments),
    })
    return out
