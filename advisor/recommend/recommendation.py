"""What ``recommend`` returns (pydantic, frozen): the choice, its estimate, the reasons and the runners-up.

Sizes are bytes, times seconds. ``to_json_dict()`` is the ``dsadvise recommend --json`` object.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_serializer

from ..estimate_result import Estimate, StrategyInfo


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class _DropUnset(_Out):
    """A model whose JSON has only the fields that were given (absent keys stay absent, as before)."""

    @model_serializer(mode="wrap")
    def _only_set(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}


class RuleOutcome(str, Enum):
    """What a fired rule did (see :mod:`advisor.ruleengine.engine`)."""

    REJECTED = "rejected"
    CONSTRAINED = "constrained"
    OVERRIDDEN = "overridden"
    APPLIED = "applied"
    ADVISED = "advised"
    PASSED = "passed"


class RuleFired(_DropUnset):
    """One rule that fired: its id and file, its effect, on which candidate (absent: the problem) and outcome."""

    rule: str
    file: str
    effect: str
    outcome: RuleOutcome
    candidate: str | None = None

    @classmethod
    def of(cls, firing) -> "RuleFired":
        """From an engine :class:`advisor.ruleengine.Firing`."""
        extra = {"candidate": firing.candidate} if firing.candidate is not None else {}
        return cls(rule=firing.rule.id, file=firing.rule.file, effect=firing.rule.effect, outcome=firing.outcome,
                   **extra)


class Fp16Settings(_Out):
    """DeepSpeed's ``fp16`` block with dynamic loss scaling (values from the rules' constants)."""

    enabled: bool = True
    loss_scale: int | float = 0          # 0: dynamic
    initial_scale_power: int
    loss_scale_window: int
    hysteresis: int
    min_loss_scale: int | float


class TrainingChoice(StrategyInfo):
    """The recommended training configuration: the estimate's strategy block plus batch arithmetic and launch."""

    model_config = ConfigDict(frozen=True)

    gradient_accumulation_steps: int
    global_batch_size: int
    world_size: int
    gpus_per_node: int
    nodes: int
    mixed_precision: Literal["bf16", "fp16", "no"]
    launcher: str
    fp16: Fp16Settings | None = None          # only with fp16 (absent from the JSON otherwise)

    @model_serializer(mode="wrap")
    def _no_empty_fp16(self, handler):
        data = handler(self)
        if data.get("fp16") is None:
            data.pop("fp16", None)
        return data


class InferenceChoice(StrategyInfo):
    """The recommended inference layout: the estimate's strategy block plus layout, batch and processes."""

    model_config = ConfigDict(frozen=True)

    layout: str
    batch_size: int
    processes: int
    device_map: str | None
    launcher: str


class StrategyRef(_DropUnset):
    """An alternative's configuration: the estimate's strategy fields that are known (only ``name`` when the
    layout was ruled out before any estimate); the JSON has the known ones. Fields added to
    :class:`~advisor.estimate_result.StrategyInfo` pass through (``extra="allow"``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    backend: str | None = None
    zero_stage: int | None = None
    fsdp_sharding: str | None = None
    offload_optimizer: str | None = None
    offload_param: str | None = None
    precision: str | None = None
    activation_checkpointing: str | None = None
    micro_batch_size: int | None = None
    seq_len: int | None = None
    attention: str | None = None
    optimizer: str | None = None
    method: str | None = None
    # issue 15: parallel layout sizes (absent for data parallelism alone)
    tp_size: int | None = None
    sp_size: int | None = None
    cp_size: int | None = None
    dp_replicate_size: int | None = None
    fsdp_version: int | None = None


class StepTimeInfo(_Out):
    """The step-time estimate of the chosen configuration and its parts (seconds)."""

    seconds: float
    compute_seconds: float
    communication_seconds: float
    offload_seconds: float
    tokens_per_second: float
    samples_per_second: float
    compute_efficiency: float    # fraction of the GPU's dense peak assumed while computing
    mfu: float                   # model-FLOPs utilization: 6 x parameters x tokens/s / (GPUs x peak)
    gpu_profile: str             # catalog GPU name, or 'generic' when assumed
    tokens_per_second_per_gpu: float = 0.0
    rates: str = ""              # where the rates come from: GPU catalog, generic class, or a calibrate profile


class Alternative(_Out):
    """A configuration that was not chosen and why; ``fits`` None when memory was never checked."""

    strategy: StrategyRef
    fits: bool | None
    step_time_seconds: float | None
    rejected_because: str
    tokens_per_second: float | None = None     # whole job; the figure runners-up are compared by


class Suggestion(_Out):
    """A change that makes something fit; ``verified`` when the search was re-run with it and found a fit."""

    change: str                  # what to do, in words
    flags: dict                  # the CLI flags that express it, e.g. {"--method": "qlora"}
    verified: bool
    result: str                  # what the re-run recommends, or why it was not verified


class Recommendation(_Out):
    """The fastest configuration that fits (``found``), explained; or, when nothing fits, suggestions."""

    task: str
    found: bool
    recommendation: TrainingChoice | InferenceChoice | None
    estimate: Estimate | None
    step_time: StepTimeInfo | None
    reasons: list[str]
    advice: list[str] = []
    assumptions: list[str] = []
    alternatives: list[Alternative] = []
    suggestions: list[Suggestion] = []
    rules_fired: list[RuleFired] = []
    margin: float = 0.0                  # fraction of VRAM kept free
    usable_vram_bytes: int = 0           # per GPU, after the margin
    candidates_evaluated: int = 0        # memory estimates made by the search
    search_ms: float = 0.0               # wall time of the search (rules already loaded), milliseconds

    @property
    def step_time_seconds(self) -> float | None:
        return self.step_time.seconds if self.step_time else None

    def to_json_dict(self) -> dict:
        """The ``--json`` object (plain types; sizes in bytes)."""
        out = {
            "recommendation": self.recommendation.model_dump(mode="json") if self.recommendation else None,
            "estimate": self.estimate.to_json_dict() if self.estimate else None,
            "step_time_seconds": self.step_time_seconds,
            "step_time": self.step_time.model_dump(mode="json") if self.step_time else None,
            "reasons": list(self.reasons),
            "advice": list(self.advice),
            "assumptions": list(self.assumptions),
            "alternatives": [a.model_dump(mode="json") for a in self.alternatives],
            "rules_fired": [f.model_dump(mode="json") for f in self.rules_fired],
            "search": {"margin": self.margin, "usable_vram_bytes": self.usable_vram_bytes,
                       "candidates_evaluated": self.candidates_evaluated, "ms": round(self.search_ms, 2)},
        }
        if not self.found:
            out["suggestions"] = [s.model_dump(mode="json") for s in self.suggestions]
        return out
