"""What the rendered files need for a tensor / sequence / context parallel layout or FSDP2 (issue 15): a pure
function of validated specs, no I/O, no torch.

Keys, as the pinned engines read them (docs/parallelism.md gives the versions that introduced each):

* accelerate 1.15 YAML ``parallelism_config:`` block: the ``parallelism_config_*`` launch options of
  ``accelerate/commands/launch.py`` (``_validate_launch_command`` copies every key of the block onto the launch
  arguments and sets ``use_parallelism_config``); ``accelerate/utils/launch.py``
  ``prepare_extend_env_parallelism_config`` turns them into ``PARALLELISM_CONFIG_*`` variables that
  ``ParallelismConfig.__post_init__`` (``accelerate/parallelism_config.py``) reads in each process.
* accelerate FSDP2 (``fsdp_version: 2``): ``FullyShardedDataParallelPlugin.__post_init__``
  (``accelerate/utils/dataclasses.py``) takes ``reshard_after_forward`` as a bool and drops
  ``backward_prefetch``, ``use_orig_params``, ``sync_module_states`` (refuses ``forward_prefetch``).
* DeepSpeed 0.19.8: ``"tensor_parallel": {"autotp_size": N}`` (``runtime/tensor_parallel/config.py``
  ``TPTrainingConfig``), ``"sequence_parallel_size"`` (``runtime/config.py``: the world DeepSpeed divides the batch
  by when no ``mpu`` is given), Ulysses / ALST in ``runtime/sequence_parallel/ulysses_sp.py``.
"""

from __future__ import annotations

from typing import Any

from ..catalog.models import ResolvedModel
from ..errors import InputError
from ..layout import dp_shard_size, is_parallel_layout
from ..specs import HardwareSpec, StrategySpec, TrainingSpec

# transformers attn_implementation for Ulysses' core attention (DeepSpeed UlyssesSPAttentionHF refuses eager).
SP_ATTENTION = {"flash": "flash_attention_2", "sdpa": "sdpa"}


def parallel_context(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
                     settings: list[dict]) -> dict | None:
    """The layout block of the template context (None for a plain data-parallel run without FSDP2).

    ``accelerate``: the ``parallelism_config`` block of the YAML (None when not written); ``autotp`` /
    ``sp``: the DeepSpeed sizes; ``ds_batch_world``: the world DeepSpeed divides ``train_batch_size`` by."""
    tp, sp, cp, rep = strategy.tp_size, strategy.sp_size, strategy.cp_size, strategy.dp_replicate_size
    fsdp2 = strategy.backend == "fsdp" and strategy.fsdp_version == 2
    if not (is_parallel_layout(strategy) or fsdp2):
        return None
    deepspeed = strategy.backend == "deepspeed"
    if deepspeed and tp > 1 and sp > 1:
        raise InputError("DeepSpeed cannot run AutoTP and Ulysses in one job: its engine replaces the Ulysses "
                         "mpu by its own tensor-parallel groups (deepspeed 0.19.8 runtime/engine.py "
                         "_configure_tensor_parallel_states: self.mpu = groups); choose --tp or --sp", field="--sp")
    shard = dp_shard_size(hw, strategy)

    def why(file: str, key: str, value: Any, reason: str) -> None:
        settings.append({"file": file, "key": key, "value": value, "why": reason})

    acc_block: dict[str, Any] | None = None
    if fsdp2 and (tp > 1 or cp > 1 or rep > 1):
        acc_block = {"dp_replicate_size": rep, "dp_shard_size": shard, "tp_size": tp, "cp_size": cp}
        if cp > 1:
            acc_block["cp_comm_strategy"] = "allgather"
        why("accelerate_config.yaml", "parallelism_config", f"dp_replicate {rep} x dp_shard {shard} x tp {tp} x "
            f"cp {cp}", f"accelerate's ParallelismConfig mesh; the product is the {hw.world_size} processes "
            "(ParallelismConfig.total_size must equal num_processes); FSDP2 shards over dp_shard"
            + (" x cp" if cp > 1 else "") + (", replicates over dp_replicate (HSDP)" if rep > 1 else ""))
        if tp > 1:
            why("accelerate_config.yaml", "parallelism_config.parallelism_config_tp_size", tp,
                f"tensor parallel inside each group of {tp} GPUs (within a node): every matmul weight of a layer "
                f"is split {tp} ways as the model's tp_plan says; load the model sharded (see Before you launch)")
        if cp > 1:
            why("accelerate_config.yaml", "parallelism_config.parallelism_config_cp_size", cp,
                f"context parallel: ring attention over {cp} GPUs, each holds 1/{cp} of every sequence "
                "(torch context_parallel; accelerate's default allgather exchange of K/V)")
        if rep > 1:
            why("accelerate_config.yaml", "parallelism_config.parallelism_config_dp_replicate_size", rep,
                f"HSDP: {rep} replicas, each FSDP2-sharded over {shard * cp} GPUs; gradients are reduce-scattered "
                "inside a replica and all-reduced across replicas")
    elif deepspeed and sp > 1:
        acc_block = {"dp_replicate_size": 1, "dp_shard_size": hw.world_size // sp, "tp_size": 1, "cp_size": 1,
                     "sp_size": sp, "sp_backend": "deepspeed", "sp_seq_length_is_variable": True,
                     "sp_attn_implementation": SP_ATTENTION.get(training.attention, "sdpa")}
        why("accelerate_config.yaml", "parallelism_config.parallelism_config_sp_size", sp,
            f"DeepSpeed Ulysses (ALST) over {sp} GPUs: accelerate registers UlyssesSPAttentionHF and wraps the "
            f"dataloader so each rank gets 1/{sp} of every sequence (sp_backend deepspeed)")
        why("accelerate_config.yaml", "parallelism_config.parallelism_config_dp_shard_size", hw.world_size // sp,
            f"the data-parallel ranks left by sp {sp}: accelerate sets DeepSpeed's train_batch_size to micro-batch "
            "x accumulation x dp_replicate x dp_shard under Ulysses")
        why("accelerate_config.yaml", "parallelism_config.parallelism_config_sp_attn_implementation",
            acc_block["sp_attn_implementation"], "the attention Ulysses wraps; it must equal the model's "
            "attn_implementation (DeepSpeed refuses a mismatch and eager)")
    autotp = tp if deepspeed and tp > 1 else None
    if autotp:
        why("ds_config.json", "tensor_parallel.autotp_size", tp, f"DeepSpeed AutoTP training: linear layers split "
            f"{tp} ways inside each node; ZeRO-{strategy.zero_stage} shards over the {hw.world_size // tp} "
            "data-parallel ranks that remain")
    if deepspeed and sp > 1:
        why("ds_config.json", "sequence_parallel_size", sp, "Ulysses degree; DeepSpeed divides the world by it "
            "when it builds the config without accelerate's mpu (HF Trainer / zero.Init)")
    # DeepSpeedConfig checks train_batch_size = micro x accumulation x W with W = mpu.get_data_parallel_world_size()
    # under Ulysses (world / sp), and dist.get_world_size() under AutoTP, whose groups are built later
    # (deepspeed/runtime/config.py DeepSpeedConfig.__init__; deepspeed/__init__.py initialize passes no mpu).
    ds_batch_world = hw.world_size // sp if deepspeed else None
    return {"tp": tp, "sp": sp, "cp": cp, "dp_replicate": rep, "dp_shard": shard, "fsdp2": fsdp2,
            "data_parallel": rep * shard, "accelerate": acc_block, "autotp": autotp,
            "sp_ds": sp if deepspeed and sp > 1 else None, "ds_batch_world": ds_batch_world,
            "sp_attention": SP_ATTENTION.get(training.attention, "sdpa")}


def parallel_env(par: dict | None) -> list[tuple[str, str]]:
    """The ``PARALLELISM_CONFIG_*`` environment accelerate launch exports for the YAML block
    (accelerate/utils/launch.py prepare_extend_env_parallelism_config), for torchrun / deepspeed launchers."""
    if not par or not par["accelerate"]:
        return []
    b = par["accelerate"]
    env = [("ACCELERATE_USE_PARALLELISM_CONFIG", "true"),
           ("PARALLELISM_CONFIG_DP_REPLICATE_SIZE", str(b["dp_replicate_size"])),
           ("PARALLELISM_CONFIG_DP_SHARD_SIZE", str(b["dp_shard_size"])),
           ("PARALLELISM_CONFIG_TP_SIZE", str(b["tp_size"])), ("PARALLELISM_CONFIG_CP_SIZE", str(b["cp_size"])),
           ("PARALLELISM_CONFIG_CP_BACKEND", "torch"), ("PARALLELISM_CONFIG_SP_SIZE", str(b.get("sp_size", 1))),
           ("PARALLELISM_CONFIG_SP_BACKEND", "deepspeed")]
    if b["cp_size"] > 1:
        env.append(("PARALLELISM_CONFIG_CP_COMM_STRATEGY", b["cp_comm_strategy"]))
    if b.get("sp_size", 1) > 1:
        env += [("PARALLELISM_CONFIG_SP_SEQ_LENGTH", "None"),
                ("PARALLELISM_CONFIG_SP_SEQ_LENGTH_IS_VARIABLE", "True"),
                ("PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION", b["sp_attn_implementation"])]
    return env


def parallel_notes(model: ResolvedModel, training: TrainingSpec, par: dict | None) -> list[str]:
    """What the training script must change for the layout (the README's "Before you launch")."""
    if not par:
        return []
    notes = []
    if par["fsdp2"] and par["tp"] > 1:
        notes.append(
            f"FSDP2 + TP: load the model already split {par['tp']} ways on accelerate's mesh, as accelerate's "
            "ND-parallel example does: `AutoModelForCausalLM.from_pretrained(name, tp_size="
            f"{par['tp']}, tp_plan=\"auto\", device_mesh=accelerator.torch_device_mesh)`; the model needs a "
            "tp_plan (config.base_model_tp_plan). Versions: accelerate 1.15's Accelerator._prepare_tp imports "
            "ReplicateParallel from transformers.integrations.tensor_parallel, which transformers 5.24 no longer "
            "defines, so with those two accelerator.prepare stops with an ImportError on any device (`dsadvise "
            "dry-run` shows it); use a transformers release that still defines it, or DeepSpeed AutoTP "
            "(--strategy zero1..zero3 --tp)")
    if par["fsdp2"] and par["cp"] > 1:
        notes.append(
            "context parallel: load the model with attn_implementation=\"sdpa\" and run each step inside "
            "`with accelerator.maybe_context_parallel(buffers=[input_ids, labels, position_ids], "
            "buffer_seq_dims=[1, 1, 1], no_restore_buffers={input_ids, labels, position_ids}):` so each rank "
            f"keeps 1/{par['cp']} of the sequence; ring attention runs in CUDA SDPA kernels (flash / efficient)")
    if par["autotp"]:
        notes.append(
            f"DeepSpeed AutoTP: nothing to change in the model code; every rank of a tensor-parallel group of "
            f"{par['autotp']} must get the same batch (accelerate's prepared dataloader does this; DeepSpeed checks "
            "the first batch); save with accelerator.save_model / zero_gather_16bit weights to merge the shards")
    if par["sp_ds"]:
        sp = par["sp_ds"]
        notes.append(
            f"Ulysses SP {sp}: load the model with attn_implementation=\"{par['sp_attention']}\" (the same value as "
            "parallelism_config_sp_attn_implementation); accelerator.prepare(model, optimizer, dataloader) "
            "registers UlyssesSPAttentionHF and shards each batch along the sequence (it yields input_ids, "
            "position_ids and shift_labels, no labels)")
        notes.append(
            "Ulysses SP loss: each rank holds 1/%d of the tokens; compute `loss = "
            "unwrapped.loss_function(logits=out.logits, labels=None, shift_labels=batch[\"shift_labels\"], "
            "vocab_size=unwrapped.config.vocab_size)` and average it over the SP group weighted by the tokens "
            "that are not -100 (torch.distributed.nn.functional.all_gather over "
            "deepspeed.runtime.sequence_parallel.parallel_state_sp.get_sequence_parallel_group())" % sp)
        notes.append(
            "ALST tiled MLP (deepspeed.runtime.sequence_parallel.ulysses_sp.TiledMLP): before building the model, "
            "replace the MLP class's forward (e.g. transformers.models.llama.modeling_llama.LlamaMLP.forward) by one "
            "returning `TiledMLP.apply(mlp_forward, self, x, num_shards, [self.down_proj.weight, "
            "self.gate_proj.weight, self.up_proj.weight])` with num_shards = ceil(local seq / hidden size), agreed "
            "across ranks by an all_reduce MAX (the example in TiledMLP's docstring): the MLP's intermediate "
            "activations then exist one tile at a time; "
            + ("the estimate above counts it (--tiled-mlp)" if training.tiled_mlp else
               "the estimate above counts the MLP untiled: add --tiled-mlp to `dsadvise estimate`/`generate` to "
               "estimate with it"))
        notes.append(
            "ALST tiled logits + loss (TiledFusedLogitsLoss): compute the loss from the last hidden states with "
            "`TiledFusedLogitsLoss.apply(loss_fn, unwrapped, hidden_states, shift_labels, None, shards, "
            "[unwrapped.lm_head.weight], \"mean\")`, loss_fn = lm_head + cross-entropy on one tile, so the "
            "N x vocabulary logits never exist whole")
    return notes


def readme_batch(par: dict | None, world: int) -> str:
    """The README's 'x N GPU(s)' part of the global batch: the data-parallel ranks under a layout."""
    if not par or par["data_parallel"] == world:
        return f"{world} GPU(s)"
    return f"{par['data_parallel']} data-parallel rank(s) ({world} GPUs / tp {par['tp']} x sp {par['sp']} x cp {par['cp']})"
