"""TRL: ``trl_sft.yaml`` for ``trl sft --config`` (TrlParser over ScriptArguments, SFTConfig and ModelConfig:
trl/scripts/sft.py) and ``launch_trl.sh``.

Keys: trl/trainer/sft_config.py (SFTConfig = TrainingArguments + max_length, packing, activation_offloading),
trl/trainer/model_config.py (ModelConfig: dtype, attn_implementation, use_peft, lora_*, load_in_4bit,
bnb_4bit_*), trl/scripts/utils.py (ScriptArguments.dataset_name).
"""

from __future__ import annotations

from .common import VARIABLE_LENGTHS  # issue 17 (L)
from .common import Run, bnb_config, load_dtype, lora_config, torchrun_command
from .hf_trainer import ATTN, training_arguments

CONFIG = "trl_sft.yaml"
LAUNCH = "launch_trl.sh"

# TRL 1.16's SFTTrainer loss: trl/trainer/sft_trainer.py __init__ patches every model with add_fused_lm_head
# (trl/trainer/utils.py) and compute_loss calls model(..., fused_lm_head=True) unless compute_loss_func or
# label_smoothing_factor is set (neither is rendered); the head runs ChunkedLogProbFunction
# (trl/kernels/chunked_logprob.py) in tiles of TOKEN_CHUNK_SIZE tokens x _CHUNKED_LOGPROB_CHUNK_SIZE columns.
TRL_TOKEN_TILE = 4096
TRL_VOCAB_TILE = 32768


def trl_head_bytes(run: Run) -> tuple[int, int]:
    """(saved, transient) bytes of TRL's fused LM head for one micro-batch, CUDA (Triton fold, every label valid;
    ChunkedLogProbFunction): saved for backward the N x h hidden states it is given (``hidden[mask]``, a copy),
    the targets (int64) and log-normalizer and entropy (fp32) per token; transient, the larger of the forward
    (one min(N, 4096) x min(V, 32768) tile in the compute dtype, the hidden / weight chunks cast to it, seven
    fp32 per-token statistics) and the backward (the same tile and casts, an fp32 N x h input gradient and, when
    the head trains in 16-bit weights, an fp32 V x h weight gradient beside the parameter's own; with fp32
    weights that fp32 gradient is the parameter's gradient, counted with the gradients). Measured on the CPU in
    benchmarks/trl_loss.py."""
    n, h, v = run.micro_batch * run.seq_len, run.hidden_size, run.vocab_size   # as the replay (tr.N)
    w = 4 if load_dtype(run) == "float32" and not (run.backend == "fsdp" and run.precision != "fp32") else 2
    c = 4 if run.precision == "fp32" else 2           # autocast's dtype, else the weights'
    a = w                                              # the final norm's output follows the residual stream
    tile = min(n, TRL_TOKEN_TILE) * min(v, TRL_VOCAB_TILE) * c
    casts = (min(n, TRL_TOKEN_TILE) * h * c if a != c else 0) + (min(v, TRL_VOCAB_TILE) * h * c if w != c else 0)
    saved = n * h * a + 16 * n
    fwd = tile + casts + 28 * n
    bwd = tile + casts + 4 * n * h + (n * h * a if a != 4 else 0) \
        + (4 * v * h if run.method == "full" and w != 4 else 0)
    return saved, max(fwd, bwd)


def plain_head_bytes(run: Run) -> int:
    """What ``--loss plain`` counts for the head at its backward (advisor/families/replay.py cross_entropy): the
    logits the output holds, their fp32 log-probabilities, two fp32 N x V gradients."""
    n, v = run.micro_batch * run.seq_len, run.vocab_size
    return n * v * ((4 if run.precision == "fp32" else 2) + 4 + 8)


def head_note(run: Run) -> str:
    """One line: what TRL's loss is and how this run's estimate counts it."""
    from ...formatting import fmt_bytes

    saved, transient = trl_head_bytes(run)
    trl = fmt_bytes(saved + transient)
    head = (f"TRL's SFTTrainer always computes the loss with its own tiled fused LM head (add_fused_lm_head, "
            f"{TRL_TOKEN_TILE} x {TRL_VOCAB_TILE} tiles, no logits tensor)")
    if run.loss == "trl-head" and run.loss_replayed:
        return (f"{head}: estimated as --loss trl-head, that head (~{trl} at its backward: {fmt_bytes(saved)} saved, "
                f"{fmt_bytes(transient)} transient)")
    plain = plain_head_bytes(run)
    how = (f"estimated as --loss {run.loss}" if run.loss_replayed else
           f"{run.family} is traced on the real model, whose plain loss is counted")
    if plain >= saved + transient:
        return f"{head}: {how}, an upper bound (TRL's head ~{trl} at its backward, {fmt_bytes(plain)} counted)"
    return (f"{head}: {how}, which here counts ~{fmt_bytes(saved + transient - plain)} LESS than TRL's head ({trl} "
            f"at its backward, {fmt_bytes(plain)} counted: the fp32 V x h gradient TRL forms for a trained 16-bit "
            "lm_head exceeds the logits of so few tokens)")


def sections(run: Run) -> list[tuple[str, list[tuple[str, object, str]]]]:
    """ScriptArguments, ModelConfig and SFTConfig keys."""
    script = [("dataset_name", "trl-lib/Capybara", "TRL's example set: replace with yours")]
    model: list[tuple[str, object, str]] = [
        ("model_name_or_path", run.model_id, "" if run.model_id_known else
         "a size or config.json stood for the model: put its hub id or local path here"),
        ("dtype", load_dtype(run), "the weight dtype the estimate counts"),
        ("attn_implementation", ATTN[run.attention], f"--attention {run.attention}, as estimated")]
    lora, q = lora_config(run), bnb_config(run)
    if lora is not None:
        model += [("use_peft", True, f"--method {run.method}"), ("lora_r", lora["r"], "as estimated"),
                  ("lora_alpha", lora["lora_alpha"], ""), ("lora_dropout", lora["lora_dropout"], ""),
                  ("lora_target_modules", lora["target_modules"] if isinstance(lora["target_modules"], list)
                   else [lora["target_modules"]], "")]
    if q is not None:
        model += [("load_in_4bit", True, "QLoRA: 4-bit NF4 base weights"),
                  ("bnb_4bit_quant_type", q["bnb_4bit_quant_type"], ""),
                  ("use_bnb_nested_quant", q["bnb_4bit_use_double_quant"], "double quantization, as estimated")]
        if "bnb_4bit_quant_storage" in q:
            model.append(("bnb_4bit_quant_storage", q["bnb_4bit_quant_storage"],
                          "ZeRO-3/FSDP shard the 4-bit weights only when stored in the compute dtype"))
    sft = [(k, v, "Liger's kernels off: TRL's own fused LM head computes the loss (the header says how it is "
                  "estimated)") if k == "use_liger_kernel" else (k, v, why)
           for k, v, why in training_arguments(run, output_dir="output")]
    sft += [("max_length", run.seq_len, "tokens per sample (truncated), as estimated"),
            ("packing", False, VARIABLE_LENGTHS if run.variable_lengths else "")]   # issue 17 (L)
    if run.offload_activations:
        sft.append(("activation_offloading", True, "saved activations kept in CPU memory, as estimated"))
    return [("ScriptArguments", script), ("ModelConfig", model), ("SFTConfig", sft)]


def render(run: Run) -> dict[str, str]:
    """``trl_sft.yaml`` and ``launch_trl.sh``."""
    from .templating import render_launch, render_yaml

    text = render_yaml([f"TRL SFT config generated by dsadvise for {run.model_id}. Run: ./{LAUNCH} (trl sft "
                        f"--config {CONFIG} on one GPU).", head_note(run) + "."], sections(run))
    cmd = (torchrun_command(run) if run.world > 1 or run.deepspeed else ["python"]) + \
        ["-m", "trl.scripts.sft", "--config", CONFIG, '"$@"']
    env = [("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", "as estimated (--expandable-segments)")] \
        if run.expandable_segments else []
    script = render_launch([f"Generated by dsadvise: TRL SFT on {run.nodes} node(s) x {run.gpus_per_node} GPU(s)."],
                           env, cmd, multinode=run.nodes > 1, nodes=run.nodes)
    return {CONFIG: text, LAUNCH: script}
