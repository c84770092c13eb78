"""A tiny Hugging Face config shaped like the target model, for ``dsadvise dry-run``.

Same ``model_type`` and the same structural switches (tied embeddings, GQA/MQA, biases, parallel residual,
experts, ALiBi, OPT's projection), but 2 layers, hidden 64, vocabulary 256: it builds with
``AutoModelForCausalLM.from_config`` in well under a second and trains on a CPU. Pure data: no transformers here.
"""

from __future__ import annotations

from ..architecture import Architecture

LAYERS = 2
HIDDEN = 64
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
INNER = 128
VOCAB = 256
POSITIONS = 256
SEQ_LEN = 32          # tokens per sample in the proxy run


def _kv_heads(arch: Architecture) -> int:
    if arch.num_key_value_heads == arch.num_attention_heads:
        return HEADS
    return 1 if arch.num_key_value_heads == 1 else 2


def proxy_hf_config(arch: Architecture) -> dict:
    """``AutoConfig.for_model(**result)`` keys for a 2-layer model of ``arch``'s family and structure."""
    fam = arch.family
    tokens = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if fam == "gpt2":
        return {"model_type": "gpt2", "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": INNER,
                "n_positions": POSITIONS, "vocab_size": VOCAB, "tie_word_embeddings": arch.tie_word_embeddings,
                "bos_token_id": 1, "eos_token_id": 2}
    if fam == "opt":
        proj = HIDDEN // 2 if arch.word_embed_proj_dim and arch.word_embed_proj_dim != arch.hidden_size else HIDDEN
        return {"model_type": "opt", "hidden_size": HIDDEN, "ffn_dim": INNER, "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS, "word_embed_proj_dim": proj, "max_position_embeddings": POSITIONS,
                "vocab_size": VOCAB, "do_layer_norm_before": True, "enable_bias": arch.qkv_bias,
                "layer_norm_elementwise_affine": arch.norm_affine,
                "tie_word_embeddings": arch.tie_word_embeddings, **tokens}
    if fam == "falcon":
        kv = _kv_heads(arch)
        return {"model_type": "falcon", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS, "num_kv_heads": kv, "multi_query": kv == 1,
                "new_decoder_architecture": kv not in (1, HEADS), "parallel_attn": arch.parallel_residual,
                "bias": arch.qkv_bias, "alibi": arch.position == "alibi", "vocab_size": VOCAB,
                "max_position_embeddings": POSITIONS, "tie_word_embeddings": arch.tie_word_embeddings, **tokens}
    if fam == "bloom":
        return {"model_type": "bloom", "hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": HEADS,
                "vocab_size": VOCAB, "tie_word_embeddings": arch.tie_word_embeddings, **tokens}
    if fam == "gpt_neox":
        return {"model_type": "gpt_neox", "hidden_size": HIDDEN, "intermediate_size": INNER,
                "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "rotary_pct": arch.rotary_pct,
                "use_parallel_residual": arch.parallel_residual, "max_position_embeddings": POSITIONS,
                "vocab_size": VOCAB, "tie_word_embeddings": arch.tie_word_embeddings, **tokens}
    known = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3",
             "qwen3_moe", "gemma3_text", "olmo2", "smollm3", "glm4"}
    cfg = {"model_type": fam if fam in known else "llama", "hidden_size": HIDDEN, "intermediate_size": INNER,
           "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": _kv_heads(arch),
           "vocab_size": VOCAB, "max_position_embeddings": POSITIONS,
           "tie_word_embeddings": arch.tie_word_embeddings, **tokens}
    if fam in ("qwen3", "gemma", "gemma2", "qwen3_moe", "gemma3_text", "glm4"):
        cfg["head_dim"] = HEAD_DIM
    if fam == "glm4":
        cfg["attention_bias"] = arch.qkv_bias
    if fam == "gemma3_text":
        cfg.update(sliding_window=16, query_pre_attn_scalar=HEAD_DIM)
    if fam == "qwen3_moe":
        cfg.update(num_experts=min(max(arch.num_experts, 2), 4), moe_intermediate_size=INNER // 4,
                   num_experts_per_tok=min(max(arch.experts_per_token, 1), 2))
    if fam == "llama":
        cfg.update(attention_bias=arch.qkv_bias, mlp_bias=arch.mlp_bias)
    if fam in ("mistral", "gemma2") and arch.sliding_window:
        cfg["sliding_window"] = 16
    if fam == "mixtral":
        cfg.update(num_local_experts=min(max(arch.num_experts, 2), 4),
                   num_experts_per_tok=min(max(arch.experts_per_token, 1), 2))
    return cfg
