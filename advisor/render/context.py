"""Everything the templates need, computed from validated specs: a pure function, no I/O, no torch.

The values that decide memory come from the same functions the estimator uses (``deepspeed_sizes`` for the
ZeRO buckets), so the rendered DeepSpeed JSON and the estimate describe the same run. Each setting carries
the reason it was chosen; the output folder's README.md lists them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .. import families as _families
from ..catalog.models import ResolvedModel
from ..errors import InputError
from ..memory.buffers import deepspeed_sizes
from ..memory.checkpoint_save import consolidated_save   # issue 17: --checkpoint-save
from ..specs import GiB, HardwareSpec, StrategySpec, TrainingSpec
from .parallel import parallel_context, parallel_env, parallel_notes, readme_batch   # issue 15

# The decoder layer class of each family, as transformers names it (its module's FAMILY.fsdp_layer_class,
# advisor/families): what FSDP's TRANSFORMER_BASED_WRAP wraps. tests/render/test_proxy.py builds each family and
# checks the class is in the model.
FSDP_LAYER_CLASSES = _families.FSDP_LAYER_CLASSES

# DeepSpeed's fp16 dynamic loss scaling defaults (deepspeed/runtime/precision_config.py, DeepSpeedFP16Config).
FP16_DEFAULTS: dict[str, float | int] = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                                         "hysteresis": 2, "min_loss_scale": 1}
GRADIENT_CLIPPING = 1.0          # transformers TrainingArguments.max_grad_norm default
DS_CPU_OPTIMIZERS = {"adamw": "deepspeed.ops.adam.DeepSpeedCPUAdam", "lion": "deepspeed.ops.lion.DeepSpeedCPULion"}
# Optimizers DeepSpeed's ZeRO accepts from the client without zero_allow_untested_optimizer
# (deepspeed/runtime/zero/utils.py ZERO_SUPPORTED_OPTIMIZERS: torch Adam/AdamW, FusedAdam, CPU Adam/Lion ...).
ZERO_TESTED_OPTIMIZERS = {"adamw"}

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")


def validate_host(ip: str) -> str:
    """A hostname, IPv4 or IPv6 address; anything else (spaces, quotes, shell syntax) is refused."""
    import ipaddress

    if isinstance(ip, str) and 0 < len(ip) <= 253:
        try:
            ipaddress.ip_address(ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip)
            return ip
        except ValueError:
            pass
        if all(_LABEL.match(label) for label in ip.split(".")):
            return ip
    raise InputError(f"not a hostname or IP address: {ip!r}", field="--main-process-ip")


def _fp16_block(loss_scaling: Any) -> dict:
    """DeepSpeed's fp16 block: dynamic loss scaling by default, a number for a static scale, or overrides."""
    block = dict(FP16_DEFAULTS)
    if loss_scaling is None or loss_scaling == "dynamic":
        return block
    if isinstance(loss_scaling, bool):
        raise InputError(f"loss scaling must be 'dynamic', a number or a mapping, got {loss_scaling!r}",
                         field="loss_scaling")
    if isinstance(loss_scaling, (int, float)):
        if not loss_scaling > 0 or loss_scaling == float("inf"):
            raise InputError(f"a static loss scale must be a positive number, got {loss_scaling!r}",
                             field="loss_scaling")
        block["loss_scale"] = loss_scaling
        return block
    if isinstance(loss_scaling, Mapping):
        for key, value in loss_scaling.items():
            if key == "enabled":
                continue
            if key not in FP16_DEFAULTS:
                raise InputError(f"unknown fp16 setting {key!r}; known: {', '.join(FP16_DEFAULTS)}",
                                 field="loss_scaling")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or value == float("inf") or value != value:
                raise InputError(f"fp16.{key} must be a number >= 0, got {value!r}", field="loss_scaling")
            block[key] = value
        return block
    raise InputError(f"loss scaling must be 'dynamic', a number or a mapping, got {loss_scaling!r}",
                     field="loss_scaling")


def _offload(target: str, hw: HardwareSpec) -> dict | None:
    if target == "none":
        return None
    return {"device": target, "nvme_path": hw.nvme_path if target == "nvme" else None, "pin_memory": True}


def distributed_type(strategy: StrategySpec, hw: HardwareSpec) -> str:
    """accelerate's DistributedType for a strategy: NO, MULTI_GPU, DEEPSPEED or FSDP."""
    if strategy.backend == "deepspeed":
        return "DEEPSPEED"
    if strategy.backend == "fsdp":
        return "FSDP"
    if strategy.backend == "ddp" and hw.world_size > 1:
        return "MULTI_GPU"
    return "NO"


def mixed_precision(training: TrainingSpec) -> str:
    """accelerate's mixed_precision for a precision: autocast fp16/bf16, else 'no' (fp32, pure bf16)."""
    return {"fp16": "fp16", "bf16": "bf16"}.get(training.precision, "no")


def slurm_job_name(name: str) -> str:
    """A SLURM job name from a model name: [A-Za-z0-9._-] only, at most 64 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:48] or "model"
    return f"dsadvise-{cleaned}"


def _deepspeed(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec, *,
               gas: int, hf_trainer: bool, loss_scaling: Any, settings: list[dict], parallel: dict | None = None) -> dict:
    arch = model.architecture
    stage = strategy.zero_stage or 0
    sizes = deepspeed_sizes(arch, strategy)
    micro = training.micro_batch_size

    def why(key: str, value: Any, reason: str) -> None:
        settings.append({"file": "ds_config.json", "key": key, "value": value, "why": reason})

    ds: dict[str, Any] = {"stage": stage}
    if hf_trainer:
        ds.update(train_batch_size="auto", micro_batch="auto", gradient_accumulation_steps="auto",
                  gradient_clipping="auto")
        why("train_batch_size / train_micro_batch_size_per_gpu / gradient_accumulation_steps", "auto",
            f"--hf-trainer: the Trainer fills them from --per_device_train_batch_size {micro} and "
            f"--gradient_accumulation_steps {gas} (world {hw.world_size}: train_batch_size "
            f"{micro * gas * hw.world_size})")
        why("gradient_clipping", "auto", "--hf-trainer: the Trainer fills it from --max_grad_norm (default 1.0)")
    elif parallel and parallel["ds_batch_world"] != hw.world_size or parallel and parallel["autotp"]:
        world = parallel["ds_batch_world"]       # issue 15: the world DeepSpeedConfig divides the batch by
        ds.update(train_batch_size=micro * gas * world, micro_batch=micro,
                  gradient_accumulation_steps=gas, gradient_clipping=GRADIENT_CLIPPING)
        why("train_batch_size", ds["train_batch_size"],
            f"DeepSpeed requires train_batch_size = micro-batch {micro} x accumulation {gas} x {world}: "
            + (f"the data-parallel world of Ulysses' mpu ({hw.world_size} GPUs / sp {parallel['sp']})"
               if parallel["sp"] > 1 else
               f"every rank, as DeepSpeedConfig counts them before AutoTP builds its groups (the {parallel['tp']} "
               f"ranks of a TP group train on the same samples: {micro * gas * hw.world_size // parallel['tp']} "
               "distinct samples per step)"))
    else:
        ds.update(train_batch_size=micro * gas * hw.world_size, micro_batch=micro,
                  gradient_accumulation_steps=gas, gradient_clipping=GRADIENT_CLIPPING)
        why("train_batch_size", ds["train_batch_size"],
            f"DeepSpeed requires train_batch_size = micro-batch {micro} x accumulation {gas} x world "
            f"{hw.world_size}")
        why("train_micro_batch_size_per_gpu", micro, "the micro-batch the memory estimate was made for")
        why("gradient_clipping", GRADIENT_CLIPPING, "the HF Trainer's default max_grad_norm")

    p = training.precision
    ds["fp16"] = _fp16_block(loss_scaling) if p == "fp16" else None
    ds["bf16_enabled"] = p in ("bf16", "pure-bf16")
    ds["pure_bf16"] = p == "pure-bf16"
    if p == "pure-bf16" and stage == 0:
        raise InputError("pure-bf16 with DeepSpeed needs ZeRO stage 1-3 (bf16_master_weights_and_grads); "
                         "stage 0 keeps fp32 master weights: use --precision bf16 or zero1+", field="--precision")
    if p == "fp16":
        f = ds["fp16"]
        why("fp16", "enabled", "fp16 mixed precision (the GPU has no bf16, or --precision fp16); "
            + ("dynamic loss scaling (loss_scale 0) starting at 2^%s, halved on overflow after %s hysteresis "
               "steps, raised after %s clean steps" % (f["initial_scale_power"], f["hysteresis"],
                                                        f["loss_scale_window"])
               if f["loss_scale"] == 0 else f"static loss scale {f['loss_scale']}"))
    elif p == "bf16":
        why("bf16.enabled", True, "bf16 mixed precision: fp32's exponent range, no loss scaling; DeepSpeed keeps "
            "fp32 master weights (counted in the estimate)")
    elif p == "pure-bf16":
        why("bf16.bf16_master_weights_and_grads / bf16_optimizer_states", True,
            "--precision pure-bf16: no fp32 master copy, bf16 optimizer states (as estimated)")
    else:
        why("fp16.enabled / bf16.enabled", False, "--precision fp32: full precision weights and gradients")

    zero: dict[str, Any] = {"stage": stage, "overlap_comm": sizes.overlap_comm,
                            "reduce_bucket_size": sizes.reduce_bucket_size,
                            "allgather_bucket_size": sizes.allgather_bucket_size,
                            "offload_optimizer": _offload(strategy.offload_optimizer, hw),
                            "offload_param": _offload(strategy.offload_param, hw) if stage == 3 else None}
    preset = ("the HF integration's 'auto' values from hidden size %d" % arch.hidden_size
              if strategy.bucket_sizes == "auto" else "DeepSpeed's built-in defaults")
    # issue 15: under AutoTP ZeRO shards over the data-parallel ranks only (world / autotp_size)
    zero_world = hw.world_size // (parallel["autotp"] or 1) if parallel else hw.world_size
    why("zero_optimization.stage", stage, {
        0: "ZeRO-0: plain data parallel inside DeepSpeed, nothing sharded",
        1: "ZeRO-1: optimizer states (with the fp32 master copy) sharded over the %d GPUs" % zero_world,
        2: "ZeRO-2: optimizer states and gradients sharded over the %d GPUs" % zero_world,
        3: "ZeRO-3: parameters, gradients and optimizer states sharded over the %d GPUs" % zero_world}[stage])
    why("zero_optimization.reduce_bucket_size", sizes.reduce_bucket_size, f"{preset}; the estimate counts this "
        "bucket")
    if stage in (1, 2):
        why("zero_optimization.allgather_bucket_size", sizes.allgather_bucket_size, f"{preset}")
    why("zero_optimization.overlap_comm", sizes.overlap_comm,
        "DeepSpeed's default for this stage (True only for ZeRO-3); the estimate assumes it, and overlap_comm "
        "multiplies bucket memory (4.5x at stage 1/2)")
    if stage == 3:
        zero.update(prefetch_bucket_size=sizes.prefetch_bucket_size,
                    param_persistence_threshold=sizes.param_persistence_threshold,
                    max_live_parameters=sizes.max_live_parameters, max_reuse_distance=sizes.max_reuse_distance,
                    sub_group_size=sizes.sub_group_size,
                    gather_16bit_weights_on_model_save=consolidated_save(training, strategy))
        why("zero_optimization.stage3_prefetch_bucket_size", sizes.prefetch_bucket_size,
            f"{preset}; gathered parameters ahead of use count against VRAM in the estimate")
        why("zero_optimization.stage3_param_persistence_threshold", sizes.param_persistence_threshold,
            f"{preset}: parameters smaller than this stay unpartitioned on every GPU")
        why("zero_optimization.stage3_max_live_parameters", sizes.max_live_parameters,
            "DeepSpeed's default cap on gathered parameters")
        if consolidated_save(training, strategy):
            why("zero_optimization.stage3_gather_16bit_weights_on_model_save", True,
                "save_model() writes a consolidated 16-bit checkpoint instead of ZeRO shards only (rank 0's CPU RAM "
                "holds the whole 16-bit model while it does: counted)")
        else:
            why("zero_optimization.stage3_gather_16bit_weights_on_model_save", False,
                "--checkpoint-save sharded: every rank saves its ZeRO shards (consolidate offline with "
                "zero_to_fp32.py)")
    for what, off in (("offload_optimizer", zero["offload_optimizer"]), ("offload_param", zero["offload_param"])):
        if off:
            where = "CPU RAM (pinned)" if off["device"] == "cpu" else f"NVMe at {off['nvme_path']}"
            why(f"zero_optimization.{what}.device", off["device"],
                f"--{what.replace('_', '-')}: moves {'optimizer states' if what == 'offload_optimizer' else 'parameters'}"
                f" to {where} so that the model fits; pin_memory speeds the PCIe copies")

    ds["zero"] = zero
    ds["zero3_init"] = stage == 3
    ds["autotp_size"] = parallel["autotp"] if parallel else None           # issue 15
    ds["sequence_parallel_size"] = parallel["sp_ds"] if parallel else None
    # issue 14: accelerate's deepspeed_moe_layer_cls_names (accelerate 1.15 DeepSpeedPlugin.set_moe_leaf_modules,
    # called from Accelerator._prepare_deepspeed: set_z3_leaf_modules(model, <those classes>)) for MoE families
    leaves = _families.z3_leaf_modules(model.architecture.family) if stage == 3 else ()
    ds["moe_layer_cls_names"] = ",".join(leaves) or None
    if leaves:
        settings.append({"file": "accelerate_config.yaml", "key": "deepspeed_config.deepspeed_moe_layer_cls_names",
                         "value": ds["moe_layer_cls_names"],
                         "why": "accelerator.prepare() marks each MoE block as a ZeRO-3 leaf module "
                                "(deepspeed.utils.set_z3_leaf_modules): its experts are gathered at once, so a "
                                "router that skips an expert cannot stall ZeRO-3's parameter prefetch"})
    offloading = strategy.offload_optimizer != "none"
    ds["optimizer"] = None
    ds["allow_untested_optimizer"] = stage >= 1 and training.optimizer not in ZERO_TESTED_OPTIMIZERS
    ds["force_ds_cpu_optimizer"] = None
    if ds["allow_untested_optimizer"]:
        why("zero_allow_untested_optimizer", True, f"--optimizer {training.optimizer} is not one DeepSpeed's ZeRO "
            "tests; without this flag deepspeed.initialize refuses it")
    if offloading:
        if hf_trainer and training.optimizer == "adamw":
            ds["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                            "weight_decay": "auto"}}
            why("optimizer", "AdamW (auto)", "optimizer offload needs DeepSpeed's CPU Adam: with an optimizer "
                "block DeepSpeed builds it; the Trainer fills lr/betas/eps/weight_decay")
        elif training.optimizer not in DS_CPU_OPTIMIZERS:
            ds["force_ds_cpu_optimizer"] = False
            why("zero_force_ds_cpu_optimizer", False, f"--optimizer {training.optimizer} has no DeepSpeed CPU "
                "implementation; this lets your torch optimizer step on the CPU")
    return ds


def _fsdp(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
          settings: list[dict]) -> dict:
    layer = FSDP_LAYER_CLASSES.get(model.architecture.family)
    offload = strategy.offload_param != "none"
    fsdp = {"sharding": strategy.fsdp_sharding, "layer_cls": layer, "offload_params": offload,
            "activation_checkpointing": training.activation_checkpointing == "full",
            "use_orig_params": True, "backward_prefetch": "BACKWARD_PRE",
            "state_dict_type": "FULL_STATE_DICT" if consolidated_save(training, strategy) else "SHARDED_STATE_DICT",
            "version": strategy.fsdp_version, "reshard_after_forward": strategy.fsdp_sharding == "FULL_SHARD"}
    if strategy.fsdp_version == 2:      # issue 15: FSDP2 (fully_shard) keys, advisor/render/parallel.py
        return _fsdp2(model, hw, training, strategy, fsdp, settings)

    def why(key: str, value: Any, reason: str) -> None:
        settings.append({"file": "accelerate_config.yaml", "key": f"fsdp_config.{key}", "value": value,
                         "why": reason})

    why("fsdp_sharding_strategy", strategy.fsdp_sharding, {
        "FULL_SHARD": "parameters, gradients and optimizer states sharded (like ZeRO-3)",
        "SHARD_GRAD_OP": "gradients and optimizer states sharded, parameters kept gathered between forward "
                         "and backward (like ZeRO-2)",
        "HYBRID_SHARD": f"FULL_SHARD inside each node of {hw.gpus_per_node} GPUs, replicated across "
                        f"{hw.nodes} nodes: sharding traffic stays on the fast intra-node links",
        "NO_SHARD": "replicated like DDP"}[strategy.fsdp_sharding]
        + "; written as both fsdp_sharding_strategy and fsdp_reshard_after_forward because accelerate launch "
          "passes FSDP_SHARDING_STRATEGY=FULL_SHARD whenever fsdp_sharding_strategy is absent, which overrides "
          "fsdp_reshard_after_forward under FSDP1")
    if layer:
        why("fsdp_transformer_layer_cls_to_wrap", layer, f"one FSDP unit per {model.architecture.family} decoder "
            "layer: only one or two layers are gathered at a time (as estimated)")
    else:
        why("fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", f"family {model.architecture.family!r} has no known "
            "layer class: accelerate wraps the model's _no_split_modules")
    why("fsdp_backward_prefetch", "BACKWARD_PRE", "prefetches the next layer's parameters during backward; the "
        "estimate counts two gathered layers")
    why("fsdp_cpu_ram_efficient_loading", True, "only rank 0 loads the checkpoint into CPU RAM; the others start "
        "on the meta device (needs fsdp_sync_module_states true)")
    why("fsdp_use_orig_params", True, "keeps the original parameters visible: needed for LoRA/freeze (mixed "
        "requires_grad) and per-parameter optimizer groups")
    why("fsdp_state_dict_type", fsdp["state_dict_type"], "each rank saves its shard: no full gather into rank 0's "
        "CPU RAM at checkpoint time" if fsdp["state_dict_type"] == "SHARDED_STATE_DICT" else "--checkpoint-save "
        "consolidated: rank 0 gathers the whole model, then the optimizer state, into its CPU RAM (counted)")
    why("fsdp_offload_params", offload, "--offload-param cpu: FSDP's CPUOffload moves parameters, gradients and "
        "the optimizer step to the CPU" if offload else "nothing offloaded")
    if fsdp["activation_checkpointing"]:
        why("fsdp_activation_checkpointing", True, "--checkpointing full: FSDP checkpoints each wrapped layer "
            "(do not also call gradient_checkpointing_enable())")
    return fsdp


def _fsdp2(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec, fsdp: dict,
           settings: list[dict]) -> dict:
    """FSDP2's keys (accelerate 1.15 FullyShardedDataParallelPlugin with fsdp_version 2: reshard_after_forward is a
    bool; backward/forward prefetch, use_orig_params and sync_module_states do not exist there)."""
    def why(key: str, value: Any, reason: str) -> None:
        settings.append({"file": "accelerate_config.yaml", "key": f"fsdp_config.{key}", "value": value,
                         "why": reason})

    why("fsdp_version", 2, "FSDP2 (torch fully_shard, DTensor parameters): what accelerate's ParallelismConfig "
        "composes with TP, CP and HSDP")
    why("fsdp_reshard_after_forward", fsdp["reshard_after_forward"],
        "parameters freed after forward and gathered again in backward (like ZeRO-3)" if fsdp["reshard_after_forward"]
        else "parameters kept gathered between forward and backward (like ZeRO-2)")
    if fsdp["layer_cls"]:
        why("fsdp_transformer_layer_cls_to_wrap", fsdp["layer_cls"], f"one fully_shard unit per "
            f"{model.architecture.family} decoder layer")
    why("fsdp_cpu_ram_efficient_loading", True, "only rank 0 loads the checkpoint into CPU RAM; the others start "
        "on the meta device and receive their shards")
    why("fsdp_state_dict_type", fsdp["state_dict_type"], "each rank saves its shard (DCP)"
        if fsdp["state_dict_type"] == "SHARDED_STATE_DICT" else "--checkpoint-save consolidated: rank 0 gathers "
        "the whole model, then the optimizer state, into its CPU RAM (counted)")
    why("fsdp_offload_params", fsdp["offload_params"], "--offload-param cpu: CPUOffloadPolicy keeps parameters, "
        "gradients and the optimizer step on the CPU" if fsdp["offload_params"] else "nothing offloaded")
    if fsdp["activation_checkpointing"]:
        why("fsdp_activation_checkpointing", True, "--checkpointing full: each wrapped layer is checkpointed (do "
            "not also call gradient_checkpointing_enable())")
    return fsdp


def build_context(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec, *,
                  gradient_accumulation_steps: int, hf_trainer: bool = False, loss_scaling: Any = None,
                  main_process_ip: str = "127.0.0.1", main_process_port: int = 29500,
                  estimate=None, recommendation=None) -> dict:
    """The template context for one configuration; raises InputError for what no engine can run."""
    from .. import __version__
    from ..memory.core import estimate_memory

    if training.task != "train":
        raise InputError("generate renders training configs; --task infer has nothing to launch", field="--task")
    gas = gradient_accumulation_steps
    if isinstance(gas, bool) or not isinstance(gas, int) or not 1 <= gas <= 1_000_000:
        raise InputError(f"must be a whole number from 1 to 1000000, got {gas!r}",
                         field="gradient_accumulation_steps")
    port = main_process_port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"must be a port number 1-65535, got {port!r}", field="--main-process-port")
    validate_host(main_process_ip)
    if strategy.backend == "ddp" and hw.world_size == 1:
        pass   # one process: accelerate's NO type (MULTI_GPU needs >= 2 processes)
    est = estimate if estimate is not None else estimate_memory(model, hw, training, strategy)

    settings: list[dict] = []
    dtype = distributed_type(strategy, hw)
    multinode = hw.nodes > 1
    ctx: dict[str, Any] = {
        "version": __version__,
        "model": {"name": model.name, "source": model.source, "family": model.architecture.family,
                  "parameters": est.model.parameters, "trainable": est.model.trainable_parameters,
                  "note": model.note},
        "strategy": strategy.name, "backend": strategy.backend, "world_size": hw.world_size, "nodes": hw.nodes,
        "gpus_per_node": hw.gpus_per_node, "gpu": hw.gpu.name if hw.gpu else None,
        "vram_gib": hw.vram_bytes / GiB, "distributed_type": dtype, "multinode": multinode,
        "main_process_ip": main_process_ip, "main_process_port": port, "hf_trainer": hf_trainer,
        # a loopback rendezvous address only works on one machine: multi-node scripts then require MAIN_PROCESS_IP
        "main_process_ip_loopback": _is_loopback(main_process_ip),
        "training": training.model_dump(mode="json"), "gradient_accumulation_steps": gas,
        "global_batch": training.micro_batch_size * gas * hw.world_size,
        "mixed_precision": None if dtype == "DEEPSPEED" else mixed_precision(training),
        "ds": None, "fsdp": None, "settings": settings, "estimate": est,
        "recommendation": recommendation, "job_name": slurm_job_name(model.name),
        "strategy_spec": strategy.model_dump(mode="json"),
        "parallel": parallel_context(model, hw, training, strategy, settings),     # issue 15
    }
    if ctx["parallel"]:
        ctx["global_batch"] = training.micro_batch_size * gas * ctx["parallel"]["data_parallel"]
    ctx["batch_ranks"] = readme_batch(ctx["parallel"], hw.world_size)
    settings.append({"file": "accelerate_config.yaml", "key": "distributed_type", "value": dtype, "why": {
        "NO": "one process on one GPU", "MULTI_GPU": f"DDP: a full replica on each of {hw.world_size} GPUs",
        "DEEPSPEED": f"DeepSpeed {strategy.name}; its settings live in ds_config.json",
        "FSDP": f"PyTorch FSDP ({strategy.fsdp_sharding})"}[dtype]})
    settings.append({"file": "accelerate_config.yaml", "key": "num_processes", "value": hw.world_size,
                     "why": f"one process per GPU in total: {hw.nodes} node(s) x {hw.gpus_per_node} GPU(s)"})
    if multinode:
        settings.append({"file": "accelerate_config.yaml", "key": "main_process_ip / main_process_port",
                         "value": f"{main_process_ip}:{port}",
                         "why": "rendezvous on node 0; every node runs the same command with its own "
                                "--machine_rank (launch_accelerate.sh reads MACHINE_RANK, slurm.sbatch uses "
                                "SLURM_NODEID)"})
    if dtype == "DEEPSPEED":
        ctx["ds"] = _deepspeed(model, hw, training, strategy, gas=gas, hf_trainer=hf_trainer,
                               loss_scaling=loss_scaling, settings=settings, parallel=ctx["parallel"])
        settings.append({"file": "accelerate_config.yaml", "key": "mixed_precision", "value": "(absent)",
                         "why": "precision lives in ds_config.json: accelerate launch refuses mixed_precision "
                                "next to deepspeed_config_file"})
        settings.append({"file": "accelerate_config.yaml", "key": "deepspeed_config.zero3_init_flag",
                         "value": ctx["ds"]["zero3_init"],
                         "why": "ZeRO-3 builds the model partitioned (deepspeed.zero.Init), so no process holds "
                                "the whole model in CPU RAM (as estimated)" if ctx["ds"]["zero3_init"]
                         else "only meaningful for ZeRO-3"})
        if multinode:
            settings.append({"file": "accelerate_config.yaml", "key": "deepspeed_config.deepspeed_multinode_launcher",
                             "value": "standard", "why": "each node starts its own processes (torchrun style); "
                                                         "no pdsh/ssh between nodes needed"})
    else:
        settings.append({"file": "accelerate_config.yaml", "key": "mixed_precision",
                         "value": ctx["mixed_precision"], "why": {
                             "bf16": "bf16 autocast: no loss scaling needed",
                             "fp16": "fp16 autocast with torch's dynamic GradScaler (the GPU has no bf16, or "
                                     "--precision fp16)",
                             "no": "pure bf16 weights: load the model with torch_dtype=torch.bfloat16"
                             if training.precision == "pure-bf16" else "--precision fp32"}[ctx["mixed_precision"]]})
    if dtype == "FSDP":
        ctx["fsdp"] = _fsdp(model, hw, training, strategy, settings)
    settings.sort(key=lambda item: item["file"] != "accelerate_config.yaml")   # stable: the YAML's first
    ctx["launch_env"] = launch_env(ctx)
    ctx["notes"] = _notes(model, hw, training, strategy, ctx)
    return ctx


def launch_env(ctx: dict) -> list[tuple[str, str]]:
    """The environment ``accelerate launch`` gives each process for this config (accelerate/utils/launch.py
    prepare_multi_gpu_env / prepare_deepspeed_cmd_env), for launchers that do not read the YAML (torchrun,
    deepspeed). ``$HERE`` stands for the folder of the launch script. tests/render check these against
    accelerate's own functions."""
    env: list[tuple[str, str]] = []
    if ctx["ds"] is not None:
        env += [("ACCELERATE_USE_DEEPSPEED", "true"), ("ACCELERATE_DEEPSPEED_CONFIG_FILE", "$HERE/ds_config.json"),
                ("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true" if ctx["ds"]["zero3_init"] else "false"),
                ("ACCELERATE_MIXED_PRECISION", "no")]
        if ctx["ds"].get("moe_layer_cls_names"):                 # accelerate/utils/launch.py prepare_deepspeed_cmd_env
            env.append(("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", ctx["ds"]["moe_layer_cls_names"]))
        return env + parallel_env(ctx.get("parallel"))
    env.append(("ACCELERATE_MIXED_PRECISION", ctx["mixed_precision"]))
    f = ctx["fsdp"]
    if f is not None and f["version"] == 2:      # issue 15: FSDP2 (accelerate/utils/launch.py prepare_multi_gpu_env)
        env += [("ACCELERATE_USE_FSDP", "true"), ("FSDP_VERSION", "2"),
                ("FSDP_RESHARD_AFTER_FORWARD", "true" if f["reshard_after_forward"] else "false"),
                ("FSDP_OFFLOAD_PARAMS", "true" if f["offload_params"] else "false"),
                ("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")]
        if f["layer_cls"]:
            env.append(("FSDP_TRANSFORMER_CLS_TO_WRAP", f["layer_cls"]))
        env += [("FSDP_STATE_DICT_TYPE", f["state_dict_type"]), ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true"),
                ("FSDP_ACTIVATION_CHECKPOINTING", "true" if f["activation_checkpointing"] else "false")]
        return env + parallel_env(ctx.get("parallel"))
    if f is not None:
        env += [("ACCELERATE_USE_FSDP", "true"), ("FSDP_VERSION", "1"), ("FSDP_SHARDING_STRATEGY", f["sharding"]),
                ("FSDP_RESHARD_AFTER_FORWARD", f["sharding"].lower()),
                ("FSDP_OFFLOAD_PARAMS", "true" if f["offload_params"] else "false"),
                ("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")]
        if f["layer_cls"]:
            env.append(("FSDP_TRANSFORMER_CLS_TO_WRAP", f["layer_cls"]))
        env += [("FSDP_BACKWARD_PREFETCH", f["backward_prefetch"]), ("FSDP_STATE_DICT_TYPE", f["state_dict_type"]),
                ("FSDP_FORWARD_PREFETCH", "false"), ("FSDP_USE_ORIG_PARAMS", "true"),
                ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true"), ("FSDP_SYNC_MODULE_STATES", "true"),
                ("FSDP_ACTIVATION_CHECKPOINTING", "true" if f["activation_checkpointing"] else "false")]
    return env


def _notes(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
           ctx: dict) -> list[str]:
    """What the training script must do that no config file can say."""
    notes = []
    ds = ctx["ds"]
    if training.activation_checkpointing != "none" and strategy.backend != "fsdp":
        notes.append("activation checkpointing is not a launcher setting: call model.gradient_checkpointing_enable()"
                     " (HF Trainer: --gradient_checkpointing)"
                     + (" and recompute only attention (selective) in your model code"
                        if training.activation_checkpointing == "selective" else ""))
    if training.activation_checkpointing == "selective" and strategy.backend == "fsdp":
        notes.append("selective checkpointing is not an accelerate setting: recompute attention in your model code")
    if ds and strategy.offload_optimizer != "none" and ds["optimizer"] is None and \
            training.optimizer in DS_CPU_OPTIMIZERS:
        notes.append(f"optimizer offload: build the optimizer as {DS_CPU_OPTIMIZERS[training.optimizer]}; "
                     "DeepSpeed refuses a torch optimizer with offload (zero_force_ds_cpu_optimizer)")
    if training.attention == "flash":
        notes.append("load the model with attn_implementation=\"flash_attention_2\" (the estimate assumes it)")
    if ds and strategy.zero_stage == 3 and _families.z3_leaf_advice(model.architecture.family):
        notes.append(_families.z3_leaf_advice(model.architecture.family))   # MoE blocks as ZeRO-3 leaf modules
    if training.method in ("lora", "qlora"):
        notes.append(f"--method {training.method}: wrap the model with peft (rank {training.lora.rank}); only the "
                     "adapters train")
    if training.method == "qlora" and strategy.backend in ("fsdp", "deepspeed") and hw.world_size > 1:
        notes.append("QLoRA with sharding: set bnb_4bit_quant_storage to the compute dtype so the 4-bit weights "
                     "can be sharded")
    if training.precision == "pure-bf16" and strategy.backend != "deepspeed":
        notes.append("pure bf16: load the model with torch_dtype=torch.bfloat16 (mixed_precision is 'no')")
    notes += parallel_notes(model, training, ctx.get("parallel"))     # issue 15
    if training.sync_each_batch:
        notes.append("--sync-each-batch is not a launcher setting: in your script create the Accelerator with "
                     "gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps="
                     f"{ctx['gradient_accumulation_steps']}, sync_each_batch=True) (accelerate >= 0.30; "
                     "accelerate.utils) and accumulate with accelerator.accumulate(model); HF Trainer: "
                     "accelerator_config: {gradient_accumulation_kwargs: {sync_each_batch: true}}")
    if training.batch_lengths == "variable":   # issue 17 (L): advisor/memory/batch_lengths.py
        notes.append(f"each batch padded to its own longest sample, up to {training.seq_len} tokens (--batch-lengths "
                     "variable): the estimate is the worst padded length of a grid up to it"
                     + ("" if training.expandable_segments else
                        "; batches of changing length can make the caching allocator reserve more across steps than "
                        "any one length (not counted): export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
                        "before launching (--expandable-segments estimates it)"))
    if ctx["hf_trainer"]:
        flag = {"fp16": " --fp16", "bf16": " --bf16", "pure-bf16": " --bf16"}.get(training.precision, "")
        notes.append(f"HF Trainer: pass --per_device_train_batch_size {training.micro_batch_size} "
                     f"--gradient_accumulation_steps {ctx['gradient_accumulation_steps']}{flag}"
                     + ("; the launch scripts point it at ds_config.json (accelerate launch via the YAML, "
                        "deepspeed/torchrun via ACCELERATE_DEEPSPEED_CONFIG_FILE, same as --deepspeed ds_config.json)"
                        if ds else ""))
    return notes


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable only from the machine itself."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
