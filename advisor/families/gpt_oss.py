"""GPT-OSS (gpt-oss-20b, gpt-oss-120b; transformers/models/gpt_oss/modeling_gpt_oss.py).

Alternating sliding-window (128) and full attention layers (``layer_types``), a learned attention sink logit per
head, q/k/v/o biases, and an MoE block in every layer: a biased router (top ``num_experts_per_tok`` of
``num_local_experts``) and fused experts with biases (``gate_up_proj`` [E, h, 2i] + bias, ``down_proj`` [E, i, h]
+ bias, clamped SwiGLU). :class:`GptOssReplay` is its forward: what differs from Llama's is written below op by op
from the modeling file. tests/families/test_gpt_oss.py holds it against the tracer byte for byte (in fp32 and
autocast the tracer's fake-tensor run takes transformers' fallback grouped_mm, whose 4-byte-per-expert offsets the
hooks cannot see: the exact difference is asserted); ``benchmarks/trace_table.py`` shows it equal to the CPU
harness on the real model (+0.000 %, fp32 and autocast-bf16).
"""

from __future__ import annotations

from .base import PROXY_HEAD_DIM, PROXY_INNER, Family, llama_proxy, proxy_experts, read_experts, read_llama_like, \
    window_default
from .replay import DecoderReplay

LAYER_TYPES = ("sliding_attention", "full_attention")


class GptOssReplay(DecoderReplay):
    """GptOssForCausalLM's forward where it differs from Llama's (transformers/models/gpt_oss/modeling_gpt_oss.py).

    transformers has no SDPA path for GPT-OSS (``_supports_sdpa = False``: the sinks are concatenated to the
    scores), so ``sdpa`` runs eager (advisor.memory.activations switches it, as from_config does); ``flash`` is
    the kernels-hub flash attention with ``s_aux``, accounted like the other flash kernels (q, k, v, out, lse)."""

    def norm(self, x, trainable, width=None):
        """GptOssRMSNorm: ``(self.weight * hidden_states).to(input_dtype)``: the weight multiplies the fp32
        normalized tensor (saved in fp32 when the weight trains), the product is cast back (Llama casts first)."""
        tr = self.tr
        h = width or self.a.hidden_size
        w = tr.param(h, trainable)
        hf = tr.cast(x, "f32")
        r = tr.save_result(tr.scalar_op(tr.mean(tr.pow_(hf), h), add=True))
        n = tr.mul(hf, r)
        return tr.cast(tr.mul(w, n), x.dt)

    def make_rope_cache(self, layer_kinds=()):
        """GptOssRotaryEmbedding: ``emb = freqs`` (no cat with itself): cos and sin are (1, s, head_dim/2)."""
        tr = self.tr
        half = self.a.head_dim // 2
        cos, sin = tr.new(tr.s * half, tr.pdt, False), tr.new(tr.s * half, tr.pdt, False)
        tr.owner[cos.sid] = tr.owner[sin.sid] = "rope_cache"
        self.rope_tables[""] = (cos, sin)
        self.rope_cos, self.rope_sin = cos, sin

    def rope(self, q, heads):
        """_apply_rotary_emb: ``first, second = chunk(x, 2)``; ``first*cos - second*sin``, ``second*cos +
        first*sin`` (each product saves the table: the halves need a gradient, the tables do not); ``cat``."""
        tr = self.tr
        first, second = tr.split(q, [q.n // 2, q.n // 2])
        cos, sin = self.rope_cos, self.rope_sin
        a = tr.add(tr.mul(first, cos), tr.scalar_op(tr.mul(second, sin)))     # first*cos - second*sin
        b = tr.add(tr.mul(second, cos), tr.mul(first, sin))
        return tr.cat([a, b])

    def attention_core(self, q, k, v, selective):
        """eager_attention_forward with sinks: scores + mask, ``cat([scores, sinks])`` (b, H, s, s+1), minus
        its row max (MaxBackward saves the int64 indices), softmax in that dtype (saves its result), the sink
        column sliced off (a view), ``.to(value.dtype)``, ``matmul`` with v."""
        a, tr, t = self.a, self.tr, self.t
        if t.attention != "eager" or selective:
            return super().attention_core(q, k, v, selective)
        H, d = a.num_attention_heads, a.head_dim
        b, s = tr.b, tr.s
        kr, vr = self.repeat_kv(k, H), self.repeat_kv(v, H)
        qo, ko = self.bmm_operand(q), self.bmm_operand(kr)
        if ko.rg:
            tr.save(qo)
        if qo.rg:
            tr.save(ko)
        sc = tr.op(tr.new(b * H * s * s, tr.low if tr.autocast else qo.dt, qo.rg or ko.rg), [qo, ko], "newview")
        sc = tr.add(tr.scalar_op(sc), tr.new(b * s * s, self.mask_dt, False))  # * scaling + attention_mask
        sink = tr.param(H, self.layer_trainable)                                 # sinks.reshape().expand()
        expanded = tr.view(sink, b * H * s)
        comb = tr.cat([sc, expanded])                                            # sinks: the scores' dtype
        idx = tr.new(b * H * s, "i64", False)                                    # max(dim=-1).indices
        if comb.rg:
            tr.save(idx)
        mx = tr.op(tr.new(b * H * s, comb.dt, comb.rg), [comb])
        comb = tr.add(comb, mx)                                                  # combined - max (broadcast)
        p = tr.save_result(tr.ac_f32(comb), comb.dt)                             # softmax(dtype=combined.dtype)
        p = tr.view(p, b * H * s * s)                                            # probs[..., :-1]
        p = tr.dropout(p, a.attention_dropout)
        p = tr.cast(p, vr.dt)                                                    # .to(value_states.dtype)
        po, vo = self.bmm_operand(p), self.bmm_operand(vr)
        if vo.rg:
            tr.save(po)
        if po.rg:
            tr.save(vo)
        out_n = b * H * s * d
        o = tr.op(tr.new(out_n, tr.low if tr.autocast else po.dt, po.rg or vo.rg, False), [po, vo], "newview")
        return tr.op(tr.new(out_n, o.dt, o.rg, True), [o], "view")            # transpose(1, 2).contiguous()

    def moe(self, x):
        """GptOssMLP: GptOssTopKRouter (biased F.linear, top-k of the logits, softmax over the k in their dtype)
        and GptOssExperts through transformers v5's grouped_mm experts (integrations/moe.py,
        ``is_transposed=True, has_bias=True``): biases gathered per routed row (``bias[expert_ids_g]``:
        IndexBackward saves the sorted expert ids when the bias trains) and added in place, and ``_apply_gate``:
        interleaved gate/up slices, ``gate.clamp(max=limit)`` and ``up.clamp(-limit, limit)`` (both save the
        gate_up output they slice), ``gate * sigmoid(gate * alpha)``, ``(up + 1) * glu``."""
        a, tr = self.a, self.tr
        h, i, E, k = a.hidden_size, a.intermediate_size, a.num_experts, max(a.experts_per_token, 1)
        N = tr.N
        S = N * k
        train = self.layer_trainable
        logits = self.proj(x, h, E, "router")
        idx = tr.new(N * k, "i64", False)                              # topk: TopkBackward saves indices
        if logits.rg:
            tr.save(idx)
        top = tr.op(tr.new(N * k, logits.dt, logits.rg), [logits])
        scores = tr.save_result(tr.ac_f32(top), top.dt)                 # softmax(top, dtype=top.dtype)
        perm = tr.new(S, "i64", False)                                  # sort(expert_ids): perm saved
        ids_g = tr.new(S, "i64", False)                                 # the sorted expert ids
        if x.rg:
            tr.save(perm)
        gather = tr.new(S, "i64", False)                                # perm // k
        if x.rg:
            tr.save(gather)
        sel = tr.op(tr.new(S * h, x.dt, x.rg), [x])                    # hidden_states[perm // k]
        sw = tr.op(tr.new(S, scores.dt, scores.rg), [scores])          # sample_weights[perm]
        if scores.rg:
            tr.save(perm)
        counts = tr.new(S, "f32", False)                                # expert_ids_g.float() for histc (CPU);
        tr.op(tr.new(E, "f32", False), [counts])                        # histc (allocation sequence only)
        tr.save(tr.new(E, "i32", False))                                # grouped_mm offsets (cumsum)
        w_dt = tr.pdt
        # torch's grouped_mm (bf16 weights) saves its input iff the weight trains (derivatives.yaml
        # _grouped_mm); other dtypes take transformers' fallback op, whose setup_context saves input and weight
        # whenever its node exists (integrations/moe.py _grouped_mm_fallback_setup_context)
        fallback = w_dt != "bf16"
        sel = tr.cast(sel, w_dt)                                        # input.to(weight.dtype); no autocast
        if train or (fallback and sel.rg):
            tr.save(sel)                                                # grouped_mm's input
        if train:
            tr.save(ids_g)                                              # bias[expert_ids_g]: IndexBackward
        bias = tr.new(S * 2 * i, w_dt, False)                           # gate_up_proj_bias[expert_ids_g]
        gu = tr.op(tr.new(S * 2 * i, sel.dt, sel.rg or train), [sel, bias])  # grouped_mm, then add_(bias)
        g, u = tr.split(gu, [S * i, S * i])                             # gate_up[..., ::2], [..., 1::2]
        if gu.rg:
            tr.save(gu)                                                 # clamp saves self (the sliced base)
        gc = tr.op(tr.new(S * i, gu.dt, gu.rg), [g])                    # gate.clamp(max=limit)
        uc = tr.op(tr.new(S * i, gu.dt, gu.rg), [u])                    # up.clamp(min=-limit, max=limit)
        sg = tr.save_result(tr.scalar_op(gc))                           # sigmoid(gate * alpha)
        glu = tr.mul(gc, sg)
        m = tr.mul(tr.scalar_op(uc, add=True), glu)                     # (up + 1) * glu
        m = tr.cast(m, w_dt)
        if train or (fallback and m.rg):
            tr.save(m)
        if train:
            tr.save(ids_g)
        bias = tr.new(S * h, w_dt, False)                               # down_proj_bias[expert_ids_g]
        o = tr.op(tr.new(S * h, m.dt, m.rg or train), [m, bias])        # grouped_mm, then add_(bias)
        wo = tr.mul(o, sw)                                              # proj_out * sample_weights_g[:, None]
        inv = tr.new(S, "i64", False)                                   # weighted_out[inv_perm]
        if wo.rg:
            tr.save(inv)
        wo = tr.op(tr.new(S * h, wo.dt, wo.rg), [wo])
        f = tr.op(tr.new(N * h, wo.dt, wo.rg), [wo])                    # view(N, k, h).sum(dim=1)
        return tr.cast(f, x.dt)


def pattern(r) -> tuple[str, ...]:
    """``layer_types`` (its shortest period), else GptOssConfig's default: sliding, full, sliding, ..."""
    types = r.cfg.get("layer_types")
    if types is None:
        return LAYER_TYPES
    if not isinstance(types, list) or not types or any(t not in LAYER_TYPES for t in types):
        raise r.fail("layer_types", f"must be a list of {' / '.join(LAYER_TYPES)}")
    period = next(p for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types)))
    return tuple(types[:period])


def extra(r):
    return dict(read_experts(r, "num_local_experts", 128, 4), mlp_bias=True,
                router_bias=True, attention_sinks=True, layer_pattern=pattern(r))


def read(r):
    return read_llama_like(r, kv=8, head_dim=64, tie=False, max_pos=131072, act="silu", attention_bias=True,
                           window=window_default(128), extra=extra)


def proxy(arch):
    experts, top_k = proxy_experts(arch)
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, num_local_experts=experts, num_experts_per_tok=top_k,
                       intermediate_size=PROXY_INNER // 2, sliding_window=16)


FAMILY = Family(model_type="gpt_oss", modeling="transformers/models/gpt_oss/modeling_gpt_oss.py", read=read,
                fsdp_layer_class="GptOssDecoderLayer", proxy=proxy, replay=GptOssReplay, z3_leaf_modules=("GptOssMLP",),
                native_linear_names={"router": ("router",)},
                # measured (peft 0.21.2): get_peft_model refuses GptOssTopKRouter as a target, and all-linear skips it
                lora_refused={"router": "GptOssTopKRouter is not an nn.Linear: PEFT refuses it as a LoRA target"},
                all_linear_excludes=("router",))
