"""LLaMA-Factory: ``llamafactory_train.yaml`` (``llamafactory-cli train``) and its launch line.

Keys are LLaMA-Factory's argument dataclasses (src/llamafactory/hparams/{model,data,finetuning,training}_args.py,
llamafactory 0.9.5 on PyPI, github.com/hiyouga/LLaMA-Factory); the launch follows src/llamafactory/launcher.py
(``FORCE_TORCHRUN=1`` starts torchrun with NNODES / NODE_RANK / NPROC_PER_NODE / MASTER_ADDR / MASTER_PORT) and
README's FSDP recipe (``accelerate launch --config_file ... `` over the launcher module).
"""

from __future__ import annotations

from ...errors import InputError
from .common import VARIABLE_LENGTHS  # issue 17 (L)
from .common import Run, bnb_config, sharded_params

CONFIG = "llamafactory_train.yaml"
LAUNCH = "launch_llamafactory.sh"

# LLaMA-Factory's flash_attn choices (extras/constants.py AttentionFunction) for our --attention.
FLASH_ATTN = {"eager": "disabled", "sdpa": "sdpa", "flash": "fa2"}


def config(run: Run) -> dict:
    """The training YAML as an ordered mapping of sections → [(key, value, why)]."""
    if run.precision == "pure-bf16" and run.backend == "deepspeed" and run.zero_stage == 3:
        raise InputError("--framework llamafactory: pure_bf16 is incompatible with DeepSpeed ZeRO-3 there "
                         "(hparams/parser.py refuses it): use --precision bf16 or another strategy",
                         field="--precision")
    fsdp = run.backend == "fsdp"
    model = [("model_name_or_path", run.model_id, "" if run.model_id_known else
              "a size or config.json stood for the model: put its hub id or local path here"),
             ("flash_attn", FLASH_ATTN[run.attention], f"--attention {run.attention}, as estimated"),
             ("enable_liger_kernel", run.loss == "fused-linear",
              "Liger's fused linear cross-entropy: no logits tensor (also swaps RMSNorm/SwiGLU/RoPE kernels, "
              "which only lowers memory)" if run.loss == "fused-linear" else "plain cross-entropy over the whole "
              "logits, as estimated"),
             ("disable_gradient_checkpointing", fsdp or not run.checkpointing,
              "LLaMA-Factory checkpoints every layer unless disabled; "
              + ("FSDP checkpoints the layers itself (accelerate_config.yaml fsdp_activation_checkpointing)" if fsdp
                 else "as estimated: " + ("checkpointing on" if run.checkpointing else "no checkpointing")))]
    q = bnb_config(run)
    if q is not None:
        model += [("quantization_bit", 4, "QLoRA: 4-bit base weights (bitsandbytes)"),
                  ("quantization_method", "bnb", ""),
                  ("quantization_type", "nf4", ""),
                  ("double_quantization", run.double_quant, "bnb_4bit_use_double_quant, as estimated"
                   + ("; under ZeRO-3/FSDP LLaMA-Factory sets bnb_4bit_quant_storage to the compute dtype itself "
                      "(model/model_utils/quantization.py)" if sharded_params(run) else ""))]
    method = [("stage", "sft", ""), ("do_train", True, ""),
              ("finetuning_type", {"qlora": "lora"}.get(run.method, run.method), f"--method {run.method}")]
    if run.method in ("lora", "qlora"):
        alpha = int(run.lora_alpha) if float(run.lora_alpha).is_integer() else run.lora_alpha
        method += [("lora_rank", run.lora_rank, "as estimated"), ("lora_alpha", alpha, ""),
                   ("lora_dropout", run.lora_dropout, ""),
                   ("lora_target", "all" if run.all_linear else ",".join(run.lora_targets),
                    "every linear layer but the lm_head (PEFT all-linear)" if run.all_linear else "as estimated")]
    if run.method == "freeze":
        method += [("freeze_trainable_layers", run.freeze_layers, "the last N decoder layers train, as estimated")]
    if run.deepspeed:
        method += [("deepspeed", run.deepspeed, "written beside this file; its batch sizes are \"auto\" (filled "
                                                "from the keys below)")]
    dataset = [("dataset", "alpaca_en_demo", "LLaMA-Factory's demo set: replace with yours (data/dataset_info.json)"),
               ("template", "default", "replace with your model's chat template"),
               ("cutoff_len", run.seq_len, "tokens per sample, as estimated (shorter samples use less)"),
               ("packing", False, VARIABLE_LENGTHS if run.variable_lengths else "")]   # issue 17 (L)
    output = [("output_dir", "saves/dsadvise", ""), ("logging_steps", 10, ""), ("save_steps", 500, ""),
              ("plot_loss", True, "")]
    train = [("per_device_train_batch_size", run.micro_batch, "the micro-batch the estimate was made for"),
             ("gradient_accumulation_steps", run.gas,
              f"global batch {run.micro_batch * run.gas * run.world} = {run.micro_batch} x {run.gas} x {run.world} GPUs"),
             ("learning_rate", 1.0e-4 if run.method in ("lora", "qlora") else 1.0e-5, ""),
             ("num_train_epochs", 3.0, ""), ("lr_scheduler_type", "cosine", ""),
             ("optim", run.optim, "")]
    if run.precision == "bf16":
        train.append(("bf16", True, "bf16 mixed precision, as estimated"))
    elif run.precision == "fp16":
        train.append(("fp16", True, "fp16 mixed precision, as estimated"))
    elif run.precision == "pure-bf16":
        train.append(("pure_bf16", True, "bf16 weights without an fp32 master copy, as estimated"))
    train.append(("ddp_timeout", 180000000, "LLaMA-Factory's examples: long data preprocessing does not time out"))
    return {"model": model, "method": method, "dataset": dataset, "output": output, "train": train}


def launch(run: Run) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    """(environment, command, notes) of the launch line."""
    env: list[tuple[str, str, str]] = []
    notes: list[str] = []
    if run.backend == "fsdp":
        cmd = ["accelerate", "launch", "--config_file", "accelerate_config.yaml", "-m", "llamafactory.launcher", CONFIG]
        notes.append("FSDP: accelerate launch with accelerate_config.yaml over LLaMA-Factory's launcher module "
                     "(its README's FSDP recipe)")
        if run.nodes > 1:
            cmd[2:2] = ["--machine_rank", '"$NODE_RANK"']
        return env, cmd, notes
    # always torchrun: without FORCE_TORCHRUN, llamafactory-cli starts one process per visible GPU (launcher.py)
    env.append(("FORCE_TORCHRUN", "1", "llamafactory-cli starts torchrun with exactly these processes (required "
                                       "with DeepSpeed; without it, it takes every visible GPU)"))
    env += [("NNODES", str(run.nodes), ""), ("NPROC_PER_NODE", str(run.gpus_per_node), "")]
    if run.nodes == 1:
        env += [("MASTER_ADDR", run.main_process_ip, ""), ("MASTER_PORT", str(run.main_process_port), "")]
    else:
        env += [("MASTER_PORT", str(run.main_process_port), "")]
    if not run.expandable_segments:
        notes.append("llamafactory-cli's torchrun sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (OPTIM_TORCH "
                     "defaults to 1); the estimate assumed the default allocator, which needs more: it stays an "
                     "upper bound (or re-estimate with --expandable-segments)")
    return env, ["llamafactory-cli", "train", CONFIG], notes


def render(run: Run) -> dict[str, str]:
    """``llamafactory_train.yaml`` and ``launch_llamafactory.sh``."""
    from .templating import render_launch, render_yaml

    sections = config(run)
    env, cmd, notes = launch(run)
    header = [f"LLaMA-Factory training config generated by dsadvise for {run.model_id}: {run.backend}"
              + (f" ZeRO-{run.zero_stage}" if run.zero_stage is not None else "")
              + f", {run.world} GPU(s). Run: ./{LAUNCH}  ("
              + " ".join([f"{k}={v}" for k, v, _ in env] + cmd) + ")"]
    text = render_yaml(header + notes, list(sections.items()))
    head = [f"Generated by dsadvise: LLaMA-Factory on {run.nodes} node(s) x {run.gpus_per_node} GPU(s)."]
    if run.nodes > 1:
        head.append("Multi-node: run on every node with NODE_RANK=0..N-1 and MASTER_ADDR=node 0's address.")
    script = render_launch(head + notes, env, cmd + ['"$@"'], multinode=run.nodes > 1, nodes=run.nodes)
    return {CONFIG: text, LAUNCH: script}
