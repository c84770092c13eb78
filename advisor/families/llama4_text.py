"""Llama-4 text (Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E; transformers/models/llama4/modeling_llama4.py,
``Llama4ForCausalLM`` on a ``llama4_text`` config, the ``text_config`` of the released multimodal checkpoints).

iRoPE: the RoPE layers (``no_rope_layers[i] == 1``; by default three of every four) use chunked attention
(``attention_chunk_size`` 8192) and a parameter-free L2 norm of q and k (``use_qk_norm``); every fourth layer has no
RoPE, full causal attention and a per-position temperature on q (``attn_temperature_tuning``). MoE layers
(``moe_layers``, by default every ``interleave_moe_layer_step``-th: all for Scout, every second for Maverick) hold
a sigmoid top-k router over ``num_local_experts`` experts of width ``intermediate_size`` plus one shared expert of
the same width; the other layers a dense gated MLP of ``intermediate_size_mlp``. Each layer's kind is
``<layer_type>/<rope|nope>/<moe|dense>`` (``layer_pattern``, the shortest period of the model's layers).

Activations: :class:`Llama4Replay` (tests/families/test_llama4_text.py holds it against the tracer). transformers'
Llama4TextMoe runs every expert on every token (``hidden_states.repeat(num_experts, 1)`` scaled by the
router's sigmoid scores, zero for the unrouted): saved bytes grow with the experts, not with top-k.
"""

from __future__ import annotations

from advisor.errors import InputError

from .base import PROXY_HEAD_DIM, PROXY_INNER, Family, llama_proxy, proxy_experts, read_experts, read_llama_like
from .replay import DecoderReplay


def layer_kinds(r) -> list[str]:
    """Every layer's kind as Llama4TextConfig.__post_init__ derives its lists (configuration_llama4.py)."""
    cfg = r.cfg
    n = r.integer("num_hidden_layers")
    interval = r.integer("no_rope_layer_interval", default=4)
    rope = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    if not isinstance(rope, list) or any(v not in (0, 1) or isinstance(v, float) for v in rope):
        raise r.fail("no_rope_layers", "must be a list of 0 (no RoPE) / 1 (RoPE), one per layer")
    step = r.integer("interleave_moe_layer_step", default=1)
    moe = cfg.get("moe_layers")
    if moe is not None and (not isinstance(moe, list) or any(isinstance(i, bool) or not isinstance(i, int)
                                                              for i in moe)):
        raise r.fail("moe_layers", "must be a list of layer indices")
    moe = set(range(step - 1, n, step)) if moe is None else set(moe)
    chunk = cfg.get("attention_chunk_size", 8192)
    types = cfg.get("layer_types") or ["chunked_attention" if nr and chunk is not None else "full_attention"
                                       for nr in rope]
    if not isinstance(types, list):
        raise r.fail("layer_types", "must be a list of chunked_attention / full_attention")
    # the modeling file indexes the lists by layer (``no_rope_layers[layer_idx]``): longer lists are read up to n
    if len(rope) < n or len(types) < n or any(t not in ("chunked_attention", "full_attention") for t in types):
        raise r.fail("no_rope_layers", f"and layer_types must list the {n} layers")
    return [f"{types[i]}/{'rope' if rope[i] else 'nope'}/{'moe' if i in moe else 'dense'}" for i in range(n)]


def period(kinds: list[str]) -> tuple[str, ...]:
    """The shortest repeating prefix of ``kinds`` (the whole list when it does not repeat)."""
    p = next(p for p in range(1, len(kinds) + 1) if all(k == kinds[i % p] for i, k in enumerate(kinds)))
    return tuple(kinds[:p])


def extra(r):
    kinds = layer_kinds(r)
    inner = r.integer("intermediate_size", default=8192)
    chunk = r.cfg.get("attention_chunk_size", 8192)
    return dict(read_experts(r, "num_local_experts", 16, 1),
                shared_expert_size=inner,                                  # Llama4TextMoe.shared_expert
                dense_layers=sum(k.endswith("/dense") for k in kinds),
                dense_intermediate_size=r.integer("intermediate_size_mlp", default=16384),
                attention_chunk_size=None if chunk is None else r.integer("attention_chunk_size", default=8192),
                qk_l2_norm=r.flag("use_qk_norm", default=True),
                attn_temperature_tuning=bool(r.cfg.get("attn_temperature_tuning", True)),
                layer_pattern=period(kinds))


def read(r):
    return read_llama_like(r, kv=8, head_dim=128, tie=False, max_pos=4096 * 32, act="silu", extra=extra,
                           intermediate=("intermediate_size", 8192))


def proxy(arch):
    experts, top_k = proxy_experts(arch)
    return llama_proxy(arch, head_dim=PROXY_HEAD_DIM, num_local_experts=experts, num_experts_per_tok=top_k,
                       intermediate_size=PROXY_INNER // 2, intermediate_size_mlp=PROXY_INNER,
                       interleave_moe_layer_step=2 if arch.dense_layers else 1, no_rope_layer_interval=2,
                       attention_chunk_size=16, use_qk_norm=arch.qk_l2_norm)


_ROUTER_LORA = ("PEFT wraps Llama4Router, an nn.Linear whose forward returns a tuple, and training fails in the "
                "adapter's forward (peft/tuners/lora/layer.py); leave the router out")


class Llama4Replay(DecoderReplay):
    """Llama4ForCausalLM's forward where it differs from Llama's (modeling_llama4.py, op by op)."""

    softmax_no_dtype = True     # eager: softmax(attn_weights) in the scores' dtype, no .to() after it

    def attention_core(self, q, k, v, selective):
        if self.t.attention == "flash":   # from_config(attn_implementation="flash_attention_2") refuses Llama-4
            raise InputError("llama4_text: transformers has no flash-attention path for Llama-4 "
                             "(Llama4PreTrainedModel._supports_flash_attn = False): use --attention sdpa or eager",
                             field="--attention")
        return super().attention_core(q, k, v, selective)

    def window(self):
        """Chunked layers need a mask once the sequence exceeds a chunk (create_chunked_causal_mask)."""
        return self.a.attention_chunk_size if self.kind.startswith("chunked_attention") else None

    def make_rope_cache(self, layer_kinds=()):
        """Llama4TextRotaryEmbedding: one complex64 ``freqs_cis`` (1, s, head_dim/2) = 8 bytes an element, in
        every precision (``torch.polar`` of fp32 frequencies, never cast)."""
        tr = self.tr
        t = tr.new(tr.s * self.a.head_dim, "f32", False)            # s * d/2 complex64 = s * d * 4 bytes
        tr.owner[t.sid] = "rope_cache"
        self.rope_tables[""] = (t, t)
        self.rope_cos = self.rope_sin = t

    def rope(self, q, heads):
        """apply_rotary_emb: ``view_as_complex(x.float().reshape(..., -1, 2)) * freqs_cis`` (the product saves the
        table), ``view_as_real(...).flatten(3).type_as(x)``."""
        tr = self.tr
        xf = tr.cast(q, "f32")
        out = tr.mul(xf, self.rope_cos)                             # complex mul: same bytes as fp32 (b, s, h, d)
        return tr.cast(out, q.dt)

    def l2norm(self, x):
        """Llama4TextL2Norm: ``x.float() * rsqrt(x.pow(2).mean(-1) + eps)``, ``.type_as(x)``; no weight."""
        tr, d = self.tr, self.a.head_dim
        hf = tr.cast(x, "f32")
        r = tr.save_result(tr.scalar_op(tr.mean(tr.pow_(hf), d), add=True))
        return tr.cast(tr.mul(hf, r), x.dt)

    def attention(self, x, selective):
        a, tr = self.a, self.tr
        h, H, KV, d = a.hidden_size, a.num_attention_heads, a.num_key_value_heads, a.head_dim
        b, s = tr.b, tr.s
        rope = "/rope/" in self.kind
        q = self.proj(x, h, H * d, "q_proj")
        k = self.proj(x, h, KV * d, "k_proj")
        v = self.proj(x, h, KV * d, "v_proj")
        # q and k stay (b, s, heads, d) until after RoPE / norm / scaling; v is transposed at once
        q = tr.view(q, q.n, True, "view")
        k = tr.view(k, k.n, True, "view")
        v = tr.view(v, v.n, True, "new" if self.t.attention == "eager" or KV != H else "view")
        if rope:
            q, k = self.rope(q, H), self.rope(k, KV)
            if a.qk_l2_norm:
                q, k = self.l2norm(q), self.l2norm(k)
        elif a.attn_temperature_tuning:
            # attn_scales (1, s, 1, 1) fp32 from the positions, a new tensor each NoPE layer; q * scales saves it
            scales = tr.new(s, "f32", False)
            q = tr.cast(tr.mul(q, scales), q.dt)                    # (query * attn_scales).to(query.dtype)
        # transpose(1, 2): the (b, h, s, d) views attention gets; their gradients come back as copies
        q = tr.view(q, q.n, True, "new")
        k = tr.view(k, k.n, True, "new")
        o = self.attention_core(q, k, v, selective)
        return self.proj(o, H * d, h, "o_proj")

    def mlp(self, x):
        """Dense layers: Llama4TextMLP(intermediate_size_mlp); MoE layers: Llama4TextMoe."""
        a, tr = self.a, self.tr
        h = a.hidden_size
        if self.kind.endswith("/moe"):
            return self.moe(x)
        i = a.dense_intermediate_size
        g = self.proj(x, h, i, "gate_proj")
        m = tr.mul(self.act(g), self.proj(x, h, i, "up_proj"))
        return self.proj(m, i, h, "down_proj")

    def moe(self, x):
        """Llama4TextMoe: router (Linear, no bias) → top-k of the logits scattered into a -inf (N, E) tensor →
        sigmoid in fp32; ``routed_in = x.repeat(E, 1) * scores.T.reshape(-1, 1)``; Llama4TextExperts: ``bmm`` with
        gate_up_proj [E, h, 2i], chunk, ``up * act(gate)``, ``bmm`` with down_proj; the shared expert
        (Llama4TextMLP of intermediate_size) on x; ``out.add_(routed.reshape(E, N, h).sum(0))``."""
        a, tr = self.a, self.tr
        h, i, E, k = a.hidden_size, a.intermediate_size, a.num_experts, max(a.experts_per_token, 1)
        N = tr.N
        train = self.layer_trainable
        logits = self.proj(x, h, E, "router")
        idx = tr.new(N * k, "i64", False)                           # topk indices (TopkBackward saves them)
        if logits.rg:
            tr.save(idx)
        top = tr.op(tr.new(N * k, logits.dt, logits.rg), [logits])
        full = tr.new(N * E, logits.dt, False)                      # full_like(logits, -inf)
        sc = tr.op(tr.new(N * E, logits.dt, top.rg), [top])         # .scatter_(1, idx, top): ScatterBackward
        sc = tr.cast(sc, "f32")                                     # router_scores.float()
        sg = tr.cast(tr.save_result(tr.ac_f32(sc)), logits.dt)      # sigmoid, .to(router_scores.dtype)
        del full
        rep = tr.op(tr.new(E * N * h, x.dt, x.rg), [x])             # x.repeat(E, 1): RepeatBackward sums
        col = tr.op(tr.new(E * N, sg.dt, sg.rg), [sg])              # scores.transpose(0, 1).reshape(-1, 1): a copy
        ri = tr.mul(rep, col)                                       # saves both
        # experts: bmm(ri, gate_up_proj) saves ri iff the weight trains (and the weight iff ri needs a grad)
        xin = tr.ac_low(ri)
        if train:
            tr.save(xin)
        if tr.autocast and tr.pdt == "f32" and (xin.rg or train):
            # autocast's bf16/fp16 copy of the fp32 gate_up_proj, saved by bmm (the model-state side; the tracer's
            # weight-copy rule only knows 2-D weights and counts a frozen one as an activation)
            tr.weight_copy_elems += E * h * 2 * i
        gu = tr.op(tr.new(E * N * 2 * i, tr.low if tr.autocast else xin.dt, xin.rg or train), [xin],
                   leaf=train)
        g, u = tr.split(gu, [E * N * i, E * N * i])
        m = tr.mul(u, self.act(g))                                  # up * act_fn(gate)
        mi = tr.ac_low(m)
        if train:
            tr.save(mi)
        if tr.autocast and tr.pdt == "f32" and (mi.rg or train):
            tr.weight_copy_elems += E * i * h                       # the down_proj copy
        ro = tr.op(tr.new(E * N * h, tr.low if tr.autocast else mi.dt, mi.rg or train), [mi], leaf=train)
        # shared expert on x: PEFT matches its gate_proj / up_proj / down_proj by name like the dense MLP's
        def shared(name):
            return name if name in self.lora else f"shared_{name}"
        gs = self.proj(x, h, i, shared("gate_proj"))
        ms = tr.mul(self.act(gs), self.proj(x, h, i, shared("up_proj")))
        out = self.proj(ms, i, h, shared("down_proj"))
        summed = tr.op(tr.new(N * h, ro.dt, ro.rg), [ro])           # reshape(E, N, h).sum(dim=0)
        return tr.add(out, summed)                                  # out.add_(...): in place, nothing saved


FAMILY = Family(model_type="llama4_text", modeling="transformers/models/llama4/modeling_llama4.py", read=read,
                fsdp_layer_class="Llama4TextDecoderLayer", proxy=proxy, replay=Llama4Replay,
                z3_leaf_modules=("Llama4TextMoe",),
                native_linear_names={"router": ("router",)},
                # measured: peft 0.21.2 wraps Llama4Router (an nn.Linear whose forward returns a tuple) and its
                # forward fails (peft/tuners/lora/layer.py: result.dtype of a tuple)
                lora_refused={"router": _ROUTER_LORA}, all_linear_excludes=("router",),
                dense_expert_compute=True)
