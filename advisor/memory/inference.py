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
from .overhead import Overhead, OutsideAllocator, outside_allocator


def kv_cache_bytes(counts_layers: int, kv_heads: int, head_dim: int, seq_len: int, batch: int,
                   dtype_bytes: int) -> int:
    """KV cache: layers × 2 (K and V) × kv_heads × head_dim × seq × batch × bytes (HF DynamicCache)."""
    return counts_layers * 2 * kv_heads * head_dim * seq_len * batch * dtype_bytes


# -- multi-head latent attention (DeepSeek-V3/R1; issue 14, helper A2) ---------------------------------------
def mla_kv_cache_bytes(arch, seq_len: int, batch: int, dtype_bytes: int) -> int:
    """MLA cache of transformers' DynamicCache: per layer and token the compressed latent (kv_a_layernorm output,
    ``kv_lora_rank``) and the roped shared key (``qk_rope_head_dim``): DeepseekV3Attention.forward calls
    ``cache.update(kv_nope, k_rot)`` before ``expand_kv`` (modeling_deepseek_v3.py), the same 576 elements a
    token that vLLM and SGLang keep for DeepSeek-V3."""
    return arch.num_layers * (arch.kv_lora_rank + arch.qk_rope_head_dim) * seq_len * batch * dtype_bytes


def mla_attention_transient(arch, batch: int, seq: int, dtype_bytes: int) -> int:
    """One MLA layer's attention tensors alive at the SDPA call (bytes): q_b_proj's output and the query,
    kv_b_proj's output (k_nope and v per head, re-expanded from the latent at every step: transformers does not
    absorb kv_b_proj into the query as vLLM/SGLang do) and the key (heads × (qk_nope + qk_rope)), the output
    (heads × v_head_dim). A decoding step over ``seq`` cached tokens holds less (no per-token query)."""
    H, qk, v = arch.num_attention_heads, arch.head_dim, arch.v_head_dim
    nope = qk - arch.qk_rope_head_dim
    return batch * seq * H * (3 * qk + nope + 2 * v) * dtype_bytes


def moe_experts_transient(arch, batch: int, seq: int, dtype_bytes: int) -> int:
    """transformers v5 grouped_mm experts forward (integrations/moe.py) over S = tokens × top-k rows: the
    gathered input with the gate/up output, activation and product (h + 4 i), or later the input, the down
    output, the weighted and the re-ordered rows (4 h), per row; plus a shared-experts MLP (3 × its width)."""
    S = batch * seq * max(arch.experts_per_token, 1)
    if arch.family == "llama4_text":
        # issue 17 (Z): Llama4TextMoe runs every expert on every token (modeling_llama4.py: routed_in =
        # hidden_states.repeat(num_experts, 1) scaled by the router's scores; Llama4TextExperts: bmm over
        # [E, N, h]): E x N rows, not top-k
        S = batch * seq * max(arch.num_experts, 1)
    h, i = arch.hidden_size, arch.intermediate_size
    return (S * max(h + 4 * i, 4 * h) + batch * seq * 3 * arch.shared_expert_size) * dtype_bytes
# -- end MLA block


def sliding_layers(arch) -> int:
    """Decoder layers whose attention is a sliding window (transformers' default ``layer_types``).

    Gemma-2 and GPT-OSS alternate sliding and full layers, sliding first (``"sliding_attention" if (i + 1) % 2``,
    configuration_gemma2.py / configuration_gpt_oss.py); Gemma-3 has five sliding layers per full one
    (``sliding_window_pattern`` 6, configuration_gemma3.py); Mistral v0.1 and Mixtral slide on every layer when
    ``sliding_window`` is set. Qwen2's ``max_window_layers`` split is not known here: counted as full (safe)."""
    if not arch.sliding_window:
        return 0
    n = arch.num_layers
    family = arch.family
    if family in ("gemma2", "gpt_oss"):
        return (n + 1) // 2
    if family in ("gemma3", "gemma3_text"):
        return n - n // 6
    if family in ("mistral", "mixtral"):
        return n
    return 0


def chunked_layers(arch) -> int:
    """Decoder layers with chunked attention (Llama-4's ``chunked_attention`` layer type, ``attention_chunk_size``):
    transformers 5 caches them like sliding-window layers (cache_utils.py ``DynamicCache``: a
    ``DynamicSlidingWindowLayer`` of ``sliding_window = attention_chunk_size`` for a ``chunked_attention`` layer;
    checked on a real Llama4 text model in tests/memory/test_inference_chunked.py)."""
    if not getattr(arch, "attention_chunk_size", None):
        return 0
    return sum(1 for kind in arch.layer_kinds if kind.startswith("chunked_attention"))


def windowed_peak_tokens(window: int, seq_len: int, prompt_len: int | None) -> int:
    """Tokens per sequence a ``DynamicSlidingWindowLayer`` of ``window`` holds at its peak: max(prompt, window),
    at most the sequence (see :func:`kv_cache_peak_tokens`)."""
    prompt = min(prompt_len or seq_len, seq_len)
    return min(seq_len, max(prompt, window))


def kv_cache_peak_tokens(arch, seq_len: int, prompt_len: int | None) -> tuple[int, int]:
    """Tokens per sequence the cache holds at its peak: (full layers, sliding layers).

    transformers' ``DynamicSlidingWindowLayer.update`` keeps ``full[:, :, -window + 1:]`` - a *view* of the
    concatenated states - so after the prefill a sliding layer still holds the whole prompt's storage until the
    first decoding step replaces it with a ``window``-token tensor (cache_utils.py). Its peak is therefore
    max(prompt, window) tokens, at most the sequence; a full layer holds the whole sequence."""
    prompt = min(prompt_len or seq_len, seq_len)
    window = arch.sliding_window or seq_len
    return seq_len, min(seq_len, max(prompt, window))


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
    if a.kv_lora_rank and training.attention != "eager":              # MLA (A2): decompressed K/V per head
        attn = mla_attention_transient(a, b, s, dtype_bytes)
    if a.is_moe:                                                      # routed experts, dense layers (A2)
        dense = b * s * (a.dense_intermediate_size or a.intermediate_size) * 3 * dtype_bytes if a.dense_layers else 0
        mlp = max(moe_experts_transient(a, b, s, dtype_bytes), dense)
    hidden = 3 * b * s * a.hidden_size * dtype_bytes
    # The prefill's 4-D attention mask: eager attention adds a (b, 1, s, s) mask in the compute dtype; SDPA skips
    # it for a plain causal mask (is_causal) but needs a materialized boolean one for a sliding window
    # (transformers masking_utils: sdpa_mask / sliding_window_causal_mask).
    if training.attention == "eager":
        hidden += b * s * s * dtype_bytes
    elif sliding_layers(a) or (chunked_layers(a) and s > a.attention_chunk_size):
        hidden += b * s * s         # a chunked mask too, once the sequence exceeds a chunk (create_chunked_causal_mask)
    # generate() keeps logits of the last position only (logits_to_keep=1), upcast to fp32 for sampling.
    logits = 2 * b * a.vocab_size * 4
    return max(mlp, attn) + hidden + logits


def inference_layouts(model: ResolvedModel, counts: ParameterCounts, info: ModelInfo, hw: HardwareSpec,
                      training: TrainingSpec, strategy: StrategySpec, ov: Overhead) -> Estimate:
    """Estimate for ``--task infer``: both layouts, with ``per_gpu`` taken from the fastest one that fits."""
    a = model.architecture
    dtype_bytes = 4 if training.precision == "fp32" else 2
    weights = weight_bytes_for_inference(model, counts, training)
    full_tokens, sliding_tokens = kv_cache_peak_tokens(a, training.seq_len, training.prompt_len)
    n_sliding = sliding_layers(a)
    n_chunked = chunked_layers(a)       # Llama-4: cached like sliding layers with the chunk as window
    chunk_tokens = windowed_peak_tokens(a.attention_chunk_size, training.seq_len, training.prompt_len) \
        if n_chunked else 0
    kv = (kv_cache_bytes(a.num_layers - n_sliding - n_chunked, a.num_key_value_heads, a.head_dim, full_tokens,
                         training.micro_batch_size, dtype_bytes)
          + kv_cache_bytes(n_sliding, a.num_key_value_heads, a.head_dim, sliding_tokens,
                           training.micro_batch_size, dtype_bytes)
          + kv_cache_bytes(n_chunked, a.num_key_value_heads, a.head_dim, chunk_tokens,
                           training.micro_batch_size, dtype_bytes))
    if a.kv_lora_rank:                                                # MLA: the compressed latent (A2)
        kv = mla_kv_cache_bytes(a, full_tokens, training.micro_batch_size, dtype_bytes)
    transient = transient_bytes(model, training, dtype_bytes)
    frag = ov.allocator_fragmentation_fraction
    outside = outside_allocator(hw)   # issue 17 (helper C): this card's CUDA context (overhead.py); no NCCL here
    context = outside.context_bytes

    def layout(name: str, w: int, k: int) -> InferenceLayout:
        allocated = w + k + transient
        total = allocated + context + int(allocated * frag)
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
    notes.append(OutsideAllocator(context, outside.context_source, 0, "").note())   # issue 17 (helper C)
    if a.kv_lora_rank:   # MLA (A2)
        notes.append(f"KV cache (multi-head latent attention) = layers x (kv_lora_rank {a.kv_lora_rank} + "
                     f"qk_rope_head_dim {a.qk_rope_head_dim}) x seq_len x batch x bytes: transformers caches the "
                     "compressed latent, as vLLM/SGLang do; unlike them it re-expands K and V per head "
                     f"({a.num_attention_heads} heads) in every layer at every step, counted in the transient")
    else:
        notes.append("KV cache = layers x 2 x kv_heads x head_dim x seq_len x batch x bytes")
    if n_chunked:
        prompt = "the prompt" if training.prompt_len else "the prompt (assumed the whole sequence: set prompt_len)"
        notes.append(f"{n_chunked} of {a.num_layers} layers use {a.attention_chunk_size}-token chunked attention: "
                     f"transformers caches them as sliding windows of the chunk size, max({prompt}, chunk) tokens "
                     "at their peak")
    if n_sliding:
        prompt = "the prompt" if training.prompt_len else "the prompt (assumed the whole sequence: set prompt_len)"
        notes.append(f"{n_sliding} of {a.num_layers} layers use a {a.sliding_window}-token sliding window: their "
                     f"cache holds max({prompt}, window) tokens at its peak (the prefill's states stay alive until "
                     "the first decoding step)")
    return Estimate(task="infer", model=info, hardware=hardware_info(hw), strategy=s_info, per_gpu=per_gpu,
                    per_node_cpu=PerNodeCPU(total=cpu_total, available_bytes=hw.cpu_ram_bytes, fits=cpu_fits,
                                            breakdown=cpu),
                    fits=chosen.fits and cpu_fits, headroom_bytes=hw.vram_bytes - chosen.total,
                    inference=layouts, notes=notes)
