"""The speed part of an estimate: step time of one optimizer step (training) or serving speed (inference).

:func:`with_speed` adds :class:`advisor.estimate_result.StepTime` / :class:`advisor.estimate_result.InferenceSpeed` to a
memory :class:`advisor.estimate_result.Estimate`, from the step-time model (:mod:`advisor.recommend.step_time`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..batching import gradient_accumulation
from ..catalog.models import ResolvedModel
from ..layout import data_parallel_size
from ..param_count import count_parameters
from ..estimate_result import Estimate
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .step_time import (GENERIC_GPU_NOTE, generic_gpu, inference_speed, rates_for, step_time_assumptions,
                        training_step_time)

if TYPE_CHECKING:  # annotations only: the profile model is built when a profile is loaded
    from ..profile import MachineProfile


def with_speed(est: Estimate, model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec,
               strategy: StrategySpec, profile: MachineProfile | None = None) -> Estimate:
    """``est`` with ``step_time`` (training) or ``inference_speed`` (inference) filled in."""
    arch = model.architecture
    counts = count_parameters(arch)
    gpu = hw.gpu or generic_gpu(hw.vram_bytes)
    rates = rates_for(gpu, profile)
    notes = ([GENERIC_GPU_NOTE] if hw.gpu is None and profile is None else []) + \
        step_time_assumptions(rates, hw, training.task)
    if training.task == "infer":
        from ..memory.inference import weight_bytes_for_inference   # here: training imports no inference code
        weights = weight_bytes_for_inference(model, counts, training)
        speeds = [inference_speed(arch, counts, hw, gpu, lay.layout, precision=training.precision,
                                  method=training.method, batch=training.micro_batch_size, seq_len=training.seq_len,
                                  weight_bytes=weights, attention=training.attention, profile=profile,
                                  tp=strategy.tp_size)
                  for lay in est.inference]
        return est.model_copy(update={"inference_speed": speeds, "notes": list(est.notes) + notes})
    gas = gradient_accumulation(training.global_batch_size, training.micro_batch_size,
                                data_parallel_size(hw, strategy))   # tp/sp/cp ranks share a batch
    st = training_step_time(arch, counts, est.model.trainable_parameters, hw, gpu, strategy,
                            precision=training.precision, method=training.method,
                            checkpointing=training.activation_checkpointing, micro_batch=training.micro_batch_size,
                            seq_len=training.seq_len, gas=gas, freeze_layers=training.freeze_trainable_layers,
                            attention=training.attention, rates=rates,
                            sync_each_batch=training.sync_each_batch)   # issue 17 (helper L)
    if strategy.tp_size * strategy.sp_size * strategy.cp_size > 1:   # issue 15: said, not assumed silently
        notes.append("tensor/sequence/context-parallel collectives (TP all-reduces, Ulysses all-to-alls, ring K/V "
                     "all-gathers) run inside a node on the critical path, not overlapped with compute "
                     "(advisor/recommend/step_time.py layout_communication)")
    if gas > 1 or training.global_batch_size:
        notes = [f"one optimizer step = {gas} micro-step(s) of micro-batch {training.micro_batch_size} on each of "
                 f"{hw.world_size} GPU(s)"] + notes
    else:
        notes = ["no --global-batch: one optimizer step per micro-batch (no gradient accumulation)"] + notes
    return est.model_copy(update={"step_time": st.model_copy(update={"assumptions": notes})})
