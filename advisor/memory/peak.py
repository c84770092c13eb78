"""When in a training step memory peaks: the moments of one step and what is alive at each.

The naive peak adds every term: parameters + gradients + optimizer states + activations + temporaries.
Gradients and activations are not all alive at once when gradients are *formed* during backward and freed
by ``optimizer.zero_grad(set_to_none=True)`` (the default since torch 2.0, used by accelerate and the HF
Trainer): backward frees a layer's saved tensors as it forms that layer's gradients. This module places
each transient at the moment it occurs:

* ``loss backward``  - every activation is saved; the loss/logits gradients are live; no parameter
  gradient exists yet.
* ``output head backward`` - one logits gradient and the head's weight gradient.
* ``top layer backward`` - the last decoder layer's backward transient; the head's saved tensors are gone.
* ``bottom layer backward`` - only the embedding output, the first layer's saved set and the logits the
  caller holds remain; every gradient but the embedding's exists.
* ``embedding backward`` - every gradient; a tied embedding's two gradients are summed out of place.
* ``optimizer step`` - all gradients, the optimizer's step temporaries and the logits the caller still
  holds (``outputs = model(**batch)`` stays in scope through ``optimizer.step()`` in accelerate's loops).

Where gradients persist across the step (DeepSpeed's partitioned gradient buffers, FSDP's sharded
gradients, gradient accumulation over several micro-batches, adapters), every moment carries all of
them and the peak is the plain sum. Validated against the profiler's peak of whole training steps in
``docs/accuracy.md`` ("Whole training step").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..architecture import Architecture
from ..batching import gradient_accumulation
from ..param_count import ParameterCounts
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .activations import ActivationEstimate


@dataclass(frozen=True)
class StepPeak:
    """Bytes per GPU above the persistent states (parameters, optimizer states, buffers) at the worst
    moment of one training step, and the naive sum it replaces (``phase_overlap = naive - dynamic``)."""

    dynamic: int                    # activations + transients + gradients alive at the peak moment
    naive: int                      # activations + temporaries + gradients, all added
    moment: str                     # name of the peak moment
    moments: dict[str, int] = field(default_factory=dict)

    @property
    def phase_overlap(self) -> int:
        return self.naive - self.dynamic


def gradient_accumulation_steps(training: TrainingSpec, hw: HardwareSpec) -> int:
    """Micro-batches per optimizer step (:func:`advisor.batching.gradient_accumulation`)."""
    return gradient_accumulation(training.global_batch_size, training.micro_batch_size, hw.world_size)


def gradients_formed_in_backward(training: TrainingSpec, strategy: StrategySpec, hw: HardwareSpec) -> bool:
    """True when a step's parameter gradients are created during its backward and freed after the step.

    Single-GPU and DDP training with ``zero_grad(set_to_none=True)`` and no accumulation: ``param.grad`` is
    None at the forward (torch.optim.Optimizer.zero_grad, default set_to_none since torch 2.0) and
    AccumulateGrad creates it when the parameter's gradient arrives. DeepSpeed ZeRO keeps flat gradient
    partitions between steps and FSDP's sharded gradients are not measured here: both keep the sum."""
    return (strategy.backend in ("single", "ddp") and training.method == "full"
            and gradient_accumulation_steps(training, hw) == 1)


def step_peak(arch: Architecture, counts: ParameterCounts, training: TrainingSpec, strategy: StrategySpec,
              hw: HardwareSpec, act: ActivationEstimate, gradients: int, step_temporaries: int) -> StepPeak:
    """The peak of activations, transients and gradients over the moments of one step (bytes per GPU)."""
    bd = act.breakdown
    A = act.activations
    held = bd.get("info:logits_output_held", 0)
    t_loss = bd.get("temp:logits_and_loss_backward", act.temporaries)
    t_top = bd.get("temp:layer_backward", act.temporaries)
    per_elem = gradients / max(counts.total, 1) if training.method == "full" else 0.0
    # A tied embedding receives two gradients (lm_head, then the embedding lookup at the very end of
    # backward); autograd's InputBuffer adds them out of place: two more V x h gradients at that moment
    # (torch/csrc/autograd/input_buffer.cpp accumulate; measured: gpt2-xl step peak, docs/accuracy.md).
    tied = 2 * int(arch.vocab_size * arch.hidden_size * per_elem) if arch.tie_word_embeddings else 0
    temporaries = max(act.temporaries, step_temporaries + held - A, tied + held - A)
    naive = A + temporaries + gradients
    if not gradients_formed_in_backward(training, strategy, hw) or gradients == 0:
        return StepPeak(dynamic=naive, naive=naive, moment="all terms added (gradients persist)",
                        moments={"all terms added": naive})

    # No parameter gradient exists during the loss backward. The output projection's backward forms the
    # head's weight gradient (the tied embedding's in full) while one fp32 N x V logits gradient is alive;
    # the top layer's backward adds the final norm's and its own.
    head = int((counts.lm_head or counts.embedding) * per_elem)
    early = min(gradients, head + int((counts.final + counts.per_layer) * per_elem))
    logits_grad = training.micro_batch_size * training.seq_len * arch.vocab_size * 4
    # What the bottom layer's backward still holds: embedding output, RoPE cache, mask, the first layer's
    # saved set (<= per_layer), the caller's logits and one layer's backward transient.
    head_saved = bd.get("final_norm", 0) + bd.get("logits_and_loss", 0)
    layer_transient = bd.get("info:layer_transient", t_top + head_saved - held)
    bottom_saved = (bd.get("embeddings", 0) + bd.get("rope_cache", 0) + bd.get("attention_mask", 0)
                    + bd.get("per_layer", 0))
    moments = {
        "loss backward": A + t_loss,
        "output head backward": A + held + logits_grad + min(head, gradients),
        "top layer backward": A + t_top + early,
        "bottom layer backward": min(A, bottom_saved) + held + max(layer_transient, 0) + gradients,
        "embedding backward": gradients + held + tied,
        "optimizer step": gradients + step_temporaries + held,
    }
    moment = max(moments, key=moments.__getitem__)
    return StepPeak(dynamic=min(moments[moment], naive), naive=naive, moment=moment, moments=moments)


__all__ = ["StepPeak", "gradient_accumulation_steps", "gradients_formed_in_backward", "step_peak"]
