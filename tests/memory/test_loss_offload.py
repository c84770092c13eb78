"""Loss kernels, activation offloading, LoRA dropout and NF4 without double quantization in the estimate,
with expected bytes derived by hand from the algorithms the estimator cites."""

from advisor.api import estimate
from advisor.catalog.models import resolve_model
from advisor.memory import activations as act
from advisor.memory.bytes_per_param import NF4_BYTES, NF4_DOUBLE_QUANT_BYTES
from advisor.specs import LoraSpec, TrainingSpec

ARCH = resolve_model("llama-3.2-1b").architecture        # h 2048, V 128256


def terms(**kw):
    t = TrainingSpec(seq_len=512, micro_batch_size=1, precision="fp32", **kw)
    return act._trace_model(ARCH, act._trace_key(t), "fp32", "none")


def test_plain_loss_saves_fp32_log_probs_and_the_head_input_and_holds_the_logits():
    N, V, h = 512, ARCH.vocab_size, ARCH.hidden_size
    t = terms(loss="plain")
    # log_softmax result N x V fp32 + lm_head input N x h fp32 + nll target (N+1 int64 at batch 1) + total_weight
    assert t["logits_and_loss"] == N * V * 4 + N * h * 4 + (N + 1) * 8 + 4
    assert t["logits_held"] == N * V * 4


def test_chunked_loss_holds_no_logits_and_runs_its_backward_per_chunk():
    N, V = 512, ARCH.vocab_size
    plain, chunked = terms(loss="plain"), terms(loss="chunked", loss_chunks=8)
    assert chunked["logits_held"] == 0
    # the logits list (all chunks) lives until `del logits` at the end of the forward
    assert chunked["forward_end"] == N * V * 4
    # plain: two fp32 N x V gradients in the loss backward (less the nll targets already released);
    # chunked: those of one chunk (+ its logits gradient)
    assert 2 * N * V * 4 - (N + 1) * 8 - 4 <= plain["bw_head"] <= 2 * N * V * 4 + 4
    assert chunked["bw_head"] < plain["bw_head"] / 4


def test_fused_linear_saves_grad_input_and_grad_weight_only():
    N, V, h = 512, ARCH.vocab_size, ARCH.hidden_size
    t = terms(loss="fused-linear")
    assert t["logits_held"] == 0
    # Liger: grad_input N x h and grad_weight V x h (fp32 here), saved; nothing N x V
    assert t["logits_and_loss"] == N * h * 4 + V * h * 4
    # the forward's chunk logits: next_pow2(ceil(N / ceil(V / h))) rows of V; ceil(128256/2048) = 63,
    # ceil(512/63) = 9 -> 16 rows; plus the fp32 per-token losses
    assert t["forward_end"] == 16 * V * 4 + N * 4


def test_offload_moves_saved_activations_to_pinned_cpu_memory():
    kw = dict(gpu="a100-80g", seq_len=2048, method="lora")
    on, off = estimate("llama-3.2-1b", offload_activations=True, **kw), estimate("llama-3.2-1b", **kw)
    assert on.per_gpu.activations == 0 < off.per_gpu.activations
    pinned = on.per_node_cpu.breakdown["offloaded activations (pinned)"]
    assert pinned == off.per_gpu.activations
    assert on.per_gpu.total < off.per_gpu.total
    assert any("offload-activations" in n for n in on.notes)


def test_lora_dropout_saves_a_mask_and_a_dropped_copy_per_adapted_linear():
    N, h = 512, ARCH.hidden_size
    base = dict(seq_len=512, micro_batch_size=1, method="lora")
    no = act.activation_memory(ARCH, TrainingSpec(**base, lora=LoraSpec(target_modules=("q_proj", "v_proj"))),
                               "autocast-bf16")
    yes = act.activation_memory(ARCH, TrainingSpec(**base, lora=LoraSpec(target_modules=("q_proj", "v_proj"),
                                                                         dropout=0.1)), "autocast-bf16")
    # Under autocast each lora_A saves autocast's bf16 cast of its input (N x h x 2, one per adapter, with or
    # without dropout: casts of activations are not cached). Dropout adds what native_dropout saves: a bool
    # mask of N x h bytes per adapter (the fp32 dropped copy itself is freed once cast).
    assert yes.breakdown["per_layer"] - no.breakdown["per_layer"] == 2 * N * h * 1


def test_no_double_quant_stores_4_5_bits_per_weight():
    assert NF4_BYTES == 4.5 / 8 and round(NF4_DOUBLE_QUANT_BYTES * 8, 3) == 4.127
    dq = estimate("llama-2-7b", gpu="a100-80g", method="qlora")
    nodq = estimate("llama-2-7b", gpu="a100-80g", method="qlora", double_quant=False)
    assert nodq.per_gpu.parameters > dq.per_gpu.parameters


def test_a_traced_family_says_the_chosen_loss_is_not_applied():
    """falcon has no forward replay: its activations are traced on the real transformers model, whose plain loss is
    what gets counted, so a --loss the user chose must be named as not applied (never ignored silently)."""
    from advisor.api import estimate

    chosen = estimate("falcon-7b", gpu="a100-80g", seq_len=256, loss="fused-linear")
    plain = estimate("falcon-7b", gpu="a100-80g", seq_len=256)
    assert any("--loss fused-linear is not applied" in n for n in chosen.notes)
    assert not any("is not applied" in n for n in plain.notes)
    assert chosen.per_gpu.total == plain.per_gpu.total      # the same traced model, the same bytes
    replayed = estimate("llama-2-7b", gpu="a100-80g", seq_len=256, loss="fused-linear")
    assert not any("is not applied" in n for n in replayed.notes)


def test_accelerate_fp32_copy_of_the_logits_only_where_the_model_returns_logits():
    """accelerate's convert_outputs_to_fp32 (native AMP, not DeepSpeed) copies returned 16-bit logits to fp32
    (+2 bytes per logit); Liger's fused linear cross-entropy returns logits=None in training
    (liger_kernel/transformers/model/llama.py lce_forward), so nothing is copied; a traced family runs the real
    model's plain loss whatever --loss says, so its logits are copied."""
    from advisor.memory.core import accelerate_fp32_logits
    from advisor.specs import StrategySpec

    ddp, zero2 = StrategySpec(backend="ddp"), StrategySpec(backend="deepspeed", zero_stage=2)
    N, V = 2 * 512, ARCH.vocab_size
    t = TrainingSpec(seq_len=512, micro_batch_size=2, precision="bf16")
    assert accelerate_fp32_logits(ARCH, t, ddp) == N * V * 2
    assert accelerate_fp32_logits(ARCH, t, zero2) == 0
    fused = t.model_copy(update={"loss": "fused-linear"})
    assert accelerate_fp32_logits(ARCH, fused, ddp) == 0
    traced = ARCH.model_copy(update={"traced": True})
    assert accelerate_fp32_logits(traced, fused, ddp) == N * V * 2
