"""FSDP gradient accumulation: the micro-batches accelerate runs under no_sync keep unsharded gradients (issue 17)."""

from __future__ import annotations

import pytest

# Llama-2-7B's parameter count (embeddings, 32 layers, norm, untied lm_head): the published 6,738,415,616.
LLAMA2_7B = 6_738_415_616
KW = dict(gpus=8, gpu="a100-80g", method="full", precision="bf16", micro_batch=1, seq_len=512, checkpointing="full")


def test_fsdp_accumulation_holds_the_whole_16_bit_gradient_on_every_gpu():
    # 8 GPUs, micro-batch 1: global batch 16 = 2 micro-batches a step, the first under FSDP no_sync, where
    # flat_param.grad stays unsharded in the compute dtype (bf16): 2 bytes per parameter on every GPU, on top
    # of the sharded gradients; global batch 8 (no accumulation) has none of it.
    from advisor.api import estimate
    from advisor.memory.model_states import FSDP_NO_SYNC_GRADIENTS

    one = estimate("llama-2-7b", strategy="fsdp-full", global_batch=8, **KW).per_gpu
    two = estimate("llama-2-7b", strategy="fsdp-full", global_batch=16, **KW).per_gpu
    assert FSDP_NO_SYNC_GRADIENTS not in one.breakdown
    assert two.breakdown[FSDP_NO_SYNC_GRADIENTS] == LLAMA2_7B * 2
    assert two.gradients - one.gradients == LLAMA2_7B * 2
    # alive through the backward (formed there, freed by the last micro-batch's reduce-scatter), not at the step
    backward, step = "backward (gradients persist)", "optimizer step"
    assert two.moments[backward] - one.moments[backward] == LLAMA2_7B * 2
    assert two.moments[step] == one.moments[step]
    # the simulated allocator holds them at the backward's peak
    assert two.allocated >= two.parameters + two.optimizer_states + two.moments[backward]


def test_fsdp_no_sync_gradients_stay_on_the_gpu_with_offload_and_need_sharding():
    # CPU offload: "the gradients will not be offloaded to CPU when inside the context manager" (torch FSDP
    # no_sync); NO_SHARD keeps whole gradients anyway (nothing more).
    from advisor.api import estimate
    from advisor.memory.model_states import FSDP_NO_SYNC_GRADIENTS

    off = estimate("llama-2-7b", strategy="fsdp-full", global_batch=16, offload_optimizer="cpu", offload_param="cpu",
                   **KW).per_gpu
    assert off.breakdown[FSDP_NO_SYNC_GRADIENTS] == LLAMA2_7B * 2
    ns1 = estimate("llama-2-7b", strategy="fsdp-no-shard", global_batch=8, **KW).per_gpu
    ns2 = estimate("llama-2-7b", strategy="fsdp-no-shard", global_batch=16, **KW).per_gpu
    assert FSDP_NO_SYNC_GRADIENTS not in ns2.breakdown and ns2.gradients == ns1.gradients


@pytest.mark.slow
def test_real_fsdp_no_sync_keeps_the_unsharded_gradient_dsadvise_counts():
    # Two gloo processes, FSDP FULL_SHARD with accelerate's bf16 mixed-precision policy, one micro-batch inside
    # model.no_sync(): every unit's flat_param.grad is the unsharded bf16 gradient, the bytes dsadvise counts
    # (benchmarks/fsdp_no_sync.py).
    from benchmarks.fsdp_no_sync import built, record

    rec = record("bf16", port=29651)
    assert rec["grad_bytes"] == rec["params"] * 2
    assert built("bf16", rec["params"]) == rec["grad_bytes"]


def test_fsdp_no_sync_gradients_are_formed_in_the_backward_not_kept_from_the_wrapping():
    # The allocator's sequence allocates them layer by layer in the backward and frees them at the step (like
    # gradients formed there), not as states allocated once after the wrapping: they cannot fill the blocks
    # the wrapping left cached before the step's churn starts.
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory import allocator as A
    from advisor.memory.bytes_per_param import state_bytes
    from advisor.memory.model_states import model_states
    from advisor.param_count import count_parameters

    hw = build_hardware(8, 1, None, "a100-80g", None, None, None)
    training = build_training(hw, seq_len=512, micro_batch=1, global_batch=16, precision="bf16", method="full",
                              checkpointing="full")
    strategy = build_strategy(hw, "fsdp-full")
    arch = resolve_model("llama-2-7b").architecture
    counts = count_parameters(arch)
    ms = model_states(arch, counts, counts.total, state_bytes(training, strategy), training, strategy, hw)
    layout = A.state_layout(arch, training, strategy, hw, ms, {}, False, arch.num_layers)
    assert abs(sum(layout.grads_layer) * 32 - LLAMA2_7B * 2) <= 32
    # what stays persistent per layer is the sharded gradient only (plus the parameters' and states' own)
    assert sum(layout.persistent_layer) * 32 < ms.parameters + ms.gradients - LLAMA2_7B * 2 + ms.optimizer_states


def test_fsdp_accumulation_keeps_the_layer_gradient_buffer_beside_the_no_sync_gradients():
    # Not a double count: from the second micro-batch on, each layer's new unsharded gradient reaches
    # flat_param as a tensor of its own and AccumulateGrad adds it in place into the no_sync .grad, so at the
    # backward's first layer (activations all held) the N accumulated layer gradients and that new one are
    # alive together (recorded: benchmarks/fsdp_no_sync.py, sync_fresh_accumulated_distinct). Llama-2-7B: one
    # layer's 202,383,360 parameters in bf16, 386 MiB, on top of the whole model's.
    from advisor.api import estimate
    from advisor.memory.model_states import FSDP_NO_SYNC_GRADIENTS

    two = estimate("llama-2-7b", strategy="fsdp-full", global_batch=16, **KW).per_gpu
    assert two.breakdown[FSDP_NO_SYNC_GRADIENTS] == LLAMA2_7B * 2
    assert two.breakdown["FSDP unsharded layer gradient"] == 202_383_360 * 2


@pytest.mark.slow
def test_real_fsdp_new_gradient_is_alive_beside_the_accumulated_one():
    # The synchronized micro-batch after one under no_sync: every unit's new gradient (bf16, unsharded) exists
    # beside its accumulated flat_param.grad, in a storage of its own.
    from benchmarks.fsdp_no_sync import record

    rec = record("bf16", port=29653)
    fresh = rec["sync_fresh_accumulated_distinct"]
    assert len(fresh) == 3 and sum(f[0] for f in fresh) == rec["params"] * 2
    assert all(new == acc and distinct for new, acc, distinct in fresh)
