"""ALST's tiled MLP (DeepSpeed ``TiledMLP``) in the activation estimate: ``--tiled-mlp``.

DeepSpeed 0.19.8 ``deepspeed/runtime/sequence_parallel/ulysses_sp.py`` ``TiledMLP`` is a
``torch.autograd.Function``: its forward runs the MLP on ``shards`` sequence chunks under ``torch.no_grad()``
and saves only its input (``ctx.save_for_backward(x)``); its backward re-runs each chunk's MLP with grad and
back-propagates it, one chunk at a time. So per decoder layer:

* the MLP's internal saved tensors (gate/up outputs, the activation's input/output, the down projection's
  input: everything that scales with ``intermediate_size``) are not saved; the MLP input ``x`` still is (the
  untiled gate/up projections save the same tensor);
* one chunk's internal tensors exist during that layer's backward (the recompute), a transient.

The MLP-internal bytes come from the replay (:func:`advisor.memory.activations.activation_memory`) by
difference: the replay at ``2 x intermediate_size`` minus the replay at ``intermediate_size`` is what the
``intermediate_size``-proportional tensors save (the replay is linear in it: checked in
tests/memory/test_tiling.py). Measured against DeepSpeed's ``TiledMLP`` on a real transformers Llama:
``benchmarks/tiled_memory.py``.

Shards: DeepSpeed's docstring example (and axolotl's ``tiled_mlp_num_shards`` default) uses
``ceil(seqlen / hidden_size)`` of the rank's local sequence; the backward chunks the flattened
``batch x seq`` rows, so a chunk holds ``ceil(batch x seq / shards)`` rows. Pure arithmetic, no torch.
"""

from __future__ import annotations

import math

from ..architecture import Architecture
from ..specs import StrategySpec, TrainingSpec
from .activations import REPLAYED_FAMILIES, ActivationEstimate, activation_memory

NOT_SAVED = "tiled MLP: MLP intermediates not saved (TiledMLP recomputes them in backward)"
SHARD = "tiled MLP: one shard's MLP intermediates, recomputed in backward (transient, at every backward moment)"


def tiled_mlp_shards(arch: Architecture, training: TrainingSpec) -> int:
    """Sequence shards of DeepSpeed's ``TiledMLP`` example: ``ceil(seq_len / hidden_size)`` (at least 1) of the
    sequence one rank runs (``training.seq_len`` is already the local one under ``--sp``)."""
    return max(1, math.ceil(training.seq_len / arch.hidden_size))


def tiling_applies(arch: Architecture, training: TrainingSpec, strategy: StrategySpec) -> str | None:
    """None when ``--tiled-mlp`` is modelled for this problem, else the reason it is counted untiled."""
    if training.task != "train":
        return "--tiled-mlp changes training only"
    if arch.is_moe:
        return "--tiled-mlp: the MoE block's tiling (axolotl DeepSpeedTiledMLPMoE) is not modelled; counted untiled"
    if arch.traced or arch.family not in REPLAYED_FAMILIES:
        return f"--tiled-mlp: {arch.family} is traced, not replayed; its MLP is counted untiled"
    if getattr(training, "offload_activations", False):
        return "--tiled-mlp with --offload-activations: counted untiled"
    if strategy.backend not in ("deepspeed", "single"):
        # TiledMLP's backward signals only ZeRO (param.ds_grad_is_ready) to wait for the last shard; DDP/FSDP
        # gradient hooks fire once per shard ("XXX: DDP, FSDP will need something similar", ulysses_sp.py)
        return "--tiled-mlp runs under DeepSpeed (or one GPU): DDP/FSDP are counted untiled"
    return None


def mlp_internal_bytes(arch: Architecture, training: TrainingSpec, mode: str) -> tuple[int, int]:
    """(bytes the MLP's ``intermediate_size``-proportional tensors save in all saving layers, in one layer) of
    one micro-batch: the replay at twice the width minus the replay at the width."""
    base = activation_memory(arch, training, mode).breakdown            # type: ignore[arg-type]
    wide = activation_memory(arch.model_copy(update={"intermediate_size": 2 * arch.intermediate_size}),
                             training, mode).breakdown                  # type: ignore[arg-type]
    return wide["layers"] - base["layers"], wide["per_layer"] - base["per_layer"]


def tiled_activations(arch: Architecture, training: TrainingSpec, strategy: StrategySpec, act: ActivationEstimate,
                      mode: str) -> tuple[ActivationEstimate, str]:
    """``act`` (the untiled replay) with DeepSpeed's TiledMLP around every decoder layer's MLP, and the note that
    says what was assumed (bytes per GPU). The untiled backward transient is kept (an upper bound: the
    recomputed chunk's gradients are smaller than the whole MLP's)."""
    why_not = tiling_applies(arch, training, strategy)
    if why_not:
        return act, why_not
    removed, per_layer = mlp_internal_bytes(arch, training, mode)
    shards = tiled_mlp_shards(arch, training)
    rows = training.micro_batch_size * training.seq_len
    chunk = math.ceil(per_layer * math.ceil(rows / shards) / rows) if removed else 0
    bd = dict(act.breakdown)
    bd["per_layer"] = bd["per_layer"] - per_layer
    if removed:
        bd[NOT_SAVED] = -removed
    if chunk:
        bd[SHARD] = chunk
    note = (f"--tiled-mlp: DeepSpeed TiledMLP in every layer, {shards} sequence shard(s) (ceil(seq {training.seq_len}"
            f" / hidden {arch.hidden_size}), DeepSpeed's example): the MLP saves only its input; "
            f"{removed / 2**30:.2f} GiB of MLP intermediates are recomputed per shard in backward")
    if not removed:
        note += " (with full checkpointing the layer saves only its input anyway; its recompute is counted untiled)"
    return act.model_copy(update=dict(activations=act.activations - removed + chunk, breakdown=bd)), note


__all__ = ["NOT_SAVED", "SHARD", "mlp_internal_bytes", "tiled_activations", "tiled_mlp_shards", "tiling_applies"]
