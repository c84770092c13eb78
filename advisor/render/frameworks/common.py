"""What every training framework's config must carry: the settings the memory estimate was made for, read
from the validated specs once, and the refusals for settings a framework cannot express.

A framework file that cannot say what was estimated is refused (InputError naming ``--framework``) rather than
written with a silent difference: what launches is what was estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...catalog.models import ResolvedModel
from ...errors import InputError
from ...param_count import ALL_LINEAR, native_linear_names
from ...specs import HardwareSpec, StrategySpec, TrainingSpec
from ...memory.bytes_per_param import fp32_lora_base, fp32_qlora_rest
from ...memory.checkpoint_save import consolidated_save   # issue 17: --checkpoint-save
from ..context import FSDP_LAYER_CLASSES

DS_CONFIG = "ds_config.json"

# transformers TrainingArguments.optim names (transformers/training_args.py OptimizerNames) of our optimizers;
# LLaMA-Factory and axolotl hand the same names to the HF Trainer. LAMB has none.
HF_OPTIM = {"adamw": "adamw_torch", "adamw-8bit": "adamw_bnb_8bit", "adafactor": "adafactor", "sgd": "sgd",
            "lion": "lion_32bit"}

# model_type values Liger Kernel patches (liger_kernel.transformers MODEL_TYPE_TO_APPLY_LIGER_FN; the same list
# LLaMA-Factory checks in src/llamafactory/model/model_utils/liger_kernel.py, v0.9.5): elsewhere Liger does
# nothing and the plain loss runs, so --loss fused-linear is refused for other families.
LIGER_FAMILIES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "glm4", "granite", "llama", "mistral",
                            "mixtral", "olmo2", "phi3", "qwen2", "qwen3", "qwen3_moe", "gpt_oss", "smollm3"})

TORCH_DTYPE = {"bf16": "bfloat16", "pure-bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# issue 17 (L): the comment on the packing / padding key of a --batch-lengths variable run
VARIABLE_LENGTHS = "each batch padded to its longest sample, as estimated (--batch-lengths variable)"


@dataclass
class Run:
    """The estimated run in framework-neutral terms (sizes in tokens / samples)."""

    framework: str
    model_id: str                   # hub id or path for model_name_or_path
    model_id_known: bool            # False: a size or config stood in for the model, the user fills in the id
    family: str
    micro_batch: int
    gas: int
    world: int
    nodes: int
    gpus_per_node: int
    seq_len: int
    precision: str                  # fp32 | fp16 | bf16 | pure-bf16
    checkpointing: bool
    loss: str                       # plain | fused-linear
    method: str                     # full | lora | qlora | freeze
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: tuple[str, ...]   # the model's own module names, or ("all-linear",)
    double_quant: bool
    freeze_layers: int
    attention: str                  # eager | sdpa | flash
    optim: str                      # transformers' optim name
    backend: str                    # single | ddp | deepspeed | fsdp
    zero_stage: int | None
    fsdp_sharding: str | None
    fsdp_offload: bool
    fsdp_layer_cls: str | None
    offload_activations: bool
    expandable_segments: bool
    main_process_ip: str = "127.0.0.1"
    main_process_port: int = 29500
    notes: list[str] = field(default_factory=list)
    fp32_base: bool = False         # issue 17: --base-dtype fp32 (a LoRA base / QLoRA's non-quantized weights in fp32)
    sync_each_batch: bool = False   # issue 17 (helper L): accelerate GradientAccumulationPlugin(sync_each_batch=True)
    hidden_size: int = 0            # the head's input width and vocabulary (TRL's fused LM head note, trl.py)
    vocab_size: int = 0
    loss_replayed: bool = True      # False: the family is traced on the real model, whose loss is the plain one
    consolidated_save: bool = False  # issue 17: --checkpoint-save (FSDP FULL_STATE_DICT; advisor/memory/checkpoint_save.py)
    variable_lengths: bool = False  # issue 17 (L): --batch-lengths variable (each batch padded to its longest sample)

    @property
    def fsdp_state_dict_type(self) -> str:
        return "FULL_STATE_DICT" if self.consolidated_save else "SHARDED_STATE_DICT"

    @property
    def deepspeed(self) -> str | None:
        """The DeepSpeed JSON the framework file points to (written beside it), or None."""
        return DS_CONFIG if self.backend == "deepspeed" else None

    @property
    def torch_dtype(self) -> str:
        return TORCH_DTYPE[self.precision]

    @property
    def all_linear(self) -> bool:
        return self.lora_targets == (ALL_LINEAR,)


def model_id(model: ResolvedModel) -> tuple[str, bool]:
    """(hub id, known): the catalog's hf_id for a catalog model (also for a size matched to one), else the
    name given, which the user replaces."""
    from ...catalog.models import list_models

    for entry in list_models():
        if entry.name == model.name:
            return entry.hf_id, True
    return model.name, False


def native_lora_targets(model: ResolvedModel, targets: tuple[str, ...]) -> tuple[str, ...]:
    """LoRA targets as the model's own module names (what PEFT matches), from dsadvise's normalized names
    (:func:`advisor.param_count.native_linear_names`). A normalized name that is only part of a native module
    (GPT-2's ``o_proj`` lives in ``c_proj`` with ``fc2``) would adapt more than was estimated: refused."""
    if tuple(targets) == (ALL_LINEAR,):
        return (ALL_LINEAR,)
    arch = model.architecture
    native = native_linear_names(arch.family)
    if ALL_LINEAR in targets:
        # issue 17 (L): all-linear next to other names (e.g. lm_head): PEFT reads a list's entries as module
        # names, so the shorthand is written out as the linears it adapts (every decoder linear but the
        # family's exclusions, OPT's project_in/out); MoE models are refused before (param_count)
        from ...param_count import all_linear_names

        chosen = all_linear_names(arch)
        owned = [own for own, held in native.items() if set(held) <= set(chosen)]
        covered = {n for own in owned for n in native[own]}
        rest = [t for t in targets if t != ALL_LINEAR]
        targets = tuple(dict.fromkeys([*owned, *(n for n in chosen if n not in covered), *rest]))
    out: list[str] = []
    for t in targets:
        owners = [own for own, held in native.items() if t in held]
        if t in native or not owners and t != "router":
            out.append(t)                                # the family's own name, or the same name there
        elif not owners:
            out.append("gate")                           # transformers names the MoE router `gate`
        elif len(native[owners[0]]) == 1:
            out.append(owners[0])
        else:
            raise InputError(f"LoRA target {t!r} is part of {arch.family}'s {owners[0]!r}, which also holds "
                             f"{', '.join(n for n in native[owners[0]] if n != t)}: a framework adapts whole "
                             f"modules; give --lora-targets {owners[0]}", field="--lora-targets")
    return tuple(dict.fromkeys(out))


def build_run(framework: str, model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec,
              strategy: StrategySpec, *, gradient_accumulation_steps: int, main_process_ip: str = "127.0.0.1",
              main_process_port: int = 29500) -> Run:
    """The Run a framework file must carry; raises InputError for what no framework key can express."""
    where = f"--framework {framework}"
    if training.task != "train":
        raise InputError(f"{where} renders training configs; --task infer has none", field="--framework")
    if training.loss == "chunked":
        raise InputError(f"{where}: --loss chunked (torchtune's chunked output projection, as estimated) has no key "
                         "there (axolotl's chunked_cross_entropy still builds the whole logits): use --loss plain "
                         "or fused-linear", field="--loss")
    if training.loss == "trl-head" and framework != "trl":
        raise InputError(f"{where}: --loss trl-head is TRL's SFTTrainer's own fused LM head, which {framework} does "
                         "not run: use --loss plain or fused-linear, or pick --framework trl", field="--loss")
    if training.loss == "fused-linear" and framework == "trl":
        # trl/trainer/sft_trainer.py (1.16) SFTTrainer.__init__: liger_kernel_config fused_linear_cross_entropy True
        # raises ValueError; the trainer always patches the model with its own tiled fused LM head (add_fused_lm_head)
        raise InputError(f"{where}: TRL's SFTTrainer refuses Liger's fused linear cross-entropy (liger_kernel_config "
                         "fused_linear_cross_entropy: true raises in SFTTrainer.__init__, TRL >= 1.16): it always "
                         "computes the loss with its own tiled fused LM head; drop --loss fused-linear (TRL's head is "
                         "estimated as --loss trl-head: docs/frameworks.md)", field="--loss")
    if framework == "trl" and training.method in ("lora", "qlora") and "lm_head" in training.lora.target_modules:
        # trl/trainer/sft_trainer.py (1.16) SFTTrainer.__init__: a PEFT adapter on the output embeddings raises
        raise InputError(f"{where}: TRL's SFTTrainer refuses a LoRA adapter on lm_head (its fused LM head multiplies "
                         "by lm_head.weight, so the adapter would never train; SFTTrainer.__init__ raises, TRL >= "
                         "1.16): drop lm_head from --lora-targets", field="--lora-targets")
    if training.loss == "fused-linear" and model.architecture.family not in LIGER_FAMILIES:
        raise InputError(f"{where}: --loss fused-linear is Liger's kernel, which has no patch for "
                         f"{model.architecture.family} models (the plain loss would run): use --loss plain",
                         field="--loss")
    if training.activation_checkpointing == "selective":
        raise InputError(f"{where}: selective checkpointing has no key there (gradient_checkpointing recomputes "
                         "whole layers): use --checkpointing full or none", field="--checkpointing")
    if training.optimizer not in HF_OPTIM:
        raise InputError(f"{where}: --optimizer {training.optimizer} is not one of the HF Trainer's optim names: "
                         f"choose from {', '.join(HF_OPTIM)}", field="--optimizer")
    if training.expandable_segments and framework in ("hf-trainer", "trl", "axolotl"):
        pass   # an environment variable: the launch script exports it
    if training.offload_activations and framework not in ("trl", "axolotl"):
        raise InputError(f"{where}: --offload-activations has no key there (TRL's activation_offloading and "
                         "axolotl's activation_offloading do): drop it or pick trl / axolotl", field="--framework")
    if training.method == "freeze" and framework != "llamafactory":
        raise InputError(f"{where}: --method freeze (the last N layers train) is LLaMA-Factory's finetuning_type "
                         "freeze; the others have no such key: use --framework llamafactory", field="--method")
    if training.method == "qlora" and strategy.backend == "deepspeed" and strategy.offload_param != "none":
        raise InputError(f"{where}: QLoRA's 4-bit weights cannot be offloaded by ZeRO-3 (offload_param)",
                         field="--offload-param")
    layout = (strategy.tp_size, strategy.sp_size, strategy.cp_size, strategy.dp_replicate_size)
    if any(v > 1 for v in layout) or strategy.fsdp_version != 1:
        raise InputError(f"{where}: tensor / sequence / context parallel layouts and FSDP2 are written for accelerate "
                         "only so far (the frameworks' own keys for them are not rendered): use --framework "
                         "accelerate, or a --strategy without --tp/--sp/--cp/--dp-replicate/--fsdp-version 2",
                         field="--framework")
    if training.base_dtype == "fp32" and framework in ("llamafactory", "axolotl"):
        raise InputError(f"{where}: --base-dtype fp32 has no key there ({framework} loads the model in the compute "
                         "dtype): drop it, or pick hf-trainer / trl, whose dtype key loads float32", field="--base-dtype")
    if training.base_dtype == "fp32" and training.method == "qlora" and framework == "trl":
        # issue 17: trl sft's ModelConfig.dtype is also bnb_4bit_compute_dtype (trl/trainer/utils.py
        # get_quantization_config), so a float32 load would compute the 4-bit linears in fp32
        raise InputError(f"{where}: --method qlora --base-dtype fp32 has no TRL config (ModelConfig.dtype is also "
                         "bnb_4bit_compute_dtype: float32 would compute in fp32; TRL 1.16's SFTTrainer runs no "
                         "prepare_model_for_kbit_training): drop --base-dtype fp32, or pick hf-trainer",
                         field="--base-dtype")
    if training.sync_each_batch and framework in ("llamafactory", "axolotl"):   # issue 17 (helper L)
        raise InputError(f"{where}: --sync-each-batch is written only as transformers' accelerator_config "
                         "gradient_accumulation_kwargs (hf-trainer / trl, checked by their parsers); no "
                         f"{framework} key for it is rendered: drop it, or pick hf-trainer / trl",
                         field="--sync-each-batch")
    mid, known = model_id(model)
    ckpt = training.activation_checkpointing == "full"
    return Run(framework=framework, model_id=mid, model_id_known=known, family=model.architecture.family,
               micro_batch=training.micro_batch_size, gas=gradient_accumulation_steps, world=hw.world_size,
               nodes=hw.nodes, gpus_per_node=hw.gpus_per_node, seq_len=training.seq_len,
               precision=training.precision, checkpointing=ckpt, loss=training.loss, method=training.method,
               lora_rank=training.lora.rank, lora_alpha=training.lora.alpha, lora_dropout=training.lora.dropout,
               lora_targets=native_lora_targets(model, tuple(training.lora.target_modules)),
               double_quant=training.double_quant, freeze_layers=training.freeze_trainable_layers,
               attention=training.attention, optim=HF_OPTIM[training.optimizer], backend=strategy.backend,
               zero_stage=strategy.zero_stage, fsdp_sharding=strategy.fsdp_sharding,
               fsdp_offload=strategy.offload_param != "none" and strategy.backend == "fsdp",
               fsdp_layer_cls=FSDP_LAYER_CLASSES.get(model.architecture.family),
               offload_activations=training.offload_activations,
               expandable_segments=training.expandable_segments, main_process_ip=main_process_ip,
               main_process_port=main_process_port,
               fp32_base=fp32_lora_base(training, strategy) or fp32_qlora_rest(training, strategy),
               hidden_size=model.architecture.hidden_size, vocab_size=model.architecture.vocab_size,
               loss_replayed=_replayed(model, training),
               sync_each_batch=training.sync_each_batch,
               consolidated_save=consolidated_save(training, strategy),
               variable_lengths=training.batch_lengths == "variable")   # issue 17 (L)


def _replayed(model: ResolvedModel, training: TrainingSpec) -> bool:
    """Whether the estimate replays this family's forward (advisor/memory/activations.py), where ``--loss`` is
    modelled; a traced family counts the real model's plain loss whatever ``--loss`` says."""
    from ...families import REPLAYED_FAMILIES, family

    arch = model.architecture
    if arch.traced or arch.family not in REPLAYED_FAMILIES:
        return False
    covers = family(arch.family).replay_covers            # as advisor/memory/activations.py asks it
    return covers is None or covers(arch, training)


def bnb_config(run: Run) -> dict | None:
    """transformers BitsAndBytesConfig keyword arguments for QLoRA (4-bit NF4, compute in the training dtype),
    or None. With ZeRO-3 or FSDP the 4-bit weights are stored in the compute dtype (bnb_4bit_quant_storage) so
    that they can be sharded (transformers docs: FSDP-QLoRA / DeepSpeed ZeRO-3 QLoRA)."""
    if run.method != "qlora":
        return None
    cfg = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": run.double_quant,
           "bnb_4bit_compute_dtype": run.torch_dtype}
    if sharded_params(run):
        cfg["bnb_4bit_quant_storage"] = run.torch_dtype
    return cfg


def sharded_params(run: Run) -> bool:
    """ZeRO-3 or FSDP: parameters are sharded (4-bit weights need a shardable storage dtype)."""
    return (run.backend == "deepspeed" and run.zero_stage == 3) or run.backend == "fsdp"


def lora_config(run: Run) -> dict | None:
    """peft LoraConfig keyword arguments for LoRA / QLoRA, or None."""
    if run.method not in ("lora", "qlora"):
        return None
    targets = "all-linear" if run.all_linear else list(run.lora_targets)
    alpha = int(run.lora_alpha) if float(run.lora_alpha).is_integer() else run.lora_alpha
    return {"r": run.lora_rank, "lora_alpha": alpha, "lora_dropout": run.lora_dropout, "target_modules": targets,
            "task_type": "CAUSAL_LM"}


def fsdp_strategy_word(run: Run) -> str:
    """transformers' legacy ``fsdp`` option word for the sharding (trainer_utils.FSDPOption)."""
    return {"FULL_SHARD": "full_shard", "SHARD_GRAD_OP": "shard_grad_op", "HYBRID_SHARD": "hybrid_shard",
            "NO_SHARD": "no_shard"}[run.fsdp_sharding or "FULL_SHARD"]


def load_dtype(run: Run) -> str:
    """The dtype to load the model in (``from_pretrained(dtype=...)``) so that its weights are what the estimate
    counts (advisor/memory/bytes_per_param.py): LoRA/QLoRA bases and pure bf16 in 16 bits, DeepSpeed half models
    (DeepSpeed casts the module anyway) in 16 bits, otherwise fp32 weights under autocast; ``--base-dtype fp32``
    (``run.fp32_base``): float32 (QLoRA: the non-quantized weights, while bnb_4bit_compute_dtype stays 16-bit). transformers 5 loads
    in the checkpoint's dtype by default (``dtype="auto"``), so it is always written out."""
    half = {"fp16": "float16", "bf16": "bfloat16", "pure-bf16": "bfloat16"}.get(run.precision)
    if half is None or run.fp32_base:
        return "float32"
    if run.method in ("lora", "qlora") or run.precision == "pure-bf16" or run.backend == "deepspeed":
        return half
    return "float32"


def torchrun_command(run: Run) -> list[str]:
    """torchrun's words for this world (multi-node: NODE_RANK and MASTER_ADDR from the environment)."""
    cmd = ["torchrun", "--nnodes", str(run.nodes), "--nproc_per_node", str(run.gpus_per_node)]
    if run.nodes > 1:
        cmd += ["--node_rank", '"$NODE_RANK"', "--master_addr", '"$MASTER_ADDR"']
    else:
        cmd += ["--master_addr", run.main_process_ip]
    return cmd + ["--master_port", str(run.main_process_port)]
