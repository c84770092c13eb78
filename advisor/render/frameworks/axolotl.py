"""axolotl: ``axolotl.yaml`` (``axolotl train``) and ``launch_axolotl.sh``.

Keys: axolotl's config schema (src/axolotl/utils/schemas/config.py AxolotlInputConfig, fsdp.py FSDPConfig;
plugin keys in src/axolotl/integrations/liger/args.py), axolotl 0.19.0 on PyPI,
github.com/axolotl-ai-cloud/axolotl; launchers from src/axolotl/cli/main.py (``--launcher torchrun -- ...``).
"""

from __future__ import annotations

from .common import VARIABLE_LENGTHS  # issue 17 (L)
from .common import Run, bnb_config, fsdp_strategy_word, sharded_params

CONFIG = "axolotl.yaml"
LAUNCH = "launch_axolotl.sh"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
ATTN_KEY = {"eager": "eager_attention", "sdpa": "sdp_attention", "flash": "flash_attention"}


def sections(run: Run) -> list[tuple[str, list[tuple[str, object, str]]]]:
    """axolotl config keys, by topic."""
    model: list[tuple[str, object, str]] = [
        ("base_model", run.model_id, "" if run.model_id_known else
         "a size or config.json stood for the model: put its hub id or local path here"),
        (ATTN_KEY[run.attention], True, f"--attention {run.attention}, as estimated")]
    adapter: list[tuple[str, object, str]] = []
    q = bnb_config(run)
    if run.method in ("lora", "qlora"):
        alpha = int(run.lora_alpha) if float(run.lora_alpha).is_integer() else run.lora_alpha
        adapter += [("adapter", run.method, f"--method {run.method}"), ("lora_r", run.lora_rank, "as estimated"),
                    ("lora_alpha", alpha, ""), ("lora_dropout", run.lora_dropout, "")]
        if run.all_linear:
            adapter.append(("lora_target_linear", True, "every linear layer but the lm_head (PEFT all-linear)"))
        else:
            adapter.append(("lora_target_modules", list(run.lora_targets), "as estimated"))
    if q is not None:
        kwargs = {"bnb_4bit_quant_type": q["bnb_4bit_quant_type"],
                  "bnb_4bit_use_double_quant": q["bnb_4bit_use_double_quant"]}
        if sharded_params(run):
            kwargs["bnb_4bit_quant_storage"] = q["bnb_4bit_quant_storage"]
        adapter += [("load_in_4bit", True, "QLoRA: 4-bit NF4 base weights"),
                    ("bnb_config_kwargs", kwargs, "double quantization as estimated"
                     + ("; quant storage in the compute dtype so ZeRO-3/FSDP can shard the 4-bit weights"
                        if sharded_params(run) else ""))]
    data = [("datasets", [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}],
             "axolotl's example set: replace with yours"),
            ("sequence_len", run.seq_len, "tokens per sample, as estimated"),
            ("sample_packing", False, ""),
            ("pad_to_sequence_len", True, "every sample is sequence_len tokens: the shape the estimate was made for")
            if not run.variable_lengths else   # issue 17 (L): axolotl's collator pads to the batch's longest (x 64)
            ("pad_to_sequence_len", False, VARIABLE_LENGTHS),
            ("output_dir", "./outputs/dsadvise", "")]
    train: list[tuple[str, object, str]] = [
        ("micro_batch_size", run.micro_batch, "the micro-batch the estimate was made for"),
        ("gradient_accumulation_steps", run.gas,
         f"global batch {run.micro_batch * run.gas * run.world} = {run.micro_batch} x {run.gas} x {run.world} GPUs"),
        ("num_epochs", 3, ""), ("learning_rate", 1.0e-4 if run.method in ("lora", "qlora") else 1.0e-5, ""),
        ("optimizer", run.optim, ""), ("lr_scheduler", "cosine", ""), ("max_grad_norm", 1.0, "")]
    if run.precision in ("bf16", "pure-bf16"):
        train.append(("bf16", True, "bf16 (axolotl loads the weights in bf16: at most what was estimated)"))
    elif run.precision == "fp16":
        train.append(("fp16", True, "fp16 mixed precision, as estimated"))
    else:
        train += [("bf16", False, "fp32, as estimated"), ("fp16", False, "")]
    fsdp = run.backend == "fsdp"
    ckpt = run.checkpointing and not fsdp
    train.append(("gradient_checkpointing", ckpt, "every decoder layer recomputed, as estimated" if ckpt else
                  ("FSDP checkpoints the wrapped layers (fsdp_config.activation_checkpointing)" if fsdp and
                   run.checkpointing else "no checkpointing, as estimated")))
    if run.offload_activations:
        train.append(("activation_offloading", True, "saved activations kept in CPU memory, as estimated"))
    kernels: list[tuple[str, object, str]] = []
    if run.loss == "fused-linear":
        kernels += [("plugins", [LIGER_PLUGIN], "Liger's fused linear cross-entropy: no logits tensor, as estimated"),
                    ("liger_fused_linear_cross_entropy", True, "")]
    dist: list[tuple[str, object, str]] = []
    if run.deepspeed:
        dist.append(("deepspeed", run.deepspeed, f"DeepSpeed ZeRO-{run.zero_stage}, written beside this file"))
    if fsdp:
        words = [fsdp_strategy_word(run), "auto_wrap"] + (["offload"] if run.fsdp_offload else [])
        cfg: dict = {"fsdp_version": 1, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                     "state_dict_type": run.fsdp_state_dict_type, "offload_params": run.fsdp_offload,
                     "cpu_ram_efficient_loading": True, "sync_module_states": True, "use_orig_params": True,
                     "activation_checkpointing": run.checkpointing}
        if run.fsdp_layer_cls:
            cfg["transformer_layer_cls_to_wrap"] = run.fsdp_layer_cls
        dist += [("fsdp", words, f"FSDP1 {run.fsdp_sharding}, one unit per decoder layer, as estimated"),
                 ("fsdp_config", cfg, "")]
    out = [("model", model), ("adapter", adapter), ("data", data), ("training", train), ("kernels", kernels),
           ("distributed", dist)]
    return [(title, items) for title, items in out if items]


def render(run: Run) -> dict[str, str]:
    """``axolotl.yaml`` and ``launch_axolotl.sh``."""
    from .templating import render_launch, render_yaml
    from .common import torchrun_command

    text = render_yaml([f"axolotl config generated by dsadvise for {run.model_id}. Run: ./{LAUNCH}"], sections(run))
    if run.world > 1 or run.deepspeed:
        cmd = ["axolotl", "train", CONFIG, "--launcher", "torchrun", "--"] + torchrun_command(run)[1:]
    else:
        cmd = ["axolotl", "train", CONFIG, "--launcher", "python"]
    env = [("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", "as estimated (--expandable-segments)")] \
        if run.expandable_segments else []
    script = render_launch([f"Generated by dsadvise: axolotl on {run.nodes} node(s) x {run.gpus_per_node} GPU(s)."],
                           env, cmd + ['"$@"'], multinode=run.nodes > 1, nodes=run.nodes)
    return {CONFIG: text, LAUNCH: script}
