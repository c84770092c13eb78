"""Inference memory: weights + KV cache + the largest transient, for two layouts.

* ``replica-per-gpu``: every GPU holds the whole model and serves its own batch (data-parallel batch
  inference launched with ``accelerate launch``; throughput scales with GPUs).
* ``device-map-auto``: one process splits the layers over the node's GPUs (``device_map="auto"``); fits
  larger models, but only one GPU computes at a time (naive pipeline).
"""

from __future__ import annotations

import math

from ..catalog.models import ResolvedModel
from ..param_count import ParameterCounts, linear_shapes
from ..estimate_result import (Estimate, InferenceLayout, ModelInfo, PerGPU, PerNodeCPU, hardware_info,
                               strategy_info)
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .bytes_per_param import NF4_DOUBLE_QUANT_BYTES
from .overhead import Overhead


def kv_cache_bytes(counts_layers: int, kv_heads: int, head_dim: int, seq_len: int, batch: int,
                   dtype_bytes: int) -> int:
    """KV cache: layers × 2 (K and V) × kv_heads × head_dim × seq × batch × bytes (HF DynamicCache)."""
    return counts_layers * 2 * kv_heads * head_dim * seq_len * batch * dtype_bytes


def weight_bytes_for_inference(model: ResolvedModel, counts: ParameterCounts, training: TrainingSpec) -> int:
    """Bytes of the weights as loaded for inference: fp32, 16-bit, or NF4 linears for ``qlora``."""
    if training.method == "qlora":
        # bitsandbytes 4-bit quantizes decoder linears only; embeddings, norms and lm_head stay 16-bit.
        linear = sum(i * o * c for i, o, c in linear_shapes(model.architecture).values())
        quantized = linear * model.architecture.num_layers
        return int(quantized * NF4_DOUBLE_QUANT_BYTES + (counts.total - quantized) * 2)
    return counts.total * (4 if training.precision == "fp32" else 2)


def transient_bytes(model: ResolvedModel, training: TrainingSpec, dtype_bytes: int) -> int:
    """Largest short-lived tensor set of a prefill: one layer's MLP or attention, plus last-token logits."""
    a = model.architecture
    b, s = training.micro_batch_size, training.seq_len
    mlp = b * s * a.intermediate_size * (3 if a.mlp == "gated" else 2) * dtype_bytes
    if training.attention == "eager":
        # eager attention materializes scores and an fp32 softmax (transformers eager_attention_forward).
        attn = b * a.num_attention_heads * s * s * (dtype_bytes + 4)
    else:
        attn = 4 * b * s * a.q_width * dtype_bytes
    hidden = 3 * b * s * a.hidden_size * dtype_bytes
    # generate() keeps logits of the last position only (logits_to_keep=1), upcast to fp32 for sampling.
    logits = 2 * b * a.vocab_size * 4
    return max(mlp, attn) + hidden + logits


def inference_layouts(model: ResolvedModel, counts: ParameterCounts, info: ModelInfo, hw: HardwareSpec,
                      training: TrainingSpec, strategy: StrategySpec, ov: Overhead) -> Estimate:
    """Estimate for ``--task infer``: both layouts, with ``per_gpu`` taken from the fastest one that fits."""
    a = model.architecture
    dtype_bytes = 4 if training.precision == "fp32" else 2
    weights = weight_bytes_for_inference(model, counts, training)
    kv = kv_cache_bytes(a.num_layers, a.num_key_value_heads, a.head_dim, training.seq_len,
                        training.micro_batch_size, dtype_bytes)
    transient = transient_bytes(model, training, dtype_bytes)
    frag = ov.allocator_fragmentation_fraction

    def layout(name: str, w: int, k: int) -> InferenceLayout:
        allocated = w + k + transient
        total = allocated + ov.cuda_context_bytes + int(allocated * frag)
        return InferenceLayout(layout=name, weights=w, kv_cache=k, transient=transient,
                               overhead=total - allocated, total=total, fits=total <= hw.vram_bytes)

    layouts = [layout("replica-per-gpu", weights, kv)]
    if hw.gpus_per_node > 1:
        per_gpu_layers = math.ceil(a.num_layers / hw.gpus_per_node)
        layer_w = weights * counts.per_layer / counts.total
        ends = max(counts.embedding, counts.lm_head + counts.final) * weights / counts.total
        layouts.append(layout("device-map-auto", int(per_gpu_layers * layer_w + ends),
                              int(kv * per_gpu_layers / a.num_layers)))
    chosen = next((x for x in layouts if x.fits), min(layouts, key=lambda x: x.total))
    per_gpu = PerGPU(parameters=chosen.weights, gradients=0, optimizer_states=0, activations=chosen.kv_cache,
                     temporaries=chosen.transient, buffers=0, overhead=chosen.overhead, total=chosen.total,
                     breakdown={"weights": chosen.weights, "KV cache": chosen.kv_cache,
                                "prefill transient": chosen.transient, "overhead": chosen.overhead})
    procs = hw.gpus_per_node if chosen.layout == "replica-per-gpu" else 1
    cpu = {"inference processes": ov.cpu_per_process_bytes * procs,
           "model loading": weights * procs}
    cpu_total = sum(cpu.values())
    cpu_fits = hw.cpu_ram_bytes is None or cpu_total <= hw.cpu_ram_bytes
    s_info = strategy_info(training, strategy).model_copy(update={"name": chosen.layout})
    notes = [model.note] if model.note else []
    notes.append("KV cache = layers x 2 x kv_heads x head_dim x seq_len x batch x bytes")
    return Estimate(task="infer", model=info, hardware=hardware_info(hw), strategy=s_info, per_gpu=per_gpu,
                    per_node_cpu=PerNodeCPU(total=cpu_total, available_bytes=hw.cpu_ram_bytes, fits=cpu_fits,
                                            breakdown=cpu),
                    fits=chosen.fits and cpu_fits, headroom_bytes=hw.vram_bytes - chosen.total,
                    inference=layouts, notes=notes)
