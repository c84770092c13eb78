"""The normalized description of a decoder-only transformer that every estimate reads.

An :class:`Architecture` is built from a Hugging Face ``config.json`` (see :mod:`advisor.hf_config`),
from the shipped model catalog, or synthesized from a bare size such as ``7B``. It holds only the
shape facts that decide memory: widths, counts, which modules exist and which carry biases.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_serializer

NormKind = Literal["rmsnorm", "layernorm"]
MlpKind = Literal["gated", "plain"]
PositionKind = Literal["rope", "learned", "alibi"]


class Architecture(BaseModel):
    """Shape of a causal LM; all counts are element counts, never bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = Field(description="HF model_type: llama, mistral, mixtral, qwen2, gemma2, phi3, gpt2, opt, "
                                    "falcon, bloom, gpt_neox, ...")
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt
    head_dim: PositiveInt
    intermediate_size: PositiveInt = Field(description="MLP inner width (per expert for MoE)")
    vocab_size: PositiveInt
    max_position_embeddings: PositiveInt = 2048
    tie_word_embeddings: bool = False

    norm: NormKind = "rmsnorm"
    norm_bias: bool = False
    norms_per_layer: int = Field(2, ge=0, le=8)
    norm_affine: bool = True              # False: norms hold no parameters (OPT layer_norm_elementwise_affine)
    qk_norm: bool = False                 # per-head RMSNorm of width head_dim on q and k (Qwen3 q_norm/k_norm)
    qk_norm_full: bool = False            # RMSNorm over the whole q and k projections (OLMo-2 q_norm/k_norm)
    embedding_norm: bool = False          # BLOOM's word_embeddings_layernorm
    final_norm: bool = True

    mlp: MlpKind = "gated"
    hidden_act: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    fused_qkv: bool = False               # one projection for q, k, v (GPT-2, Phi-3, BLOOM, Falcon, NeoX)
    fused_gate_up: bool = False           # Phi-3's gate_up_proj

    position: PositionKind = "rope"
    learned_position_rows: int = Field(0, ge=0, description="rows of a learned position table (OPT adds 2)")
    rotary_pct: float = Field(1.0, gt=0, le=1)
    parallel_residual: bool = False       # attention and MLP read the same input (GPT-NeoX, Falcon, GPT-J)
    word_embed_proj_dim: int | None = None  # OPT-350m's project_in/project_out

    num_experts: int = Field(0, ge=0, description="routed experts per MoE layer; 0 = dense")
    experts_per_token: int = Field(0, ge=0)
    moe_norm_topk: bool = True            # top-k router weights renormalized to sum 1 (Qwen3-MoE norm_topk_prob)
    router_bias: bool = False             # the MoE router carries a bias (GPT-OSS)
    # multi-head latent attention (DeepSeek-V2/V3 MLA): kv_lora_rank > 0; head_dim is the q/k head width
    # (qk_nope_head_dim + qk_rope_head_dim); q_lora_rank 0: an uncompressed q_proj
    kv_lora_rank: int = Field(0, ge=0)
    q_lora_rank: int = Field(0, ge=0)
    qk_rope_head_dim: int = Field(0, ge=0)
    v_head_dim: int = Field(0, ge=0)
    shared_expert_size: int = Field(0, ge=0, description="inner width of the shared experts' MLP (DeepSeek)")
    dense_layers: int = Field(0, ge=0, description="leading dense decoder layers of an MoE model (DeepSeek "
                                                   "first_k_dense_replace); Llama-4: how many layers are dense, "
                                                   "placed by the '/dense' kinds of layer_pattern")
    dense_intermediate_size: int = Field(0, ge=0, description="MLP width of those dense layers")
    attention_sinks: bool = False         # one learned sink logit per head and layer (GPT-OSS ``sinks``)
    # DeepSeek-V3 (issue 14, helper A2): the router's expert groups (n_group) and groups kept (topk_group), and
    # rope applied on interleaved pairs (rope_interleave)
    moe_groups: int = Field(1, ge=1)
    moe_topk_groups: int = Field(1, ge=1)
    rope_interleave: bool = False
    layer_pattern: tuple[str, ...] = Field((), description="kinds of successive decoder layers, repeating "
                                           "(layer i is layer_pattern[i % len]); empty: all layers alike. Gemma-3: "
                                           "5 x sliding_attention, 1 x full_attention")

    # issue 14 (A1): Llama-4 text (transformers/models/llama4/modeling_llama4.py)
    attention_chunk_size: int | None = Field(None, description="chunked attention (Llama-4 attention_chunk_size): "
                                             "the layers of kind chunked_attention attend within chunks of this size")
    qk_l2_norm: bool = False              # parameter-free L2 norm of q and k on the RoPE layers (Llama-4 use_qk_norm)
    attn_temperature_tuning: bool = False  # q scaled per position on the NoPE layers (Llama-4)
    # issue 17 (C): Phi-1/1.5/2's lm_head is nn.Linear(hidden, vocab, bias=True) (modeling_phi.py)
    lm_head_bias: bool = False

    attention_dropout: float = Field(0.0, ge=0, lt=1)
    hidden_dropout: float = Field(0.0, ge=0, lt=1)
    embedding_dropout: float = Field(0.0, ge=0, lt=1)
    sliding_window: int | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None

    traced: bool = Field(False, description="no arithmetic family: parameters and activations come from a "
                                            "trace of the real transformers model (advisor/trace)")
    source_config: str | None = Field(None, exclude=True,
                                      description="the HF config (canonical JSON) the shape was read from; traced "
                                                  "families are built from it (not dumped)")

    @model_serializer(mode="wrap")
    def _omit_unused_family_fields(self, handler):
        """Fields added for the 2025 families are dumped only where they differ from their default, so the
        dump of every older architecture (and the files that hold it) stays as it was."""
        data = handler(self)
        for name in _FAMILY_FIELDS:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def layer_kind(self, i: int) -> str:
        """The kind of decoder layer ``i`` ("" when all layers are alike; an MoE model with leading dense layers,
        DeepSeek's first_k_dense_replace: "dense" then "moe")."""
        if self.layer_pattern:
            return self.layer_pattern[i % len(self.layer_pattern)]
        if self.is_moe and 0 < self.dense_layers < self.num_layers:
            return "dense" if i < self.dense_layers else "moe"
        return ""

    @property
    def hybrid(self) -> bool:
        """Decoder layers come in several kinds (a ``layer_pattern``, or leading dense layers of an MoE model)."""
        return bool(self.layer_pattern) or (self.is_moe and 0 < self.dense_layers < self.num_layers)

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The kind of every decoder layer, in order (all "" when alike)."""
        return tuple(self.layer_kind(i) for i in range(self.num_layers))

    @property
    def moe_layers(self) -> int:
        """Decoder layers holding routed experts (0 when dense)."""
        return max(self.num_layers - self.dense_layers, 0) if self.is_moe else 0

    @property
    def q_width(self) -> int:
        """Width of the query projection output: heads × head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of one of the key/value projection outputs: kv_heads × head_dim."""
        return self.num_key_value_heads * self.head_dim


# fields that only some 2025 families use (dumped only when set: Architecture._omit_unused_family_fields)
_FAMILY_FIELDS = ("moe_norm_topk", "layer_pattern", "router_bias", "attention_sinks", "kv_lora_rank", "q_lora_rank",
                  "qk_rope_head_dim", "v_head_dim", "shared_expert_size", "dense_layers", "dense_intermediate_size",
                  "moe_groups", "moe_topk_groups", "rope_interleave",
                  "attention_chunk_size", "qk_l2_norm", "attn_temperature_tuning",
                  "lm_head_bias")
