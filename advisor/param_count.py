"""Exact parameter counts of an :class:`Architecture`, by plain arithmetic (no torch).

Every number here is an element count (not bytes). The counts match ``sum(p.numel() for p in
model.parameters())`` of the transformers model built from the same config; the tests check this for
every catalog model.

Normalized linear-layer names (:func:`linear_shapes`) and what they are in each family:

===============  ==========================================================================
``q_proj`` ...   ``q_proj k_proj v_proj o_proj`` (Llama, Mistral, Mixtral, Qwen, Gemma; OPT's ``out_proj``)
``qkv_proj``     one fused q/k/v projection: Phi-3 ``qkv_proj``, GPT-2 ``c_attn``,
                 Falcon/BLOOM/GPT-NeoX ``query_key_value``
``o_proj``       also GPT-2 ``attn.c_proj``, Falcon/BLOOM/GPT-NeoX ``dense``, OPT ``out_proj``
``gate_proj``    gated MLP (``up_proj``, ``down_proj`` alike); Mixtral's experts ``w1``/``w3``/``w2``
``gate_up_proj`` Phi-3's fused gate and up projection
``fc1``/``fc2``  plain MLP: GPT-2 ``c_fc``/``mlp.c_proj``, OPT ``fc1``/``fc2``,
                 Falcon/BLOOM/GPT-NeoX ``dense_h_to_4h``/``dense_4h_to_h``
``router``       the MoE gate (Mixtral ``gate``)
===============  ==========================================================================
"""

from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from advisor.architecture import Architecture
from advisor.errors import InputError, did_you_mean

ALL_LINEAR = "all-linear"
# issue 17 (L): the output layer as a LoRA target. Every transformers causal LM dsadvise models names it
# ``lm_head`` (get_output_embeddings(), an nn.Linear; transformers 5 renamed GPT-NeoX's ``embed_out``); PEFT's
# ``all-linear`` leaves it out (peft/tuners/tuners_utils.py ``_maybe_include_all_linear_layers``), so it is only
# adapted when named.
LM_HEAD = "lm_head"


def native_linear_names(model_type: str) -> dict[str, tuple[str, ...]]:
    """Module names as ``model_type`` spells them → normalized names (its family module's
    ``native_linear_names``, advisor/families); empty for families without a module."""
    from advisor.families import family, has_family

    return dict(family(model_type).native_linear_names) if has_family(model_type) else {}


class ParameterCounts(BaseModel):
    """Parameter element counts of a model, split the way memory estimates need them."""

    model_config = ConfigDict(frozen=True)

    total: int              # all parameters, tied weights once
    embedding: int          # token embeddings + learned position table + embedding norm + project_in
    lm_head: int            # output projection; 0 when tied to the embedding
    per_layer: int          # one decoder layer, every expert included
    final: int              # final norm + project_out
    active_per_token: int   # parameters a token passes through (top-k experts only); = total when dense
    largest_module: int     # biggest single parameter-holding leaf module (what ZeRO-3 gathers at once)
    layer_gathered: int     # one whole decoder layer (what ZeRO-3/FSDP gather for its compute)


def linear_shapes(arch: Architecture, dense: bool = False) -> dict[str, tuple[int, int, int]]:
    """Linear layers of one decoder layer: normalized name → (in_features, out_features, copies).

    ``copies`` is the number of experts for MoE expert projections, else 1. See the module docstring
    for the mapping from each family's own module names. ``dense``: a leading dense layer of an MoE model
    (DeepSeek's first_k_dense_replace); by default an MoE layer.
    """
    h, q, kv, inner = arch.hidden_size, arch.q_width, arch.kv_width, arch.intermediate_size
    experts = max(arch.num_experts, 1)
    shapes: dict[str, tuple[int, int, int]] = {}
    if arch.kv_lora_rank:   # DeepseekV3Attention (multi-head latent attention)
        H, rope, nope = arch.num_attention_heads, arch.qk_rope_head_dim, arch.head_dim - arch.qk_rope_head_dim
        if arch.q_lora_rank:
            shapes.update(q_a_proj=(h, arch.q_lora_rank, 1), q_b_proj=(arch.q_lora_rank, q, 1))
        else:
            shapes["q_proj"] = (h, q, 1)
        shapes.update(kv_a_proj_with_mqa=(h, arch.kv_lora_rank + rope, 1),
                      kv_b_proj=(arch.kv_lora_rank, H * (nope + arch.v_head_dim), 1),
                      o_proj=(H * arch.v_head_dim, h, 1))
    else:
        if arch.fused_qkv:
            shapes["qkv_proj"] = (h, q + 2 * kv, 1)
        else:
            shapes.update(q_proj=(h, q, 1), k_proj=(h, kv, 1), v_proj=(h, kv, 1))
        shapes["o_proj"] = (q, h, 1)
    if dense and arch.is_moe:
        d = arch.dense_intermediate_size or inner
        shapes.update(gate_proj=(h, d, 1), up_proj=(h, d, 1), down_proj=(d, h, 1))
        return shapes
    if arch.mlp == "gated":
        if arch.fused_gate_up:
            shapes["gate_up_proj"] = (h, 2 * inner, experts)
        else:
            shapes.update(gate_proj=(h, inner, experts), up_proj=(h, inner, experts))
        shapes["down_proj"] = (inner, h, experts)
    else:
        shapes.update(fc1=(h, inner, experts), fc2=(inner, h, experts))
    if arch.is_moe:
        shapes["router"] = (h, arch.num_experts, 1)
    if arch.shared_expert_size:
        s = arch.shared_expert_size
        shapes.update(shared_gate_proj=(h, s, 1), shared_up_proj=(h, s, 1), shared_down_proj=(s, h, 1))
    return shapes


def _has_bias(arch: Architecture, name: str) -> bool:
    if arch.kv_lora_rank and name in ("q_proj", "q_b_proj", "kv_b_proj"):
        return False                      # DeepseekV3Attention: only q_a, kv_a and o carry attention_bias
    if name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "q_a_proj", "kv_a_proj_with_mqa"):
        return arch.qkv_bias
    if name == "o_proj":
        return arch.o_bias
    if name == "router":
        return arch.router_bias
    return arch.mlp_bias


def _module_size(arch: Architecture, name: str, shape: tuple[int, int, int]) -> int:
    """Elements of ONE copy of a linear layer: weight plus bias."""
    fan_in, fan_out, _ = shape
    return fan_in * fan_out + (fan_out if _has_bias(arch, name) else 0)


def _norm_size(arch: Architecture) -> int:
    if not arch.norm_affine:
        return 0
    return arch.hidden_size * (2 if arch.norm_bias else 1)


@lru_cache(maxsize=512)
def count_parameters(arch: Architecture) -> ParameterCounts:
    """Exact parameter element counts of ``arch``: total, per part, active per token, largest module."""
    if arch.traced:   # no arithmetic family: counted on the real model's meta-device build
        from advisor.trace.estimate import traced_counts

        return ParameterCounts(**traced_counts(arch))
    h, vocab = arch.hidden_size, arch.vocab_size
    emb_dim = arch.word_embed_proj_dim or h
    projection = emb_dim * h if arch.word_embed_proj_dim else 0   # OPT project_in / project_out, no bias
    norm = _norm_size(arch)

    shapes = linear_shapes(arch)
    linear = {name: _module_size(arch, name, shape) for name, shape in shapes.items()}
    per_layer = sum(linear[name] * shape[2] for name, shape in shapes.items())
    in_layer_norms = arch.norms_per_layer * norm
    if arch.qk_norm:
        in_layer_norms += 2 * arch.head_dim   # Qwen3 q_norm and k_norm: RMSNorm(head_dim) each
    if arch.qk_norm_full:
        in_layer_norms += arch.q_width + arch.kv_width   # OLMo-2 q_norm(heads*head_dim), k_norm(kv_heads*head_dim)
    if arch.attention_sinks:
        in_layer_norms += arch.num_attention_heads       # GPT-OSS attention sinks: one logit per head
    if arch.kv_lora_rank:                                # MLA q_a_layernorm and kv_a_layernorm
        in_layer_norms += arch.q_lora_rank + arch.kv_lora_rank
    per_layer += in_layer_norms
    dense_layers = arch.num_layers - arch.moe_layers if arch.is_moe else 0
    dense_linear = {}
    if dense_layers:   # DeepSeek's leading dense layers: same attention, a plain gated MLP
        dense_shapes = linear_shapes(arch, dense=True)
        dense_linear = {name: _module_size(arch, name, shape) for name, shape in dense_shapes.items()}
        dense_per_layer = sum(dense_linear.values()) + in_layer_norms

    token_table = vocab * emb_dim
    position_table = arch.learned_position_rows * h
    embedding = token_table + position_table + (norm if arch.embedding_norm else 0) + projection
    lm_head = 0 if arch.tie_word_embeddings else vocab * emb_dim
    if arch.lm_head_bias:   # Phi's lm_head carries a bias (its own parameter, even where the weight is tied)
        lm_head += vocab
    final = (norm if arch.final_norm else 0) + projection
    total = embedding + lm_head + arch.moe_layers * per_layer + final if arch.is_moe \
        else embedding + lm_head + arch.num_layers * per_layer + final
    if dense_layers:
        total += dense_layers * dense_per_layer
        # hybrid depth: the largest layer stands for one layer (as the trace does)
        per_layer = max(dense_per_layer, per_layer) if arch.moe_layers else dense_per_layer

    active = total
    if arch.is_moe:
        one_expert = sum(linear[name] for name, shape in shapes.items() if shape[2] > 1)
        idle = arch.num_experts - min(arch.experts_per_token, arch.num_experts)
        active = total - arch.moe_layers * idle * one_expert

    has_moe_layer = arch.moe_layers > 0 or not arch.is_moe
    modules = [token_table, position_table, lm_head, projection, norm, *dense_linear.values(),
               *(linear.values() if has_moe_layer else ())]
    if arch.is_moe and has_moe_layer:
        # transformers 5 holds all experts of a layer in one module (fused gate_up_proj / down_proj tensors
        # of shape [num_experts, ...]), so ZeRO-3 gathers every expert of the layer at once.
        modules.append(sum(linear[name] * shape[2] for name, shape in shapes.items() if shape[2] > 1))
    largest = max(modules)
    return ParameterCounts(total=total, embedding=embedding, lm_head=lm_head, per_layer=per_layer, final=final,
                           active_per_token=active, largest_module=largest, layer_gathered=per_layer)


def _outside_linears(arch: Architecture) -> dict[str, tuple[int, int]]:
    """Linear layers outside the decoder layers that PEFT's ``all-linear`` still takes (not the lm_head)."""
    if not arch.word_embed_proj_dim:
        return {}
    dim, h = arch.word_embed_proj_dim, arch.hidden_size
    return {"project_in": (dim, h), "project_out": (h, dim)}   # OPT-350m's embedding projections


def all_linear_excludes(arch: Architecture) -> tuple[str, ...]:
    """Normalized linears that ``all-linear`` leaves out for ``arch``'s family (its module's
    ``all_linear_excludes``: linears PEFT would wrap but whose adapter fails, e.g. Llama-4's router)."""
    from advisor.families import family, has_family

    return family(arch.family).all_linear_excludes if has_family(arch.family) else ()


def all_linear_note(arch: Architecture, target_modules: tuple[str, ...]) -> str | None:
    """The note an ``all-linear`` LoRA on ``arch`` needs when its family leaves linears out (else None)."""
    from advisor.families import family

    excluded = all_linear_excludes(arch)
    if ALL_LINEAR not in target_modules or not excluded:
        return None
    why = "; ".join(dict.fromkeys(family(arch.family).lora_refused.get(n, "") for n in excluded if n))
    names = ", ".join(f'"{n}"' for n in excluded)
    return (f"LoRA all-linear on {arch.family}: counted without {names.replace(chr(34), '')} ({why}); in PEFT write "
            f"LoraConfig(target_modules=\"all-linear\", exclude_modules=[{names}])")


def lora_target_names(arch: Architecture) -> tuple[str, ...]:
    """The LoRA target names ``arch`` accepts: normalized names, the family's own names, ``all-linear``,
    ``lm_head``."""
    return (*linear_shapes(arch), *native_linear_names(arch.family), *_outside_linears(arch), ALL_LINEAR, LM_HEAD)


def all_linear_names(arch: Architecture) -> list[str]:
    """Normalized names of the linears PEFT's ``all-linear`` adapts on ``arch`` (not MoE): every decoder linear
    but the family's exclusions, and OPT's project_in/project_out; never the lm_head."""
    return [n for n in linear_shapes(arch) if n not in all_linear_excludes(arch)] + list(_outside_linears(arch))


def lora_head_elements(arch: Architecture, rank: int) -> int:
    """LoRA elements of an adapted lm_head: lora_A (r x in) + lora_B (vocab x r), in = the head's input width
    (hidden, OPT-350m's word_embed_proj_dim). PEFT 0.21 adds nothing else with ``ensure_weight_tying`` left
    False, tied or not (checked on a real get_peft_model: tests/families/test_lora_head.py)."""
    return rank * ((arch.word_embed_proj_dim or arch.hidden_size) + arch.vocab_size)


def lora_targets_head(target_modules) -> bool:
    """Whether ``target_modules`` names the lm_head (issue 17)."""
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules or ())
    return LM_HEAD in targets


def lora_head_note(arch: Architecture, training) -> str | None:
    """What an estimate with LoRA on the lm_head must say (None without it): the tied-weights behaviour PEFT
    0.21 has by default (peft/tuners/tuners_utils.py: it warns that a tied layer is part of the adapter and adapts
    the lm_head module only unless ``ensure_weight_tying=True``, which also puts an adapter on the embedding)."""
    if training.method not in ("lora", "qlora") or not lora_targets_head(training.lora.target_modules):
        return None
    note = (f"LoRA on the lm_head: {lora_head_elements(arch, training.lora.rank):,} adapter elements and, each "
            f"micro-step, its vocabulary-sized fp32 LoRA output added to the logits (counted)")
    if arch.tie_word_embeddings:
        note += ("; the head is tied to the embedding: PEFT 0.21 adapts the lm_head module only (it warns; "
                 "LoraConfig(ensure_weight_tying=True) would also adapt the embedding, not counted)")
    return note


def lightning_quantized_head(training) -> bool:
    """QLoRA quantized by lightning (``--qlora-quantizer lightning``, litgpt ``--quantize bnb.nf4``): the lm_head is
    NF4 too (lightning BitsandbytesPrecision.module_init_context / _convert_layers swap every torch.nn.Linear for
    _Linear4bit; litgpt/finetune/lora.py passes no ignore_modules)."""
    return training.method == "qlora" and (getattr(training, "qlora_quantizer", "transformers") == "lightning"
                                           or getattr(training, "model_code", "transformers") == "litgpt")   # issue 17 (G)


def check_qlora_quantizer(arch: Architecture, training, world_size: int) -> None:
    """Refuse, in one line, a ``--qlora-quantizer lightning`` run litgpt/lightning would not run or dsadvise cannot
    replay (issue 17): only with ``--method qlora``; one GPU (litgpt finetune/lora.py at fd71063c: "Quantization is
    currently not supported for multi-GPU training"); a "-true" precision ("Quantization and mixed precision is
    not supported": pure-bf16 or fp32 here); an untied head (litgpt's GPT holds wte and lm_head apart, lightning
    quantizes the lm_head module: give the config with tie_word_embeddings false); a replayed family (the tracer
    runs transformers' models, not lightning's quantized ones)."""
    if getattr(training, "qlora_quantizer", "transformers") == "transformers" and not lightning_quantized_head(training):
        return   # issue 17 (G): --model-code litgpt --method qlora is lightning's quantization (finetune/lora.py)
    where = "lightning (litgpt's QLoRA)"
    if training.method != "qlora":
        raise InputError(f"{where} quantizes a QLoRA model: use it with --method qlora", field="--qlora-quantizer")
    if world_size > 1:
        raise InputError(f"{where}: litgpt refuses quantization on more than one GPU (finetune/lora.py: "
                         "\"Quantization is currently not supported for multi-GPU training\"): use one GPU",
                         field="--qlora-quantizer")
    if training.precision not in ("pure-bf16", "fp32"):
        raise InputError(f"{where}: litgpt refuses quantization with mixed precision (finetune/lora.py); its bf16-true "
                         "is --precision pure-bf16", field="--precision")
    from advisor.families import REPLAYED_FAMILIES

    litgpt = getattr(training, "model_code", "transformers") == "litgpt"   # issue 17 (G): litgpt's GPT is replayed
    if not litgpt and (arch.traced or arch.family not in REPLAYED_FAMILIES):
        raise InputError(f"{where}: {arch.family} is traced on the transformers model, which cannot stand for a "
                         "lightning-quantized one; not expressible yet", field="--qlora-quantizer")
    if arch.tie_word_embeddings:
        raise InputError(f"{where}: the lm_head of {arch.family} is tied to the embedding here, but litgpt keeps them "
                         "apart and quantizes the head: give a config.json with tie_word_embeddings false",
                         field="--qlora-quantizer")


def check_lora_head(training) -> None:
    """Refuse, in one line, a LoRA on the lm_head that a loss kernel would not run (issue 17): Liger's fused
    linear cross-entropy (and Cut Cross-Entropy) is called with ``self.lm_head.weight``
    (liger_kernel/transformers/model/*.py ``LigerForCausalLMLoss(hidden_states, lm_head_weight=...)``), which
    on PEFT's wrapper is the frozen base weight (peft/tuners/tuners_utils.py ``BaseTunerLayer.weight``): the
    head's adapter would never be applied nor trained."""
    if training.method in ("lora", "qlora") and training.loss == "fused-linear" \
            and lora_targets_head(training.lora.target_modules):
        raise InputError("--loss fused-linear with LoRA on the lm_head: Liger's fused linear cross-entropy (and Cut "
                         "Cross-Entropy) multiplies by lm_head.weight, the frozen base weight of PEFT's wrapper, so "
                         "the head's adapter would never run: use --loss plain or chunked, or drop lm_head from "
                         "--lora-targets", field="--lora-targets")


_MOE_MLP = ("gate_proj", "up_proj", "down_proj", "router", "shared_gate_proj", "shared_up_proj", "shared_down_proj")


def peft_moe_params(arch: Architecture) -> bool:
    """PEFT puts LoRA on this MoE family's 3-D expert weights and router (ParamWrapper), not on MLP nn.Linear
    modules (the replay's ``peft_moe_params``: Mixtral, Qwen3-MoE, DeepSeek-V3)."""
    from advisor.families import family, has_family

    if not arch.is_moe or not has_family(arch.family):
        return False
    replay = family(arch.family).replay
    return bool(getattr(replay, "peft_moe_params", False))


def _peft_moe_all_linear(arch: Architecture, rank: int, chosen: set[str]) -> int:
    """all-linear LoRA elements as PEFT 0.21 builds them on an MoE model (peft/tuners/lora/layer.py ParamWrapper:
    lora_A (E·r, in), lora_B (out, E·r) per 3-D expert weight; the fused gate_up_proj at rank 2r; the router's
    2-D weight r·(in + out); no adapter on the MLP's nn.Linear modules: DeepSeek's dense MLP and shared experts
    get none). Checked against the meta-device PEFT build (tests/families/test_moe_lora.py)."""
    shapes = linear_shapes(arch)
    h, i, E = arch.hidden_size, arch.intermediate_size, arch.num_experts
    attention = sum(rank * (shapes[n][0] + shapes[n][1]) * shapes[n][2] for n in chosen if n not in _MOE_MLP)
    moe = E * 2 * rank * (h + 2 * i) + E * rank * (i + h) + (rank * (h + E) if "router" in chosen else 0)
    return attention * arch.num_layers + moe * arch.moe_layers


# PEFT 0.21 converts a LoRA config written for transformers v4's per-expert modules (peft/utils/
# transformers_weight_conversion.py ``_convert_peft_config_moe`` with ``_MOE_TARGET_MODULE_MAPPING`` and
# ``_MOE_FUSED_TARGETS``) for the model types transformers' conversion_mapping ``_MODEL_TO_CONVERSION_PATTERN`` maps
# to "qwen2_moe" (DeepSeek-V3, Qwen3-MoE, OLMoE) or "mixtral" (PEFT adds Mixtral itself; MiniMax): a target ending
# in one of the names below leaves ``target_modules`` for the routed experts' ``gate_up_proj`` / ``down_proj``
# parameter (or the router's ``gate.weight``), so no nn.Linear of that name (DeepSeek-V3's dense MLP, the shared
# experts) is adapted; the two halves of gate_up_proj together become one adapter at rank 2r, one without the
# other is refused. Raw target name -> dsadvise's normalized name.
_QWEN2_MOE_NAMES = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj", "gate": "router"}
_MIXTRAL_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj", "gate": "router"}
_PEFT_MOE_CONVERTED = {"deepseek_v3": _QWEN2_MOE_NAMES, "qwen3_moe": _QWEN2_MOE_NAMES, "olmoe": _QWEN2_MOE_NAMES,
                       "mixtral": _MIXTRAL_NAMES, "minimax": _MIXTRAL_NAMES}
_PEFT_MOE_FUSED_ALONE = ("Cannot convert PEFT target(s) {present} without also targeting {missing} because they "
                         "are fused into gate_up_proj (PEFT 0.21 on transformers 5's fused experts)")


def _peft_moe_converted(arch: Architecture, rank: int, targets: tuple[str, ...], chosen: set[str]) -> int | None:
    """LoRA elements PEFT 0.21 builds for explicit ``targets`` (``chosen``: their normalized names) on a model type
    it converts (see ``_PEFT_MOE_CONVERTED``), or None when no target is converted: the attention targets on every
    layer, the routed experts' parameters (ParamWrapper: E·r·(in + out) per 3-D weight, gate_up_proj at rank 2r)
    and the router on the MoE layers, nothing on an nn.Linear of a converted name. An MLP name PEFT does not
    convert is counted per linear as before (PEFT adapts it or ignores it: never fewer elements)."""
    names = _PEFT_MOE_CONVERTED.get(arch.family)
    if not names or not arch.is_moe:
        return None
    converted = {names[t] for t in targets if t in names}
    if not converted:
        return None
    fused = {"gate_proj", "up_proj"} & converted
    if len(fused) == 1:
        raw = {v: k for k, v in names.items()}
        raise InputError(_PEFT_MOE_FUSED_ALONE.format(present=raw[next(iter(fused))],
                                                      missing=raw[({"gate_proj", "up_proj"} - fused).pop()]),
                         field="lora.target_modules")
    shapes = linear_shapes(arch)
    h, i, E = arch.hidden_size, arch.intermediate_size, arch.num_experts
    per_linear = sum(rank * (shapes[n][0] + shapes[n][1]) * shapes[n][2] for n in chosen - converted)
    moe = (E * 2 * rank * (h + 2 * i) if fused else 0) + (E * rank * (i + h) if "down_proj" in converted else 0) \
        + (rank * (h + E) if "router" in converted else 0)
    return per_linear * arch.num_layers + moe * arch.moe_layers


def lora_trainable_parameters(arch: Architecture, rank: int, target_modules: tuple[str, ...]) -> int:
    """Elements of the LoRA A and B matrices: rank × (in + out) per targeted linear, copies and layers.

    ``all-linear`` targets every linear layer of the decoder layers (the MoE router included) plus OPT's
    project_in/project_out, but not the lm_head, as PEFT does; ``lm_head`` (alone or next to other names)
    adds the output layer's adapter (:func:`lora_head_elements`). Experts count as separate linears, one
    adapter per expert (PEFT on per-expert ``nn.Linear`` modules).
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"LoRA rank must be a positive integer, got {rank!r}", field="lora.rank")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    from advisor.families import family, has_family

    refused = family(arch.family).lora_refused if has_family(arch.family) else {}
    excluded = set(all_linear_excludes(arch))
    for target in target_modules:
        if target in refused:
            raise InputError(f"LoRA target {target!r} on {arch.family}: {refused[target]}", field="lora.target_modules")
    if arch.traced:
        from advisor.trace.estimate import traced_lora_trainable

        return traced_lora_trainable(arch, rank, tuple(target_modules))
    shapes = linear_shapes(arch)
    native = native_linear_names(arch.family)
    outside = _outside_linears(arch)
    chosen: set[str] = set()
    chosen_outside: set[str] = set()
    head = 0
    for target in target_modules:
        if target == LM_HEAD:
            head = lora_head_elements(arch, rank)
        elif target == ALL_LINEAR:
            chosen.update(n for n in shapes if n not in excluded)
            chosen_outside.update(outside)
        elif target in shapes:
            chosen.add(target)
        elif target in outside:
            chosen_outside.add(target)
        elif target in native:
            chosen.update(native[target])
        else:
            valid = lora_target_names(arch)
            raise InputError(f"{target!r} is not a linear layer of {arch.family}"
                             f"{did_you_mean(str(target), valid)}; choose from {', '.join(valid)}",
                             field="lora.target_modules")
    if ALL_LINEAR in target_modules and len(set(target_modules)) > 1 and arch.is_moe:
        raise InputError(f"'all-linear' next to other LoRA targets on {arch.family} (an MoE model): a list of module "
                         "names cannot reproduce what PEFT's all-linear shorthand adapts on experts; give all-linear "
                         "alone, or list the modules (e.g. q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,"
                         "lm_head)", field="lora.target_modules")
    if not chosen and not chosen_outside and not head:
        raise InputError("no LoRA target modules given", field="lora.target_modules")
    if ALL_LINEAR in target_modules and peft_moe_params(arch):
        return _peft_moe_all_linear(arch, rank, chosen) + sum(rank * sum(outside[n]) for n in chosen_outside) + head
    converted = _peft_moe_converted(arch, rank, tuple(target_modules), chosen)
    if converted is not None:
        return converted + sum(rank * sum(outside[n]) for n in chosen_outside) + head
    per_layer = sum(rank * (shapes[n][0] + shapes[n][1]) * shapes[n][2] for n in chosen)
    layers = per_layer * arch.num_layers
    if arch.is_moe and arch.dense_layers:   # leading dense layers: their own MLP shapes (no router, experts)
        dense = linear_shapes(arch, dense=True)
        per_dense = sum(rank * (dense[n][0] + dense[n][1]) for n in chosen if n in dense)
        layers = per_layer * arch.moe_layers + per_dense * (arch.num_layers - arch.moe_layers)
    return layers + sum(rank * sum(outside[n]) for n in chosen_outside) + head
