"""What ``recommend`` returns (pydantic, frozen): the choice, its estimate, the reasons and the runners-up.

Sizes are bytes, times seconds. ``to_json_dict()`` is the ``dsadvise recommend --json`` object.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..estimate_result import Estimate


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class StepTimeInfo(_Out):
    """The step-time estimate of the chosen configuration and its parts (seconds)."""

    seconds: float
    compute_seconds: float
    communication_seconds: float
    offload_seconds: float
    tokens_per_second: float
    samples_per_second: float
    mfu: float
    gpu_profile: str             # catalog GPU name, or 'generic' when assumed


class Alternative(_Out):
    """A configuration that was not chosen and why; ``fits`` None when memory was never checked."""

    strategy: dict
    fits: bool | None
    step_time_seconds: float | None
    rejected_because: str


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
    recommendation: dict | None
    estimate: Estimate | None
    step_time: StepTimeInfo | None
    reasons: list[str]
    advice: list[str] = []
    assumptions: list[str] = []
    alternatives: list[Alternative] = []
    suggestions: list[Suggestion] = []
    rules_fired: list[dict] = []
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
            "recommendation": self.recommendation,
            "estimate": self.estimate.to_json_dict() if self.estimate else None,
            "step_time_seconds": self.step_time_seconds,
            "step_time": self.step_time.model_dump(mode="json") if self.step_time else None,
            "reasons": list(self.reasons),
            "advice": list(self.advice),
            "assumptions": list(self.assumptions),
            "alternatives": [a.model_dump(mode="json") for a in self.alternatives],
            "rules_fired": list(self.rules_fired),
            "search": {"margin": self.margin, "usable_vram_bytes": self.usable_vram_bytes,
                       "candidates_evaluated": self.candidates_evaluated, "ms": round(self.search_ms, 2)},
        }
        if not self.found:
            out["suggestions"] = [s.model_dump(mode="json") for s in self.suggestions]
        return out
