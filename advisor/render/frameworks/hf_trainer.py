"""The HF Trainer: ``hf_trainer_args.yaml`` (transformers ``TrainingArguments``, read with
``HfArgumentParser(TrainingArguments).parse_yaml_file``), ``hf_model_args.yaml`` (what the script passes to
``from_pretrained``, peft ``LoraConfig`` and transformers ``BitsAndBytesConfig``) and ``launch_hf_trainer.sh``.

Keys: transformers/training_args.py (TrainingArguments: deepspeed, fsdp, fsdp_config, gradient_checkpointing,
use_liger_kernel, liger_kernel_config), peft/tuners/lora/config.py, transformers/utils/quantization_config.py.
"""

from __future__ import annotations

from .common import Run, bnb_config, fsdp_strategy_word, load_dtype, lora_config, torchrun_command

ARGS = "hf_trainer_args.yaml"
MODEL_ARGS = "hf_model_args.yaml"
LAUNCH = "launch_hf_trainer.sh"

# Liger with only the fused linear cross-entropy (what --loss fused-linear estimates): the keyword arguments of
# liger_kernel.transformers' apply_liger_kernel_to_* functions.
LIGER_FLCE_ONLY = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rms_norm": False, "swiglu": False,
                   "rope": False}
ATTN = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}


def training_arguments(run: Run, *, output_dir: str = "output") -> list[tuple[str, object, str]]:
    """TrainingArguments keys (key, value, why) carrying the estimated settings."""
    fsdp = run.backend == "fsdp"
    items: list[tuple[str, object, str]] = [
        ("output_dir", output_dir, ""),
        ("per_device_train_batch_size", run.micro_batch, "the micro-batch the estimate was made for"),
        ("gradient_accumulation_steps", run.gas,
         f"global batch {run.micro_batch * run.gas * run.world} = {run.micro_batch} x {run.gas} x {run.world} GPUs"),
        ("max_grad_norm", 1.0, "ds_config.json's gradient_clipping \"auto\" takes it" if run.deepspeed else ""),
        ("optim", run.optim, ""),
        ("learning_rate", 1.0e-4 if run.method in ("lora", "qlora") else 1.0e-5, ""),
        ("num_train_epochs", 3.0, ""),
        ("logging_steps", 10, ""),
        ("report_to", "none", ""),
    ]
    # both written out: TRL's SFTConfig turns bf16 on when it is not given (trl/trainer/sft_config.py)
    bf16 = run.precision == "bf16" or (run.precision == "pure-bf16" and bool(run.deepspeed))
    items.append(("bf16", bf16, "bf16 mixed precision, as estimated" if run.precision == "bf16" else
                  "pure bf16: ds_config.json keeps no fp32 master copy (bf16_master_weights_and_grads)" if bf16 else
                  "pure bf16: the weights are loaded in bfloat16 (dtype), no autocast" if run.precision == "pure-bf16"
                  else "" if run.precision == "fp16" else "fp32, as estimated"))
    items.append(("fp16", run.precision == "fp16", "fp16 mixed precision with loss scaling, as estimated"
                  if run.precision == "fp16" else ""))
    ckpt = run.checkpointing and not fsdp
    items.append(("gradient_checkpointing", ckpt, "every decoder layer recomputed in backward, as estimated" if ckpt
                  else ("FSDP checkpoints the wrapped layers (fsdp_config.activation_checkpointing)" if fsdp and
                        run.checkpointing else "no checkpointing, as estimated")))
    if ckpt:
        items.append(("gradient_checkpointing_kwargs", {"use_reentrant": False}, "non-reentrant: works with frozen "
                                                                                 "inputs (LoRA) and ZeRO-3"))
    items.append(("use_liger_kernel", run.loss == "fused-linear",
                  "Liger's fused linear cross-entropy only (no logits tensor), as estimated"
                  if run.loss == "fused-linear" else "plain cross-entropy over the whole logits, as estimated"))
    if run.loss == "fused-linear":
        items.append(("liger_kernel_config", dict(LIGER_FLCE_ONLY), ""))
    if run.deepspeed:
        items.append(("deepspeed", run.deepspeed, f"DeepSpeed ZeRO-{run.zero_stage}, written beside this file"))
    if fsdp:
        words = [fsdp_strategy_word(run), "auto_wrap"] + (["offload"] if run.fsdp_offload else [])
        cfg: dict = {"version": 1, "backward_prefetch": "backward_pre", "use_orig_params": True,
                     "cpu_ram_efficient_loading": True, "sync_module_states": True,
                     "state_dict_type": run.fsdp_state_dict_type, "activation_checkpointing": run.checkpointing}
        if run.fsdp_layer_cls:
            cfg["transformer_layer_cls_to_wrap"] = [run.fsdp_layer_cls]
        items.append(("fsdp", " ".join(words), f"FSDP1 {run.fsdp_sharding}" + (" with CPU offload" if
                                                                             run.fsdp_offload else "")
                      + ", one unit per decoder layer, as estimated (accelerate_config.yaml says the same)"))
        items.append(("fsdp_config", cfg, ""))
    if run.sync_each_batch:
        # issue 17 (helper L): transformers AcceleratorConfig.gradient_accumulation_kwargs becomes accelerate's
        # GradientAccumulationPlugin (trainer.py create_accelerator_and_postprocess); the training loop then skips
        # no_sync when plugin_kwargs["sync_each_batch"] (trainer.py _inner_training_loop)
        items.append(("accelerator_config", {"gradient_accumulation_kwargs": {"sync_each_batch": True}},
                      "--sync-each-batch: every micro-batch reduce-scatters its gradients (no unsharded gradients "
                      "under no_sync), as estimated"))
    return items


def model_arguments(run: Run) -> list[tuple[str, object, str]]:
    """What the script hands to from_pretrained / LoraConfig / BitsAndBytesConfig, and the sequence length."""
    items: list[tuple[str, object, str]] = [
        ("model_name_or_path", run.model_id, "" if run.model_id_known else
         "a size or config.json stood for the model: put its hub id or local path here"),
        ("dtype", load_dtype(run), "from_pretrained(dtype=...): the weight dtype the estimate counts (transformers 5 "
                                   "would otherwise load the checkpoint's dtype)"),
        ("attn_implementation", ATTN[run.attention], f"--attention {run.attention}, as estimated"),
        ("max_seq_length", run.seq_len, "tokenize with truncation to this many tokens: the estimate's sequence length"),
    ]
    lora, q = lora_config(run), bnb_config(run)
    if q is not None:
        items.append(("quantization_config", q, "BitsAndBytesConfig(**quantization_config): QLoRA's 4-bit base"))
    if lora is not None:
        items.append(("lora_config", lora, "peft LoraConfig(**lora_config), as estimated"))
    return items


def render(run: Run) -> dict[str, str]:
    """``hf_trainer_args.yaml``, ``hf_model_args.yaml`` and ``launch_hf_trainer.sh``."""
    from .templating import render_launch, render_yaml

    args = render_yaml([f"transformers TrainingArguments generated by dsadvise for {run.model_id}. Read it with "
                        f"HfArgumentParser(TrainingArguments).parse_yaml_file('{ARGS}')."],
                       [("TrainingArguments", training_arguments(run))])
    model = render_yaml(["What your script passes to AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=..., "
                         "attn_implementation=..., quantization_config=BitsAndBytesConfig(**quantization_config)), "
                         "peft's get_peft_model(model, LoraConfig(**lora_config)) and the tokenizer (max_seq_length)."],
                        [("model", model_arguments(run))])
    cmd = (torchrun_command(run) if run.world > 1 or run.deepspeed else ["python"]) + \
        ['"${1:?usage: launch_hf_trainer.sh TRAINING_SCRIPT [ARGS...]}"', ARGS, MODEL_ARGS, '"${@:2}"']
    env = [("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", "as estimated (--expandable-segments)")] \
        if run.expandable_segments else []
    script = render_launch([f"Generated by dsadvise: the HF Trainer on {run.nodes} node(s) x {run.gpus_per_node} "
                            f"GPU(s). Usage: ./{LAUNCH} train.py (your script reads {ARGS} and {MODEL_ARGS})."],
                           env, cmd, multinode=run.nodes > 1, nodes=run.nodes)
    return {ARGS: args, MODEL_ARGS: model, LAUNCH: script}
