"""Recommendation: the fastest configuration that fits, explained (``dsadvise recommend``).

>>> from advisor.api import build_hardware, build_training
>>> from advisor.recommend import recommend
>>> hw = build_hardware(gpus=4, vram=24)
>>> rec = recommend("7B", hw, build_training(hw, seq_len=2048), method="full", precision="auto",
...                 checkpointing="auto")
>>> rec.recommendation["name"], rec.step_time_seconds

Modules: :mod:`.problem` (inputs, fixed vs searched), :mod:`.candidates` (the search space),
:mod:`.step_time` (the time model), :mod:`.search` (training search), :mod:`.inference_search`
(``--task infer``), :mod:`.explain` (reasons, runners-up), :mod:`.suggest` (what would fit),
:mod:`.recommendation` (the result models), :mod:`.recommendation_report` (text). The sub-command is
:mod:`advisor.cli.recommend`. Rules: ``rules/*.yaml`` via :mod:`advisor.ruleengine`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog.models import ResolvedModel
from ..specs import HardwareSpec, TrainingSpec

if TYPE_CHECKING:
    from .recommendation import Recommendation

__all__ = ["recommend", "Recommendation", "Alternative", "Suggestion", "StepTimeInfo"]


def __getattr__(name: str):
    # The result models are imported on first use, not with the package: `dsadvise estimate` imports
    # advisor.recommend.speed (and so this package) and needs none of them (benchmarks/startup.py).
    if name in ("Recommendation", "Alternative", "Suggestion", "StepTimeInfo"):
        from . import recommendation

        return getattr(recommendation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def recommend(model: ResolvedModel | str, hw: HardwareSpec, training_template: TrainingSpec | None = None, *,
              margin: float | None = None, method: str | None = None, precision: str | None = None,
              checkpointing: str | None = None, max_micro_batch: int | None = None,
              rules: Sequence[str | Path] = (), suggest: bool = True, profile=None) -> Recommendation:
    """The fastest configuration of ``model`` that fits ``hw``, with reasons, runners-up and rules fired.

    ``training_template`` gives sequence length, the smallest micro-batch, global batch, optimizer, LoRA
    settings, attention and task. ``method`` / ``precision`` / ``checkpointing``: a value fixes it,
    ``"auto"`` searches (see :mod:`advisor.recommend.problem`). ``margin``: fraction of VRAM kept free
    (default ``const.margin_fraction`` of the rules, 5%). ``rules``: extra rule files or folders.
    When nothing fits, ``found`` is False and ``suggestions`` say what would (verified by re-running
    the search with each change, unless ``suggest`` is False). ``profile``: a :class:`advisor.profile.
    MachineProfile` (``dsadvise calibrate``) whose measured rates replace the GPU catalog's in the step-time
    model. Raises InputError / RuleError (exit 2).
    """
    from .explain import training_recommendation
    from .inference_search import search_inference
    from .problem import make_problem
    from .ruleset import recommend_rules
    from .search import search_training

    recommend_rules(rules)            # parsed once per process; not part of the search time
    t0 = time.perf_counter()
    p = make_problem(model, hw, training_template, margin=margin, method=method, precision=precision,
                     checkpointing=checkpointing, max_micro_batch=max_micro_batch, rules=rules, profile=profile)
    cpu_need = None
    if p.template.task == "infer":
        rec = search_inference(p, t0)
    else:
        out = search_training(p)
        rec = training_recommendation(p, out, (time.perf_counter() - t0) * 1000)
        cpu_need = min((g.cpu_need_bytes for g in out.groups if g.cpu_need_bytes), default=None)
    rec = rec.model_copy(update={"margin": p.margin, "usable_vram_bytes": p.usable_bytes})
    if not rec.found and suggest:
        from .suggest import suggestions

        kwargs = dict(margin=p.margin, method=method, precision=precision, checkpointing=checkpointing,
                      max_micro_batch=max_micro_batch, rules=rules, profile=profile)
        rec = rec.model_copy(update={"suggestions": suggestions(p, rec, kwargs, recommend, cpu_need)})
    return rec
