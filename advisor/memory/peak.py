"""When in a training step memory peaks: the moments of one step and what is alive at each, per engine.

The naive peak adds every term: parameters + gradients + optimizer states + activations + temporaries.
They are not all alive at once. This module places each transient at the moment it occurs and takes the
worst moment (bytes per GPU above the persistent parameters, optimizer states and buffers):

* ``loss backward``  - every activation is saved; the loss/logits gradients are live; no parameter
  gradient exists yet where gradients are formed during backward.
* ``output head backward`` - one logits gradient and the head's weight gradient.
* ``top layer backward`` - the last decoder layer's backward transient; the head's saved tensors are gone.
* ``bottom layer backward`` - only the embedding output, the first layer's saved set and the logits the
  caller holds remain; every gradient but the embedding's exists.
* ``embedding backward`` - every gradient; a tied embedding's two gradients are summed out of place.
* ``gradient norm`` - DeepSpeed's clipping norm: an fp64 copy of each gradient in turn.
* ``optimizer step`` - the gradients the step reads, the optimizer's step temporaries and the logits the
  caller still holds (``outputs = model(**batch)`` stays in scope through ``optimizer.step()`` in
  accelerate's loops).

Where gradients are formed during backward and freed after the step, the backward moments carry only the
gradients formed so far:

* single GPU / DDP: ``optimizer.zero_grad(set_to_none=True)`` (torch >= 2.0 default; accelerate, HF Trainer);
* DeepSpeed ZeRO-1: every 16-bit ``param.grad`` accumulates in backward and is released by the reduction
  epilogue (``stage_1_and_2.independent_gradient_partition_epilogue`` -> ``_clear_param_grad_only``), with or
  without optimizer offload; the step reads a flat ``grads_in_partition`` copy of this rank's partition;
* DeepSpeed ZeRO-2: ``grads_in_partition`` is allocated at the first bucket reduction of the backward
  (``stage_1_and_2.copy_grads_in_partition``) and released by the step;

ZeRO-3 allocates its 16-bit gradient partition once (``stage3.grad_partitions_flat_buffer``) and FSDP's
FlatParameters keep their sharded gradients from one step to the next: every moment carries them. Gradient accumulation over several micro-batches keeps every gradient alive from the first
micro-batch on: the plain sum. Validated against the profiler's peak of whole training steps in
``docs/accuracy.md`` ("Whole training step") and of real engines in ``benchmarks/engine_steps.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..architecture import Architecture
from ..batching import gradient_accumulation
from ..param_count import ParameterCounts
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .activations import ActivationEstimate


class Moment(str, Enum):
    """The moments of one training step at which the per-GPU peak can occur."""

    LOSS_BACKWARD = "loss backward"
    HEAD_BACKWARD = "output head backward"
    TOP_LAYER_BACKWARD = "top layer backward"
    BOTTOM_LAYER_BACKWARD = "bottom layer backward"
    EMBEDDING_BACKWARD = "embedding backward"
    BACKWARD = "backward (gradients persist)"
    GRADIENT_NORM = "gradient norm"
    OPTIMIZER_STEP = "optimizer step"


@dataclass(frozen=True)
class ActivationTerms:
    """Named view of the activation estimator's breakdown (bytes per GPU): the one place that reads its keys."""

    activations: int              # everything saved for backward
    temporaries: int              # the largest backward transient above the saved set (incl. held logits)
    loss_backward: int            # held logits + the loss/logits gradients (``temp:logits_and_loss_backward``)
    layer_backward: int           # held logits + the last decoder layer's backward transient
    logits_held: int              # the model output the caller holds (``info:logits_output_held``)
    layer_transient: int          # one decoder layer's backward transient (``info:layer_transient``)
    autocast_weight_copies: int   # 16-bit copies of fp32 weights the linears save under autocast
    embeddings: int
    rope_cache: int
    attention_mask: int
    per_layer: int                # one decoder layer's saved set
    final_norm: int
    logits_and_loss: int

    @classmethod
    def of(cls, act: ActivationEstimate) -> "ActivationTerms":
        bd = act.breakdown
        loss = bd.get("temp:logits_and_loss_backward", act.temporaries)
        layer = bd.get("temp:layer_backward", act.temporaries)
        held = bd.get("info:logits_output_held", 0)
        head_saved = bd.get("final_norm", 0) + bd.get("logits_and_loss", 0)
        return cls(activations=act.activations, temporaries=act.temporaries, loss_backward=loss,
                   layer_backward=layer, logits_held=held,
                   layer_transient=bd.get("info:layer_transient", layer + head_saved - held),
                   autocast_weight_copies=bd.get("info:autocast_weight_copies", 0),
                   embeddings=bd.get("embeddings", 0), rope_cache=bd.get("rope_cache", 0),
                   attention_mask=bd.get("attention_mask", 0), per_layer=bd.get("per_layer", 0),
                   final_norm=bd.get("final_norm", 0), logits_and_loss=bd.get("logits_and_loss", 0))


@dataclass(frozen=True)
class StepGradients:
    """What the engine holds of the gradients (bytes per GPU), from ``model_states``."""

    formed: int            # gradient bytes at their fullest during backward (ZeRO-1: every 16-bit grad)
    at_step: int           # gradient bytes the optimizer step reads (ZeRO-1: this rank's flat partition)
    step_temporaries: int  # transient on top of ``at_step`` while the step runs (fp32 copy, foreach temps)
    norm_temporary: int = 0  # DeepSpeed's fp64 copy of the largest gradient (clipping norm), on ``at_step``
    unreduced: int = 0     # one parameter's full 16-bit gradient before its bucket copy (ZeRO-2)
    persistent: bool = False  # allocated once, alive at every moment (ZeRO-3's flat partition buffer)


@dataclass(frozen=True)
class StepPeak:
    """Bytes per GPU above the persistent states (parameters, optimizer states, buffers) at the worst
    moment of one training step, and the naive sum it replaces (``phase_overlap = naive - dynamic``)."""

    dynamic: int                    # activations + transients + gradients alive at the peak moment
    naive: int                      # activations + temporaries + gradients, all added
    temporaries: int                # the transient term of the naive sum (backward or step, the larger)
    moment: Moment
    moments: dict[Moment, int] = field(default_factory=dict)

    @property
    def phase_overlap(self) -> int:
        return self.naive - self.dynamic


def gradient_accumulation_steps(training: TrainingSpec, hw: HardwareSpec) -> int:
    """Micro-batches per optimizer step (:func:`advisor.batching.gradient_accumulation`)."""
    return gradient_accumulation(training.global_batch_size, training.micro_batch_size, hw.world_size)


def gradients_formed_in_backward(training: TrainingSpec, strategy: StrategySpec, hw: HardwareSpec) -> bool:
    """True when a step's parameter gradients are created during its backward and freed after the step.

    Single GPU, DDP and DeepSpeed ZeRO-1/2 full fine-tuning without accumulation (see the module
    docstring for each engine's source). ZeRO-3's gradient partition is allocated once, FSDP's sharded
    gradients persist; accumulation keeps
    gradients from one micro-batch to the next; adapters' gradients are too small to matter."""
    if training.method != "full" or gradient_accumulation_steps(training, hw) != 1:
        return False
    if strategy.backend == "deepspeed":
        return (strategy.zero_stage or 0) in (1, 2)
    # FSDP (accelerate's default fsdp_version 1, use_orig_params=True): zero_grad(set_to_none=True) drops the
    # original parameters' .grad views, but each FlatParameter keeps its sharded .grad storage into the next
    # step (measured: engine_steps fsdp-full, the gradients are alive at the loss backward): they persist.
    return strategy.backend in ("single", "ddp")


def step_peak(arch: Architecture, counts: ParameterCounts, training: TrainingSpec, strategy: StrategySpec,
              hw: HardwareSpec, act: ActivationEstimate, grads: StepGradients, *,
              held_extra: int = 0) -> StepPeak:
    """The peak of activations, transients and gradients over the moments of one step (bytes per GPU).

    ``held_extra``: bytes the caller holds from the forward end to after the step on top of the model's own
    output (accelerate's fp32 copy of 16-bit logits)."""
    t = ActivationTerms.of(act)
    A = t.activations
    held = t.logits_held + held_extra
    gradients = grads.formed
    per_elem = gradients / max(counts.total, 1) if training.method == "full" else 0.0
    # A tied embedding receives two gradients (lm_head, then the embedding lookup at the very end of
    # backward); autograd's InputBuffer adds them out of place: two more V x h gradients at that moment
    # (torch/csrc/autograd/input_buffer.cpp accumulate; measured: gpt2-xl step peak, docs/accuracy.md).
    tied = 2 * int(arch.vocab_size * arch.hidden_size * per_elem) if arch.tie_word_embeddings else 0
    step = grads.at_step + max(grads.step_temporaries, grads.norm_temporary) + held
    backward_t = t.temporaries + held_extra
    temporaries = max(backward_t, step - gradients - A, tied + held - A, grads.unreduced)
    naive = A + temporaries + gradients

    if grads.persistent or not gradients_formed_in_backward(training, strategy, hw) or gradients == 0:
        moments = {Moment.BACKWARD: A + backward_t + gradients + grads.unreduced, Moment.OPTIMIZER_STEP: step}
        if grads.norm_temporary:
            moments[Moment.GRADIENT_NORM] = grads.at_step + grads.norm_temporary + held
    else:
        # No parameter gradient exists during the loss backward. The output projection's backward forms the
        # head's weight gradient (the tied embedding's in full) while one fp32 N x V logits gradient is alive;
        # the top layer's backward adds the final norm's and its own. ZeRO-2 also holds one parameter's
        # full gradient before its bucket copy.
        head = int((counts.lm_head or counts.embedding) * per_elem)
        early = min(gradients, head + int((counts.final + counts.per_layer) * per_elem))
        logits_grad = training.micro_batch_size * training.seq_len * arch.vocab_size * 4
        # What the bottom layer's backward still holds: embedding output, RoPE cache, mask, the first layer's
        # saved set (<= per_layer), the caller's logits and one layer's backward transient.
        bottom_saved = t.embeddings + t.rope_cache + t.attention_mask + t.per_layer
        u = grads.unreduced
        moments = {
            Moment.LOSS_BACKWARD: A + t.loss_backward + held_extra,
            Moment.HEAD_BACKWARD: A + held + logits_grad + min(head, gradients) + u,
            Moment.TOP_LAYER_BACKWARD: A + t.layer_backward + held_extra + early + u,
            Moment.BOTTOM_LAYER_BACKWARD: min(A, bottom_saved) + held + max(t.layer_transient, 0) + gradients + u,
            Moment.EMBEDDING_BACKWARD: gradients + held + tied + u,
            Moment.OPTIMIZER_STEP: step,
        }
        if grads.norm_temporary:
            moments[Moment.GRADIENT_NORM] = grads.at_step + grads.norm_temporary + held
    moment = max(moments, key=moments.__getitem__)
    return StepPeak(dynamic=min(moments[moment], naive), naive=naive, temporaries=temporaries, moment=moment,
                    moments=moments)


__all__ = ["ActivationTerms", "Moment", "StepGradients", "StepPeak", "gradient_accumulation_steps",
           "gradients_formed_in_backward", "step_peak"]
