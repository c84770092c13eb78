"""What a checkpoint save gathers into rank 0's CPU RAM and onto each GPU (``--checkpoint-save``), per engine and
fine-tuning method, read from the save paths of the engines (versions installed: transformers 5.24, accelerate
1.15, DeepSpeed 0.19.8, PEFT 0.21.2, torch 2.13; older ones said where they differ). Bytes throughout.

DeepSpeed ZeRO-3 (deepspeed/runtime/engine.py ``_zero3_consolidated_16bit_state_dict``): one module at a time,
``GatheredParameters(module.parameters(recurse=False))`` on the GPU (every parameter of the module, frozen ones
included: the step's gathered-module buffer already holds that much), then rank 0 keeps ``param.detach().cpu()``
of each parameter - all of them, or with ``exclude_frozen_parameters=True`` only those with ``requires_grad``.
Who calls it with what:

* accelerate ``Accelerator.get_state_dict`` (accelerator.py) and ``save_model``: the whole model, whatever the
  method (PEFT's accelerate + DeepSpeed examples pass it to ``save_pretrained(state_dict=...)``, which keeps the
  adapters only when it writes: peft ``get_peft_model_state_dict`` filters a dict already gathered);
* the HF Trainer's ``save_model`` (transformers trainer.py): for a PEFT model under ZeRO-3, since transformers
  5.0, ``_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)`` - the adapters only, called
  directly, so also when ``stage3_gather_16bit_weights_on_model_save`` is false; before 5.0 (4.39.3 ... 4.57.1
  read) ``accelerator.get_state_dict(self.deepspeed)``: the whole model, and nothing when the key is false
  (ValueError -> ``save_checkpoint``: ZeRO shards). TRL, axolotl and LLaMA-Factory save through it.

FSDP ``FULL_STATE_DICT``: the Trainer's ``save_model`` calls ``accelerator.get_state_dict(model)`` (FSDP1:
``FullStateDictConfig(offload_to_cpu=True, rank0_only=True)``; FSDP2: ``get_model_state_dict(full_state_dict=True,
cpu_offload=True)``), the whole model also for a PEFT model, which PEFT filters when it writes; accelerate's
``save_fsdp_model(adapter_only=True)`` (the Trainer's resumable checkpoint) gathers the whole model too under FSDP1
(peft ``get_peft_model_state_dict`` calls ``model.state_dict()`` of the wrapped model) and only the adapters under
FSDP2 (``ignore_frozen_params``), after ``save_model``; then the optimizer state (``save_fsdp_optimizer``), which
holds the trainable parameters' states only."""

from __future__ import annotations

from ..param_count import ParameterCounts
from ..specs import StrategySpec, TrainingSpec

CHECKPOINT_SAVE_ITEM = "checkpoint save: consolidated 16-bit model on rank 0 (above model loading)"
ADAPTERS_SAVE_ITEM = ("checkpoint save: PEFT adapters gathered on rank 0 (HF Trainer save_model, transformers >= "
                      "5.0; above model loading)")
FSDP_SAVE_ITEM = ("checkpoint save: FULL_STATE_DICT model or optimizer state on rank 0, whichever is larger (above "
                  "model loading)")
FSDP_SAVE_GPU_ITEM = "checkpoint save: FULL_STATE_DICT units gathered in full precision (above the step)"


def consolidated_save(training: TrainingSpec, strategy: StrategySpec) -> bool:
    """Whether a checkpoint save gathers whole tensors into rank 0's CPU RAM: ZeRO-3 with
    ``stage3_gather_16bit_weights_on_model_save``, FSDP with ``FULL_STATE_DICT``. ``--checkpoint-save auto`` is
    what dsadvise renders: ZeRO-3 consolidated (save_model writes a loadable model), FSDP sharded."""
    zero3 = strategy.backend == "deepspeed" and strategy.zero_stage == 3
    if training.checkpoint_save == "auto":
        return zero3
    return training.checkpoint_save == "consolidated" and (zero3 or strategy.backend == "fsdp")


def _zero3(strategy: StrategySpec) -> bool:
    return strategy.backend == "deepspeed" and strategy.zero_stage == 3


def peft_adapters_saved_alone(training: TrainingSpec) -> bool:
    """True when the HF Trainer of the run's transformers saves a PEFT model under ZeRO-3 by gathering its adapters
    only (transformers >= 5.0; no version given: the current one). advisor/data/stacks.yaml
    ``zero3_peft_save_adapters``."""
    from ..stacks import zero3_peft_save_adapters

    return training.method in ("lora", "qlora") and zero3_peft_save_adapters(training.transformers_version)


def zero3_adapter_bytes(trainable: int, training: TrainingSpec) -> int:
    """Bytes of the trainable parameters in a ZeRO-3 state dict. LoRA on a base built under ``zero.Init`` (what
    ``from_pretrained`` does under a ZeRO-3 config): PEFT >= 0.12 makes the adapters fp32
    (``autocast_adapter_dtype``) and DeepSpeed casts only the parameters of a model that is not zero.Init'ed
    (engine.py ``_configure_distributed_model`` -> ``_cast_module_mixed_precision``, deepspeedai/DeepSpeed#8066;
    0.19.2; before it, ``module.bfloat16()`` cast them): 4 bytes, measured on DeepSpeed 0.19.8
    (tests/memory/test_checkpoint_save_engine.py); the one rule is bytes_per_param.zero3_keeps_fp32_lora_adapters.
    PEFT < 0.12 (transformers <= 4.42's time) builds them in the base's 16-bit dtype; a QLoRA base is not
    zero.Init'ed, so DeepSpeed casts them: 16-bit. Full fine-tuning and --method freeze: the engine's 16-bit
    weights."""
    from .bytes_per_param import zero3_keeps_fp32_lora_adapters

    half = 4 if training.precision == "fp32" else 2
    if zero3_keeps_fp32_lora_adapters(training):
        return trainable * 4
    return trainable * half


def zero3_whole_model_bytes(arch, counts: ParameterCounts, trainable: int, sb, training: TrainingSpec) -> int:
    """Bytes of the whole model in a ZeRO-3 consolidated state dict on rank 0: every parameter in the dtype the
    engine holds it (``param.detach().cpu()``). QLoRA: a Linear4bit's weight is the packed 4-bit data (0.5 byte
    per element in uint8 or bnb_4bit_quant_storage=bf16 storage); its quant_state is no parameter or buffer, so
    not in the dict; the embeddings, norms and lm_head 16-bit. LoRA: the base as counted plus the adapters."""
    from .model_states import qlora_quantized_elements

    half = 4 if training.precision == "fp32" else 2
    if training.method == "qlora":
        quantized = qlora_quantized_elements(arch, counts, training)
        return int(quantized * 0.5 + (counts.total - quantized) * half + zero3_adapter_bytes(trainable, training))
    if training.method == "lora":
        return int(counts.total * sb.frozen_weight + zero3_adapter_bytes(trainable, training))
    return counts.total * half


def checkpoint_save_cpu(arch, counts: ParameterCounts, trainable: int, sb, training: TrainingSpec,
                        strategy: StrategySpec) -> tuple[str, int]:
    """(breakdown item, CPU bytes on rank 0's node) while a checkpoint is written; ("", 0) when nothing is gathered.

    ZeRO-3 consolidated (``stage3_gather_16bit_weights_on_model_save``): the whole model
    (:func:`zero3_whole_model_bytes`: accelerate's ``get_state_dict``, the Trainer before transformers 5.0 - for a
    PEFT model the larger of the paths, said in a note). ZeRO-3 sharded with a PEFT model under transformers >= 5.0:
    the Trainer still gathers the adapters (:func:`zero3_adapter_bytes`). FSDP ``FULL_STATE_DICT``: rank 0 holds
    the whole model in its sharded parameters' dtype (fp32 under MixedPrecision; PEFT included, see the module
    docstring), then the whole optimizer state (the trainable parameters' moments): the larger of the two."""
    if _zero3(strategy):
        if consolidated_save(training, strategy):
            return CHECKPOINT_SAVE_ITEM, zero3_whole_model_bytes(arch, counts, trainable, sb, training)
        if peft_adapters_saved_alone(training):
            return ADAPTERS_SAVE_ITEM, zero3_adapter_bytes(trainable, training)
        return "", 0
    if not consolidated_save(training, strategy):
        return "", 0
    model_sd = fsdp_units(arch, counts, trainable, sb, training, strategy)[0]
    optim_sd = trainable * (sb.optimizer + sb.master)
    return FSDP_SAVE_ITEM, int(max(model_sd, optim_sd))


def fsdp_units(arch, counts: ParameterCounts, trainable: int, sb, training: TrainingSpec,
               strategy: StrategySpec) -> tuple[int, int, int, int]:
    """(whole model, root unit, largest layer unit, largest module) bytes of a FULL_STATE_DICT in the sharded
    parameters' dtypes. LoRA/QLoRA: the whole base is frozen (``counts.total``) and the adapters come on top, in
    ``sb.weight`` (PEFT's fp32); a QLoRA base holds its decoder linears as NF4 storage with their quant_state
    (``Linear4bit._save_to_state_dict``) and the embeddings, norms and lm_head 16-bit, as the model states count
    them (advisor/memory/model_states.py). Measured: FSDP1 FULL_STATE_DICT of a LoRA model on a real engine
    (tests/memory/test_checkpoint_save_engine.py)."""
    from .bytes_per_param import fp32_qlora_rest
    from .model_states import qlora_quantized_elements

    layers = max(arch.num_layers, 1)
    root = counts.embedding + counts.lm_head + counts.final
    if training.method not in ("lora", "qlora"):
        each = max(sb.weight, sb.frozen_weight)
        whole = trainable * sb.weight + (counts.total - trainable) * sb.frozen_weight
        return int(whole), int(root * each), int(counts.layer_gathered * each), int(counts.largest_module * each)
    adapters_per_layer = trainable / layers
    if training.method == "qlora":
        rest_b = 4 if fp32_qlora_rest(training, strategy) else 2
        quantized = qlora_quantized_elements(arch, counts, training)
        base = quantized * sb.frozen_weight + (counts.total - quantized) * rest_b
        per_layer_q = quantized / layers
        layer = per_layer_q * sb.frozen_weight + (counts.layer_gathered - per_layer_q) * rest_b
        root_b, module_b = root * rest_b, counts.largest_module * max(rest_b, sb.weight)
    else:
        base = counts.total * sb.frozen_weight
        layer = counts.layer_gathered * sb.frozen_weight
        root_b, module_b = root * sb.frozen_weight, counts.largest_module * max(sb.frozen_weight, sb.weight)
    return (int(base + trainable * sb.weight), int(root_b), int(layer + adapters_per_layer * sb.weight),
            int(module_b))


def checkpoint_save_notes(trainable: int, training: TrainingSpec, strategy: StrategySpec) -> list[str]:
    """What the save of a PEFT model under ZeRO-3 gathers by the other path (the estimate counts the larger)."""
    if not (_zero3(strategy) and training.method in ("lora", "qlora")):
        return []
    adapters = zero3_adapter_bytes(trainable, training) / 2**20
    if consolidated_save(training, strategy):
        if peft_adapters_saved_alone(training):
            return [f"checkpoint save: counted as accelerate's get_state_dict gathers a PEFT model under ZeRO-3, the "
                    f"whole model on rank 0's CPU (PEFT keeps the adapters when it writes); the HF Trainer of "
                    f"transformers >= 5.0 (TRL, axolotl, LLaMA-Factory) gathers only the adapters ({adapters:.0f} "
                    f"MiB), even with stage3_gather_16bit_weights_on_model_save false: --checkpoint-save sharded "
                    f"counts that"]
        return ["checkpoint save: the HF Trainer of transformers < 5.0 gathers a PEFT model whole under ZeRO-3 "
                "(accelerator.get_state_dict) before PEFT keeps the adapters: counted"]
    if peft_adapters_saved_alone(training):
        return [f"checkpoint save: ZeRO shards, but the HF Trainer of transformers >= 5.0 still gathers a PEFT "
                f"model's adapters on rank 0 (_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True), "
                f"{adapters:.0f} MiB; counted where it exceeds the model-loading peak)"]
    return []


def fsdp_save_gpu(arch, counts: ParameterCounts, trainable: int, sb, training: TrainingSpec, strategy: StrategySpec,
                  at_rest: int) -> int:
    """GPU bytes while FSDP builds a ``FULL_STATE_DICT`` (0 when it does not), on top of ``at_rest``: what stays
    between steps (sharded parameters, optimizer states, buffers; the gradients are None after ``zero_grad``).

    FSDP1: ``state_dict()`` unshards the root unit (``_full_pre_state_dict_hook`` -> ``_enter_unshard_params_ctx``,
    recurse=False) and then each layer unit, in the sharded parameters' dtype (not MixedPrecision's); with
    ``offload_to_cpu`` each unsharded flat parameter is moved to the CPU at once (``FlatParamHandle.to_cpu``:
    ``_free_unsharded_flat_param``), so one unit at a time, the larger of the root and a layer
    (torch/distributed/fsdp/_state_dict_utils.py, _unshard_param_utils.py ``_unshard_fsdp_state_params``).
    FSDP2: ``get_model_state_dict(full_state_dict=True, cpu_offload=True)`` gathers one DTensor at a time
    (torch/distributed/_state_dict_utils.py ``_gather_state_dict``: ``full_tensor()``, then to the CPU): the
    largest parameter-holding module's tensors at most."""
    if strategy.backend != "fsdp" or not consolidated_save(training, strategy):
        return 0
    _, root, layer, module = fsdp_units(arch, counts, trainable, sb, training, strategy)
    if strategy.fsdp_version == 2:
        return at_rest + module
    return at_rest + max(root, layer)
