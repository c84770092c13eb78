"""Validated inputs of every estimate: hardware, training setup and parallel strategy.

All sizes inside are bytes; the CLI converts GiB at the edge. Every field carries its allowed range so
that a bad value fails with a message naming the field (see :func:`advisor.errors.InputError`).
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from .choices import (Attention, Backend, BucketSizes, Checkpointing, FsdpSharding, Loss, Method, OffloadTarget,  # noqa: F401
                      Optimizer, Precision, StrategyName, Task)
from .choices import FsdpVersion  # issue 15: parallel layouts
from .choices import Framework  # issue 16 (helper F)
from .choices import BaseDtype  # issue 17: LoRA base dtype
from .choices import CheckpointSave  # issue 17: checkpoint save format
from .choices import QloraQuantizer  # issue 17 (helper L)
from .choices import ModelCode  # issue 17 (helper G)
from .choices import BatchLengths  # issue 17 (helper L): variable-length batches

GiB = 1024**3

STRATEGY_NAMES: tuple[str, ...] = StrategyName.__args__  # type: ignore[attr-defined]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GPUInfo(_Spec):
    """One accelerator model from the GPU catalog (``advisor/data/gpus.yaml``)."""

    name: str
    vendor: Literal["nvidia", "amd"] = "nvidia"
    generation: str = Field("unknown", description="architecture generation, picks the step-time model's "
                                                   "achievable fraction of peak (advisor/data/step_time.yaml)")
    memory_bytes: int = Field(gt=0)
    bf16: bool
    fp16_tflops: float = Field(gt=0, description="peak dense fp16 tensor TFLOPS")
    bf16_tflops: float | None = Field(None, description="peak dense bf16 TFLOPS; None without bf16")
    fp8_tflops: float | None = Field(None, description="peak dense FP8 tensor TFLOPS; None without FP8 units")
    fp32_tflops: float = Field(gt=0)
    hbm_bandwidth_gbps: float = Field(gt=0, description="memory bandwidth, GB/s")
    intra_node_link: Literal["nvlink", "pcie", "infinity-fabric"]
    intra_node_bandwidth_gbps: float = Field(gt=0, description="per-GPU, one direction, GB/s")
    inter_node_bandwidth_gbps: float = Field(gt=0, description="typical per-node network, GB/s")
    pcie_bandwidth_gbps: float = Field(gt=0, description="host link, one direction, GB/s")
    aliases: tuple[str, ...] = ()
    source: str = ""


class HardwareSpec(_Spec):
    """The machines: GPUs per node, nodes, per-GPU memory, CPU RAM and NVMe per node."""

    gpus_per_node: int = Field(1, ge=1, le=64)
    nodes: int = Field(1, ge=1, le=4096)
    vram_bytes: int = Field(gt=0, le=2048 * GiB, description="memory of one GPU")
    gpu: GPUInfo | None = None
    cpu_ram_bytes: int | None = Field(None, gt=0, le=64 * 1024 * GiB, description="RAM of one node")
    nvme_path: str | None = None
    nvme_bytes: int | None = Field(None, gt=0)

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def bf16_supported(self) -> bool:
        """bf16 needs Ampere (sm80) or newer / CDNA2+; unknown GPUs (VRAM only) are assumed capable."""
        return True if self.gpu is None else self.gpu.bf16


class LoraSpec(_Spec):
    """LoRA adapters: rank and which linear layers get them (normalized names or ``all-linear``)."""

    rank: int = Field(16, ge=1, le=4096)
    alpha: float = Field(32, gt=0)
    target_modules: tuple[str, ...] = ("all-linear",)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="lora_dropout (PEFT LoraConfig default 0.0)")


MAX_MICRO_BATCH = 65_536     # the largest micro-batch a TrainingSpec holds (the search never goes above it)


class TrainingSpec(_Spec):
    """What is run: sequence length, batches, precision, optimizer, method and memory savers."""

    task: Task = "train"
    seq_len: int = Field(2048, ge=1, le=4_194_304)
    micro_batch_size: int = Field(1, ge=1, le=MAX_MICRO_BATCH)
    global_batch_size: int | None = Field(None, ge=1, le=100_000_000)
    precision: Precision = "bf16"
    optimizer: Optimizer = "adamw"
    method: Method = "full"
    lora: LoraSpec = LoraSpec()
    freeze_trainable_layers: int = Field(2, ge=1, le=1024,
                                         description="method=freeze: the last N decoder layers train "
                                                     "(LLaMA-Factory's freeze_trainable_layers default 2)")
    activation_checkpointing: Checkpointing = "none"
    attention: Attention = "sdpa"
    prompt_len: int | None = Field(None, ge=1, le=4_194_304,
                                   description="task=infer: prompt tokens of seq_len (the rest is generated); "
                                               "None = the whole sequence is prompt (sliding-window KV cache)")
    expandable_segments: bool = Field(False, description="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
                                                         "(the caching allocator grows one segment per pool)")
    loss: Loss = Field(
        "plain", description="cross-entropy kernel: plain (transformers: whole N x V logits), chunked (torchtune "
                             "CEWithChunkedOutputLoss: per sequence chunk), fused-linear (Liger fused linear "
                             "cross-entropy: no logits), legacy-inline (transformers <= 4.45: the loss computed "
                             "inside the model on fp32 logits it returns, shifted by a contiguous copy), trl-head "
                             "(TRL >= 1.16 SFTTrainer's tiled fused LM head, ChunkedLogProbFunction: no logits)")
    loss_chunks: int = Field(8, ge=1, le=65_536, description="loss=chunked: sequence chunks (torchtune "
                                                             "num_output_chunks default 8)")
    offload_activations: bool = Field(False, description="activations saved for backward kept in pinned CPU "
                                                         "memory (torch.autograd.graph.save_on_cpu)")
    double_quant: bool = Field(True, description="QLoRA: bitsandbytes bnb_4bit_use_double_quant")
    # --- issue 15 (helper T): ALST tiled MLP (advisor/memory/tiling.py) ---
    tiled_mlp: bool = Field(False, description="DeepSpeed ALST TiledMLP around every decoder layer's MLP "
                                               "(ulysses_sp.py): saves only the MLP input, recomputes per shard")
    # --- issue 17: the dtype the LoRA base is loaded in ---
    base_dtype: BaseDtype = Field("16-bit", description="method=lora: the frozen base as loaded (from_pretrained "
                                                        "torch_dtype): 16-bit (the compute dtype) or fp32 (transformers "
                                                        "v4 without torch_dtype), run under fp16/bf16 autocast; "
                                                        "method=qlora: the non-quantized weights (embeddings, norms, "
                                                        "lm_head), fp32 after PEFT's prepare_model_for_kbit_training "
                                                        "(one GPU / DDP)")

    @model_validator(mode="after")
    def _base_dtype(self) -> "TrainingSpec":
        if self.base_dtype == "fp32" and self.method not in ("lora", "qlora"):
            raise ValueError("--base-dtype fp32 is a LoRA/QLoRA setting (the frozen base's dtype): use it with "
                             "--method lora or qlora")
        if self.base_dtype == "fp32" and self.method == "qlora" and self.qlora_quantizer == "lightning":
            # issue 17 (L): lightning's BitsandbytesPrecision quantizes every linear and casts the rest itself
            raise ValueError("--base-dtype fp32 is PEFT's prepare_model_for_kbit_training upcast; litgpt's QLoRA "
                             "(--qlora-quantizer lightning) runs no PEFT and quantizes the lm_head: drop one of them")
        if self.base_dtype == "fp32" and self.precision not in ("fp16", "bf16"):
            raise ValueError("--base-dtype fp32 means an fp32 base under fp16/bf16 autocast: use it with "
                             "--precision bf16 or fp16 (--precision fp32 already counts an fp32 base)")
        return self
    # --- issue 17 (helper T): the software stack a run uses (advisor/data/stacks.yaml maps versions to behaviours) ---
    torch_version: str | None = Field(None, description="torch major.minor the run uses (fixes NCCL's NVLS buffer "
                                                        "size via its wheels); None = the floor over versions")
    transformers_version: str | None = Field(None, description="transformers major.minor the run uses (per-layer "
                                                               "rotary caches, the inline fp32 loss); None = current")

    # --- session 10 (helper R): the DeepSpeed a run uses (ZeRO-3's coordinator, advisor/memory/zero3_gather.py) ---
    deepspeed_version: str | None = Field(None, description="DeepSpeed major.minor the run uses (ZeRO-3's parameter "
                                                            "coordinator: reset after the backward before 0.16, at "
                                                            "each forward since); None = the larger of the two")

    @field_validator("torch_version", "transformers_version", "deepspeed_version")
    @classmethod
    def _known_version(cls, value: str | None, info) -> str | None:
        """A version dsadvise knows, as major.minor (ValueError names the versions it knows)."""
        if value is None:
            return None
        from .stacks import normalize_version

        return normalize_version(info.field_name.removesuffix("_version"), value)

    @model_serializer(mode="wrap")
    def _without_unset_stack(self, handler):
        """The stack versions appear in dumps only when given (a dump without them is what it was before)."""
        data = handler(self)
        if isinstance(data, dict):
            for name in ("torch_version", "transformers_version", "deepspeed_version"):
                if data.get(name, 0) is None:
                    del data[name]
            if data.get("sync_each_batch", True) is False:   # issue 17 (helper L): likewise, only when set
                del data["sync_each_batch"]
            if data.get("model_code", "") == "transformers":   # issue 17 (helper G): likewise, only when set
                del data["model_code"]
            if data.get("checkpoint_save", "") == "auto":   # issue 17: likewise, only when set
                del data["checkpoint_save"]
            if data.get("batch_lengths", "") == "fixed":   # issue 17 (helper L): likewise, only when set
                del data["batch_lengths"]
        return data

    # --- issue 17 (helper L): who quantizes a QLoRA model (advisor/param_count.check_qlora_quantizer) ---
    qlora_quantizer: QloraQuantizer = Field(
        "transformers", description="QLoRA: transformers (BitsAndBytesConfig: decoder linears NF4, lm_head 16-bit; "
                                    "PEFT, TRL, axolotl, LLaMA-Factory) or lightning (BitsandbytesPrecision, litgpt "
                                    "--quantize bnb.nf4: every nn.Linear NF4, the lm_head included, quantized from "
                                    "fp16, so each dequantization is an fp16 copy cast to the compute dtype)")
    # --- issue 17 (helper G): whose model code runs the forward (advisor/families/litgpt_replay.py) ---
    model_code: ModelCode = Field(
        "transformers", description="transformers (the modeling files, PEFT LoRA, bitsandbytes QLoRA) or litgpt "
                                    "(litgpt finetune/lora.py and full.py at fd71063c: litgpt's GPT, its LoRA layers, "
                                    "lm_head and loss per 128-token chunk; QLoRA quantized by lightning)")
    # --- issue 17 (helper L): accelerate's GradientAccumulationPlugin(sync_each_batch=True) ---
    sync_each_batch: bool = Field(False, description="FSDP with gradient accumulation: every micro-batch reduce-"
                                                     "scatters its gradients (accelerate GradientAccumulationPlugin "
                                                     "sync_each_batch) instead of accumulating unsharded ones under "
                                                     "no_sync: no unsharded gradients kept, one gradient "
                                                     "reduce-scatter per micro-batch")
    # --- issue 17: how checkpoints are saved (advisor/memory/checkpoint_save.py consolidated_save, checkpoint_save_cpu) ---
    checkpoint_save: CheckpointSave = Field(
        "auto", description="auto: what dsadvise renders (ZeRO-3 stage3_gather_16bit_weights_on_model_save, FSDP "
                            "SHARDED_STATE_DICT); sharded: every rank saves its shard; consolidated: ZeRO-3 gathers "
                            "the 16-bit model into rank 0's CPU RAM, FSDP FULL_STATE_DICT the model and the "
                            "optimizer state")
    # --- issue 17 (helper L): variable-length batches (advisor/memory/batch_lengths.py) ---
    batch_lengths: BatchLengths = Field(
        "fixed", description="fixed: every batch is seq_len tokens (packed, or padded to the maximum length); "
                             "variable: each batch is padded to its own longest sample (dynamic padding, no "
                             "packing) and seq_len is the longest: the estimate is the largest over a grid of "
                             "padded lengths up to seq_len")

    @model_validator(mode="after")
    def _variable_lengths_train(self) -> "TrainingSpec":
        """issue 17 (L): padding each batch to its longest sample is a training setting."""
        if self.batch_lengths == "variable" and self.task != "train":
            raise ValueError("--batch-lengths variable is a training setting (each training batch padded to its "
                             "longest sample); --task infer "
                             "estimates --seq-len tokens")
        return self


class StrategySpec(_Spec):
    """How the model is spread over the GPUs and what is offloaded to CPU or NVMe."""

    backend: Backend = "single"
    zero_stage: int | None = Field(None, ge=0, le=3)
    fsdp_sharding: FsdpSharding | None = None
    offload_optimizer: OffloadTarget = "none"
    offload_param: OffloadTarget = "none"
    bucket_sizes: BucketSizes = Field(
        "auto", description="DeepSpeed bucket sizes: HF-integration 'auto' values derived from hidden size, "
                            "or DeepSpeed's built-in defaults")
    sub_group_size: int | None = Field(
        None, ge=1, le=10**12,
        description="DeepSpeed ZeRO-3 sub_group_size (elements): the optimizer steps one sub group at a time; "
                    "None = the value of bucket_sizes (1e9)")
    # --- issue 15: tensor / sequence / context parallelism (advisor/layout.py holds the cross-checks) ---
    # Mesh sizes as accelerate's ParallelismConfig names them (accelerate/parallelism_config.py); the data-parallel
    # shard size is what remains: world = dp_replicate x dp_shard x tp x sp x cp (ParallelismConfig.total_size).
    tp_size: int = Field(1, ge=1, le=1024, description="tensor-parallel degree (DeepSpeed AutoTP "
                                                       "tensor_parallel.autotp_size, accelerate tp_size)")
    sp_size: int = Field(1, ge=1, le=1024, description="Ulysses / ALST sequence-parallel degree (DeepSpeed "
                                                       "sequence_parallel_size, accelerate sp_size)")
    cp_size: int = Field(1, ge=1, le=1024, description="context-parallel degree, ring attention under FSDP2 "
                                                       "(accelerate cp_size)")
    dp_replicate_size: int = Field(1, ge=1, le=4096, description="HSDP replicas (accelerate dp_replicate_size)")
    fsdp_version: FsdpVersion = Field(1, description="FSDP generation: 1 (FullyShardedDataParallel) or 2 "
                                                     "(fully_shard, what ParallelismConfig needs)")
    allow_cross_node_tp: bool = Field(False, description="let --tp span nodes (its per-layer all-reduces then "
                                                         "cross the network)")

    @model_validator(mode="after")
    def _layout(self) -> "StrategySpec":
        """Which engine runs each layout (accelerate 1.15 / DeepSpeed 0.19.8 sources: see advisor/layout.py)."""
        fsdp2 = self.backend == "fsdp" and self.fsdp_version == 2
        if self.fsdp_version == 2 and self.backend != "fsdp":
            raise ValueError("--fsdp-version 2 is an FSDP setting: use it with --strategy fsdp-*")
        if self.cp_size > 1 and not fsdp2:
            raise ValueError("--cp needs FSDP2: --strategy fsdp-full or fsdp-grad-op with --fsdp-version 2 "
                             "(accelerate runs context parallelism only under FSDP2)")
        if self.sp_size > 1 and self.backend != "deepspeed":
            raise ValueError("--sp needs DeepSpeed: --strategy zero0..zero3 (Ulysses/ALST runs in DeepSpeed; "
                             "accelerate sp_backend 'deepspeed')")
        if self.sp_size > 1 and self.cp_size > 1:
            raise ValueError("--sp and --cp cannot be combined (accelerate ParallelismConfig: CP and SP are "
                             "mutually exclusive)")
        if self.dp_replicate_size > 1 and not fsdp2:
            raise ValueError("--dp-replicate needs FSDP2 (--strategy fsdp-* --fsdp-version 2: HSDP via "
                             "ParallelismConfig); with FSDP1 use --strategy fsdp-hybrid")
        if fsdp2 and self.fsdp_sharding == "NO_SHARD":
            raise ValueError("--fsdp-version 2 has no NO_SHARD: use --strategy ddp, or fsdp-full/fsdp-grad-op")
        if fsdp2 and self.fsdp_sharding == "HYBRID_SHARD":
            raise ValueError("--fsdp-version 2 expresses hybrid sharding as --strategy fsdp-full with --dp-replicate N "
                             "(accelerate's FSDP2 takes only reshard_after_forward true/false)")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "StrategySpec":
        if self.backend == "deepspeed" and self.zero_stage is None:
            raise ValueError("zero_stage is required with the deepspeed backend")
        if self.backend != "deepspeed" and self.zero_stage is not None:
            raise ValueError("zero_stage is only meaningful with the deepspeed backend")
        if self.backend == "fsdp" and self.fsdp_sharding is None:
            raise ValueError("fsdp_sharding is required with the fsdp backend")
        if self.backend != "fsdp" and self.fsdp_sharding is not None:
            raise ValueError("fsdp_sharding is only meaningful with the fsdp backend")
        if self.backend in ("single", "ddp") and (self.offload_optimizer != "none" or self.offload_param != "none"):
            raise ValueError(f"offload needs DeepSpeed ZeRO or FSDP, not {self.backend}")
        if self.offload_param != "none":
            sharded_params = (self.backend == "deepspeed" and self.zero_stage == 3) or (
                self.backend == "fsdp" and self.fsdp_sharding in ("FULL_SHARD", "HYBRID_SHARD"))
            if not sharded_params:
                raise ValueError("offload_param needs ZeRO-3 or FSDP FULL_SHARD/HYBRID_SHARD")
        if self.backend == "fsdp" and "nvme" in (self.offload_optimizer, self.offload_param):
            raise ValueError("FSDP offloads to CPU only; NVMe offload is DeepSpeed ZeRO-Infinity")
        if self.backend == "fsdp" and self.offload_optimizer != self.offload_param:
            raise ValueError("FSDP's CPUOffload moves parameters, gradients and optimizer together: "
                             "set offload_optimizer and offload_param alike")
        if self.offload_optimizer != "none" and self.backend == "deepspeed" and self.zero_stage == 0:
            raise ValueError("optimizer offload needs ZeRO stage 1, 2 or 3")
        return self

    @property
    def name(self) -> str:
        """The CLI name of this strategy (``zero3``, ``fsdp-full``, ...)."""
        if self.backend == "deepspeed":
            return f"zero{self.zero_stage}"
        if self.backend == "fsdp":
            return {"FULL_SHARD": "fsdp-full", "SHARD_GRAD_OP": "fsdp-grad-op",
                    "HYBRID_SHARD": "fsdp-hybrid", "NO_SHARD": "fsdp-no-shard"}[self.fsdp_sharding]
        return self.backend

    @classmethod
    def from_name(cls, name: str, offload_optimizer: OffloadTarget = "none",
                  offload_param: OffloadTarget = "none", **extra) -> "StrategySpec":
        """Build a strategy from its CLI name (``single``, ``ddp``, ``zero0``..``zero3``, ``fsdp-*``)."""
        common = dict(offload_optimizer=offload_optimizer, offload_param=offload_param, **extra)
        if name.startswith("zero") and name[4:].isdigit():
            return cls(backend="deepspeed", zero_stage=int(name[4:]), **common)
        fsdp = {"fsdp-full": "FULL_SHARD", "fsdp-grad-op": "SHARD_GRAD_OP",
                "fsdp-hybrid": "HYBRID_SHARD", "fsdp-no-shard": "NO_SHARD"}
        if name in fsdp:
            return cls(backend="fsdp", fsdp_sharding=fsdp[name], **common)
        return cls(backend=name, **common)


# issue 16 (helper F): which training framework the rendered files are for
class FrameworkSpec(_Spec):
    """The training framework whose own config files ``generate`` writes next to the accelerate / DeepSpeed
    ones (``accelerate``: none beyond those)."""

    framework: Framework = "accelerate"
