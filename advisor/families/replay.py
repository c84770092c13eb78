"""The decoder forward every replayed family shares, on symbolic tensors (:mod:`advisor.memory.symbolic`).

:class:`DecoderReplay` walks a pre-norm decoder the way the transformers v5 modeling files write it (embeddings,
rotary tables, per layer: norm, attention, residual, norm, MLP or MoE, residual; final norm, lm_head and
``ForCausalLMLoss``). A family whose modeling file differs subclasses it in its own module under
:mod:`advisor.families` and overrides the piece that differs (a class attribute for a one-line quirk, a method
for a block); what it overrides is what its modeling file does differently from Llama's.
"""

from __future__ import annotations

from advisor.architecture import Architecture
from advisor.memory.symbolic import BYTES, Tensor, Trace
from advisor.specs import TrainingSpec
from advisor.stacks import family_stack_behaviour, lora_adapters_in_base_dtype, sdpa_contiguous_qkv, sdpa_repeats_kv


def _lora_linear_names(arch: Architecture, targets: tuple[str, ...]) -> set[str]:
    """Normalized linear names (advisor.param_count.linear_shapes) that get LoRA adapters."""
    from advisor import param_count as pc

    shapes = pc.linear_shapes(arch)
    native = pc.native_linear_names(arch.family)
    chosen: set[str] = set()
    for t in targets:
        if t == getattr(pc, "ALL_LINEAR", "all-linear"):
            chosen.update(n for n in shapes if n not in pc.all_linear_excludes(arch))
        elif t in shapes:
            chosen.add(t)
        elif t in native:
            chosen.update(native[t])
    return chosen


def _targets_head(targets) -> bool:
    from advisor.param_count import lora_targets_head

    return lora_targets_head(targets)


def _lightning_head(training) -> bool:
    from advisor.param_count import lightning_quantized_head

    return lightning_quantized_head(training)


# PEFT's LoRA on an MoE model (peft/tuners/lora/layer.py ParamWrapper, PEFT 0.21): the MLP names and all-linear
# put adapters on the 3-D expert weights (gate_up_proj, down_proj) and, under all-linear, on the router weight,
# not on nn.Linear modules of the MLP (measured: DeepSeek-V3's dense MLP and shared experts get none).
_MLP_NAMES = frozenset({"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "router",
                        "shared_gate_proj", "shared_up_proj", "shared_down_proj"})


def _moe_lora_parts(arch: Architecture, training: TrainingSpec) -> frozenset[str]:
    """Which MoE weights PEFT adapts: ``gate_up``, ``down``, ``router`` (empty without LoRA or experts)."""
    if training.method not in ("lora", "qlora") or not arch.is_moe:
        return frozenset()
    targets = training.lora.target_modules
    targets = {targets} if isinstance(targets, str) else set(targets)
    if "all-linear" in targets:
        return frozenset({"gate_up", "down", "router"})
    parts = set()
    if targets & {"gate_proj", "up_proj", "gate_up_proj"}:
        parts.add("gate_up")
    if "down_proj" in targets:
        parts.add("down")
    return frozenset(parts)


class DecoderReplay:
    """One family's forward, replayed on a :class:`Trace` (Llama's, unless a family's subclass says otherwise).

    Class attributes are the one-line quirks of a family's modeling file; the defaults are Llama's."""

    gemma_norm = False          # GemmaRMSNorm: x.float() * (1 + w.float()), then .type_as(x)
    softmax_no_dtype = False    # eager softmax(scores) without dtype=, then .type(v.dtype) (GPT-2)
    scaled_embedding = False    # embeddings * sqrt(hidden), a 0-d tensor (Gemma)
    batch_position_ids = False  # (b, s) position ids of a learned table (OPT's cumsum)
    rope_cat = False            # apply_rotary_pos_emb ends in torch.cat([q_embed, q_pass]): a new contiguous tensor
    scale_q_after_proj = False  # q_proj(x) * scaling before the head split (OPT)
    sandwich_norm = False       # post_attention and post_feedforward norms around each block (Gemma-2/3)
    router_softmax_dtype = False  # MoE router: softmax(logits, dtype=float) instead of softmax(logits.float())
    router_cast_back = False    # MoE router: top-k weights cast back to the logits' dtype (Qwen3-MoE)
    rope_per_layer_kind = False  # one rotary table pair per layer type (Gemma-3: local and global rope bases)
    peft_moe_params = False     # PEFT LoRA adapts the 3-D expert weights and router, no MLP nn.Linear (A2)

    def __init__(self, arch: Architecture, training: TrainingSpec, tr: Trace, layer_trainable: bool):
        self.a, self.t, self.tr = arch, training, tr
        self.method = training.method
        self.lora = (_lora_linear_names(arch, training.lora.target_modules)
                     if training.method in ("lora", "qlora") else set())
        self.rank = training.lora.rank
        # issue 17 (L): PEFT's lora.Linear around the lm_head (``--lora-targets ...,lm_head``); under QLoRA the
        # head stays a 16-bit nn.Linear (transformers' bitsandbytes integration skips the output embeddings:
        # get_keys_to_not_convert), so its adapter is the LoRA path over a plain frozen linear
        self.lora_head = training.method in ("lora", "qlora") and _targets_head(training.lora.target_modules)
        # litgpt's QLoRA (--qlora-quantizer lightning): the lm_head is a bitsandbytes Linear4bit too
        self.quantized_head = _lightning_head(training)
        # PEFT ParamWrapper adapters on the MoE weights (families whose MLP is only the MoE block and its dense
        # neighbours, measured: Mixtral, Qwen3-MoE, DeepSeek-V3; not Llama-4, whose shared expert takes them)
        self.moe_lora = _moe_lora_parts(arch, training) if self.peft_moe_params else frozenset()
        if self.peft_moe_params and arch.is_moe:
            self.lora -= _MLP_NAMES
        self.layer_trainable = layer_trainable  # weights of the decoder layer being traced need grads
        self.rope_cos = self.rope_sin = None
        self.rope_tables: dict[str, tuple[Tensor, Tensor]] = {}   # per rope kind (rope_per_layer_kind)
        self.kind = ""                          # the kind of the decoder layer being replayed (layer_pattern)
        self.mask_dt = tr.pdt                   # create_causal_mask: dtype of inputs_embeds
        self.recompute: list[tuple[str, list[int]]] = []   # (term prefix, storages) rebuilt in backward
        self.forward_held: list[int] = []       # storages alive until the forward ends (torchtune's logit chunks)

    # -- pieces ------------------------------------------------------------------------------------------
    def proj(self, x: Tensor, n_in: int, n_out: int, name: str) -> Tensor:
        """A decoder-layer linear, LoRA-wrapped when targeted (peft.tuners.lora.Linear.forward)."""
        tr = self.tr
        if self.method == "qlora":
            # bitsandbytes MatMul4Bit.forward (bitsandbytes/autograd/_functions.py) keeps its input whenever A or
            # B needs a gradient (`if any(ctx.needs_input_grad[:2]): ctx.tensors = (A, B)`): a frozen 4-bit
            # linear whose input requires grad saves that input, cast to the compute dtype (Linear4bit.forward
            # casts x to compute_dtype), unlike a frozen nn.Linear.
            # The output is cast back to the input's dtype (``.to(inp_dtype)``): an fp32 tensor when the residual
            # stream is fp32 (--base-dtype fp32, issue 17), a no-op otherwise. The 4-bit weight is dequantized in
            # the compute dtype (a transient, activation_memory): no autocast copy (w_dt = the compute dtype).
            xq = tr.ac_low(x) if tr.autocast else x
            if xq.rg:
                tr.save(xq)
            base = tr.cast(tr.linear(xq, n_in, n_out, False, w_dt=xq.dt), x.dt)
            if name not in self.lora:
                return base
        elif name not in self.lora:
            return tr.linear(x, n_in, n_out, self.layer_trainable)
        else:
            base = tr.linear(x, n_in, n_out, False)                # frozen base: saves no input
        return self.lora_branch(x, base, n_in, n_out, quantized=self.method == "qlora")

    def lora_branch(self, x: Tensor, base: Tensor, n_in: int, n_out: int, quantized: bool = False) -> Tensor:
        """``result + lora_B(lora_A(dropout(x))) * scaling`` over the frozen base output ``base``
        (peft.tuners.lora.layer.Linear.forward), cast back to the base output's dtype. ``quantized``: PEFT's
        bnb Linear4bit, which casts x to the adapter dtype only outside autocast (peft/tuners/lora/bnb.py:
        ``requires_conversion = not torch.is_autocast_enabled()``; under autocast lora_A casts x itself)."""
        tr = self.tr
        # _cast_input_dtype(x, lora_A.weight.dtype): fp32 adapters (PEFT >= 0.12 autocast_adapter_dtype), or, on a
        # 16-bit model under an older PEFT, the model's own dtype: no copy (advisor.stacks.lora_adapters_in_base_dtype)
        ad = tr.pdt if tr.half and lora_adapters_in_base_dtype(getattr(self.t, "transformers_version", None)) else "f32"
        xa = x if quantized and tr.autocast else tr.cast(x, ad)
        # lora_B(lora_A(dropout(x))): with lora_dropout > 0 nn.Dropout saves a bool mask and lora_A saves the
        # dropped copy, one per adapted linear (peft.tuners.lora.layer.Linear.forward; Identity when p = 0)
        xa = tr.dropout(xa, self.t.lora.dropout)
        a = tr.linear(xa, n_in, self.rank, True, w_dt=ad)           # lora_A saves its input
        bo = tr.linear(a, self.rank, n_out, True, w_dt=ad)          # lora_B saves lora_A's output
        scaled = tr.scalar_op(bo)
        res = tr.add(base, scaled)                                  # result + lora_B(...) * scaling
        out = tr.cast(res, base.dt)                                 # result.to(torch_result_dtype)
        # the output-sized tensors alive at once (none saved): base, lora_B's output and its scaled copy, then
        # base, the scaled copy and the sum, then the sum and its cast (the head's forward moment, issue 17)
        self.branch_live = max(base.nbytes + bo.nbytes + scaled.nbytes, base.nbytes + scaled.nbytes + res.nbytes,
                               res.nbytes + (out.nbytes if out.sid != res.sid else 0))
        return out

    def norm(self, x: Tensor, trainable: bool, width: int | None = None) -> Tensor:
        """The family's norm over the last ``width`` elements (default: hidden)."""
        a, tr = self.a, self.tr
        h = width or a.hidden_size
        if a.norm == "layernorm":
            return tr.layer_norm(x, h, trainable and a.norm_affine)
        w = tr.param(h, trainable)
        hf = tr.cast(x, "f32")                                      # hidden_states.to(float32) / x.float()
        var = tr.mean(tr.pow_(hf), h)                               # pow(2).mean(-1): PowBackward saves hf
        r = tr.save_result(tr.scalar_op(var, add=True))             # rsqrt(variance + eps) saves its result
        n = tr.mul(hf, r)                                           # saves hf and r
        if self.gemma_norm:                                         # Gemma2RMSNorm.forward
            w1 = tr.new(h, "f32", trainable)                        # (1.0 + self.weight.float())
            o = tr.mul(n, w1)                                       # saves n (fp32) and w1
            return tr.cast(o, x.dt)                                 # .type_as(x)
        n2 = tr.cast(n, x.dt)                                       # LlamaRMSNorm: .to(input_dtype)
        return tr.mul(w, n2)                                        # weight * hs: saves hs iff weight trains

    def rope(self, q: Tensor, heads: int) -> Tensor:
        """apply_rotary_pos_emb: q*cos saves cos, rotate_half(q)*sin saves sin (shared by all layers)."""
        a, tr = self.a, self.tr
        d = a.head_dim
        rot = max(1, int(d * a.rotary_pct))
        full = tr.b * heads * tr.s * d
        part = q if rot == d else tr.view(q, full * rot // d)        # q[..., :rot] (a slice)
        c1 = tr.mul(part, self.rope_cos)
        x1, x2 = tr.view(part, part.n // 2), tr.view(part, part.n // 2)   # rotate_half: two slices,
        rh = tr.cat([tr.scalar_op(x2), x1], part.bshd)               # cat((-x2, x1)): a new tensor
        c2 = tr.mul(rh, self.rope_sin)
        e = tr.add(c1, c2)
        if rot == d and not self.rope_cat:
            return e                                                # keeps q's (b, s, h, d) memory layout
        if rot == d:
            return tr.cat([e])
        return tr.cat([e, tr.view(q, full - part.n)])                # torch.cat([q_embed, q_pass]) contiguous

    def repeat_kv(self, x: Tensor, heads: int) -> Tensor:
        a, tr = self.a, self.tr
        if a.num_key_value_heads == heads:
            return x
        # expand + reshape: a copy; ExpandBackward sums the gradient back to the kv heads (a new tensor)
        return tr.op(tr.new(tr.b * heads * tr.s * a.head_dim, x.dt, x.rg, False), [x])

    def bmm_operand(self, x: Tensor) -> Tensor:
        """torch.matmul on 4-D inputs reshapes to (b*h, ., .): a view when (b, h) merge, else a copy."""
        tr = self.tr
        c = tr.ac_low(x)
        if tr.b > 1 and c.bshd:
            c = tr.op(tr.new(c.n, c.dt, c.rg, False), [c], "view")   # reshape copy; backward views the grad
        return c

    def attention_core(self, q: Tensor, k: Tensor, v: Tensor, selective: bool) -> Tensor:
        """Returns the attention output laid out (b, s, heads*d), as o_proj receives it."""
        a, tr, t = self.a, self.tr, self.t
        H, d = a.num_attention_heads, a.head_dim
        b, s = tr.b, tr.s
        out_n = b * H * s * (a.v_head_dim or d)                        # MLA: values narrower than q/k
        impl = t.attention
        window = self.window()
        window_mask = (window is not None and s > window)
        if impl == "eager" and selective:
            # checkpointed attention interface: its tensor inputs are kept (NoopSaveInputs); what the eager
            # core saves inside is rebuilt during backward (a temporary, recorded for the layer moment)
            term, before = tr.term, set(tr.saved)
            tr.term = term + ":recompute"
            out = self.attention_core(q, k, v, False)
            inner = [sid for sid in tr.saved if sid not in before]
            self.recompute.append((term + ":recompute", inner))
            for sid in inner:
                del tr.saved[sid]
            tr.term = term
            if q.rg or k.rg or v.rg:
                tr.save(q, k, v)
                tr._take()                                             # released by the core's own nodes
            return out
        if impl == "eager":
            kr, vr = self.repeat_kv(k, H), self.repeat_kv(v, H)
            qo, ko = self.bmm_operand(q), self.bmm_operand(kr)
            if ko.rg:
                tr.save(qo)
            if qo.rg:
                tr.save(ko)
            mm_dt = tr.low if tr.autocast else qo.dt
            # matmul(q, kᵀ) (* scaling: no save); BmmBackward: grad.bmm(k), qᵀ.bmm(grad), new tensors seen
            # through the views that fold (b, h) for bmm
            sc = tr.op(tr.new(b * H * s * s, mm_dt, qo.rg or ko.rg), [qo, ko], "newview")
            sc = tr.scalar_op(sc)
            if a.attn_logit_softcapping:
                sc = tr.scalar_op(tr.save_result(tr.scalar_op(sc)))   # / cap, tanh (saves result), * cap
            sc = tr.add(sc, tr.new(b * s * s, self.mask_dt, False))   # + causal mask (no save)
            if self.softmax_no_dtype:
                p = tr.save_result(tr.ac_f32(sc))                      # softmax: fp32 under CUDA autocast
                p = tr.cast(p, vr.dt)                                  # .type(value.dtype)
            else:
                p = tr.save_result(sc, "f32")                          # softmax(..., dtype=float32)
                p = tr.cast(p, q.dt)                                   # .to(query.dtype)
            p = tr.dropout(p, a.attention_dropout)
            po, vo = self.bmm_operand(p), self.bmm_operand(vr)
            if vo.rg:
                tr.save(po)
            if po.rg:
                tr.save(vo)
            o = tr.op(tr.new(out_n, tr.low if tr.autocast else po.dt, po.rg or vo.rg, False), [po, vo], "newview")
            # transpose(1, 2).contiguous(): a copy; CloneBackward and TransposeBackward hand on (a view of) the
            # gradient
            return tr.op(tr.new(out_n, o.dt, o.rg, True), [o], "view")
        # SDPA / flash: saves q, k, v (as passed), out and the fp32 logsumexp
        sdpa_mask = impl == "sdpa" and window_mask
        # repeat_kv before SDPA: with a mask (no enable_gqa), or always under transformers < 4.54 (stacks.yaml
        # sdpa_repeat_kv; issue 17, measured: benchmarks/sdpa_repeat_kv.py)
        version = getattr(t, "transformers_version", None)
        old_stack = impl == "sdpa" and sdpa_repeats_kv(version)
        mask_4d = impl == "sdpa" and family_stack_behaviour("sdpa_mask_contiguous", a, version)
        contiguous = mask_4d or impl == "sdpa" and sdpa_contiguous_qkv(version)
        # one KV head: expand + reshape is a view (stride 0), no new bytes, unless made contiguous below (measured)
        view_only = old_stack and not sdpa_mask and not contiguous and a.num_key_value_heads == 1
        if (sdpa_mask or old_stack) and a.num_key_value_heads != H and not view_only:
            k, v = self.repeat_kv(k, H), self.repeat_kv(v, H)
        qc, kc, vc = tr.ac_low(q), tr.ac_low(k), tr.ac_low(v)
        if contiguous:
            # q/k/v.contiguous() (4.39 Llama/Gemma on CUDA with their 4-D mask; 4.48-4.55 always): copies SDPA saves
            # instead, and an output o_proj gets through a copy (stacks.yaml)
            qc, kc, vc = (tr.op(tr.new(x.n, x.dt, x.rg, False), [x], "view") if x.bshd else x for x in (qc, kc, vc))
            if mask_4d and tr.autocast and self.mask_dt != tr.low and (qc.rg or kc.rg or vc.rg):
                # autocast casts SDPA's mask (built in inputs_embeds' fp32) too: a b x s x s copy per layer, kept
                tr.save(tr.new(b * s * s, tr.low, False))
        rg = qc.rg or kc.rg or vc.rg
        out = tr.new(out_n, qc.dt, rg, qc.bshd)                        # output follows the query's layout
        if rg:
            tr.save(qc, kc, vc, out, tr.new(b * H * s, "f32", False))
            if sdpa_mask:                                              # memory-efficient kernel keeps attn_bias
                tr.save(tr.new(b * s * s, qc.dt, False))
        # the fused backward allocates grad_q, grad_k, grad_v (in the inputs' layouts)
        out = tr.op(out, [qc, kc, vc])
        if out.bshd:
            return tr.view(out, out_n, True)                           # transpose(1, 2).contiguous(): no-op
        return tr.op(tr.new(out_n, out.dt, out.rg, True), [out], "view")

    def attention(self, x: Tensor, selective: bool) -> Tensor:
        a, tr = self.a, self.tr
        h, H, KV, d = a.hidden_size, a.num_attention_heads, a.num_key_value_heads, a.head_dim
        b, s = tr.b, tr.s
        qn, kn = b * s * H * d, b * s * KV * d
        # The head split (view + transpose) hands back a view of the gradient when that gradient comes in the
        # projection's (b, s, h, d) layout (SDPA's); after RoPE, repeat_kv or eager's bmm it is (b, h, s, d)
        # and reshaping it back copies (measured).
        copy_qk = a.position == "rope" or self.t.attention == "eager" or KV != H
        copy_v = self.t.attention == "eager" or KV != H
        if a.fused_qkv:
            qkv = self.proj(x, h, (H + 2 * KV) * d, "qkv_proj")
            q, k, v = tr.split(qkv, [qn, kn, kn], True)                 # split / chunk of the fused output
        else:
            q = self.proj(x, h, H * d, "q_proj")
            k = self.proj(x, h, KV * d, "k_proj")
            v = self.proj(x, h, KV * d, "v_proj")
            if self.scale_q_after_proj:
                q = tr.scalar_op(q)                                    # q_proj(x) * self.scaling
            q = tr.view(q, qn, True, "new" if copy_qk else "view")
            k = tr.view(k, kn, True, "new" if copy_qk else "view")
            v = tr.view(v, kn, True, "new" if copy_v else "view")
        if a.qk_norm:                                                  # Qwen3: per-head RMSNorm on q and k
            q, k = self._head_norm(q), self._head_norm(k)
        if a.position == "rope":
            if family_stack_behaviour("rotary_per_layer", a, getattr(self.t, "transformers_version", None)):
                # 4.39: each attention's own rotary_emb(value_states, position_ids) tables (stacks.yaml)
                rot = max(1, int(d * a.rotary_pct))
                self.rope_cos, self.rope_sin = tr.new(s * rot, v.dt, False), tr.new(s * rot, v.dt, False)
            q, k = self.rope(q, H), self.rope(k, KV)
        o = self.attention_core(q, k, v, selective)
        return self.proj(o, H * d, h, "o_proj")

    def _head_norm(self, x: Tensor) -> Tensor:
        tr, d = self.tr, self.a.head_dim
        hf = tr.cast(x, "f32")
        r = tr.save_result(tr.scalar_op(tr.mean(tr.pow_(hf), d), add=True))
        n2 = tr.cast(tr.mul(hf, r), x.dt)
        return tr.mul(tr.param(d, self.layer_trainable), n2)

    def act(self, x: Tensor) -> Tensor:
        """The MLP activation, op by op as transformers.activations writes it."""
        tr = self.tr
        kind = self.a.hidden_act
        if kind in ("silu", "swish", "gelu", "gelu_pytorch_tanh", "gelu_10"):
            return tr.save_input(x)                                    # SiluBackward / GeluBackward: input
        if kind in ("relu", "tanh", "sigmoid"):
            return tr.save_result(x)                                   # ReluBackward saves its result
        if kind == "quick_gelu":                                       # x * sigmoid(1.702 * x)
            sg = tr.save_result(tr.scalar_op(x))
            return tr.mul(x, sg)
        if kind == "gelu_fast":                                        # FastGELUActivation
            half = tr.scalar_op(x)                                     # 0.5 * input
            i1 = tr.scalar_op(x)                                       # input * 0.7978845608
            c = tr.scalar_op(x)                                        # 0.044715 * input
            d = tr.scalar_op(tr.mul(c, x), add=True)                   # 1.0 + c * input
            th = tr.scalar_op(tr.save_result(tr.mul(i1, d)), add=True)  # 1.0 + tanh(i1 * d)
            return tr.mul(half, th)
        # gelu_new / gelu_python_tanh / gelu_accurate and unknown kinds: NewGELUActivation's chain
        half = tr.scalar_op(x)                                         # 0.5 * input
        p3 = tr.scalar_op(tr.pow_(x))                                  # 0.044715 * pow(input, 3)
        inner = tr.scalar_op(tr.add(x, p3))                            # sqrt(2/pi) * (input + ...)
        th = tr.scalar_op(tr.save_result(inner), add=True)             # 1.0 + tanh(...)
        return tr.mul(half, th)

    def mlp(self, x: Tensor) -> Tensor:
        a, tr = self.a, self.tr
        h, i = a.hidden_size, a.intermediate_size
        if a.is_moe:
            return self.moe(x)
        if a.mlp == "gated":
            if a.fused_gate_up:
                gu = self.proj(x, h, 2 * i, "gate_up_proj")
                g, u = tr.split(gu, [gu.n // 2, gu.n // 2])
            else:
                g = self.proj(x, h, i, "gate_proj")
                u = self.proj(x, h, i, "up_proj")
            m = tr.mul(self.act(g), u)
            return self.proj(m, i, h, "down_proj")
        f = self.proj(x, h, i, "fc1")
        return self.proj(self.act(f), i, h, "fc2")

    def moe(self, x: Tensor) -> Tensor:
        """MixtralSparseMoeBlock with transformers v5's default grouped_mm experts (integrations/moe.py)."""
        a, tr = self.a, self.tr
        h, i, E, k = a.hidden_size, a.intermediate_size, a.num_experts, max(a.experts_per_token, 1)
        N = tr.N
        S = N * k
        logits = self.router_linear(x, h, E, tr.pdt)                   # router F.linear(x, weight)
        if self.router_softmax_dtype:
            probs = tr.save_result(logits, "f32")                      # softmax(router_logits, dtype=float)
        else:
            probs = tr.save_result(tr.cast(logits, "f32"))             # softmax(router_logits.float())
        idx = tr.new(N * k, "i64", False)                              # topk: TopkBackward saves indices
        tr.save(idx)
        top = tr.op(tr.new(N * k, "f32", probs.rg), [probs])           # backward: zeros + scatter
        if a.moe_norm_topk:
            tr.save(top, tr.new(N, "f32", probs.rg))                   # top /= top.sum(): DivBackward
            top = tr.op(tr.new(N * k, "f32", probs.rg), [top])
        if self.router_cast_back:
            top = tr.cast(top, logits.dt)                              # router_top_value.to(router_logits.dtype)
        return self.grouped_experts(x, top, i)

    def router_linear(self, x: Tensor, h: int, E: int, w_dt: str) -> Tensor:
        """The router's F.linear with a weight of dtype ``w_dt`` (a plain parameter module: no LoRA layer, no
        4-bit base). Adapted by PEFT (all-linear): the weight is W + (B @ A) * scaling, a new tensor that needs a
        gradient, so the mm saves the input and that weight (its autocast copy under autocast)."""
        tr = self.tr
        if "router" not in self.moe_lora:
            return tr.linear(x, h, E, self.layer_trainable, w_dt=w_dt)
        merged = tr.new(E * h, tr.pdt, True)                           # W + delta (the parameter's dtype)
        wd = tr.low if tr.autocast else w_dt
        used = merged if wd == merged.dt else tr.new(E * h, wd, True)  # .type(float32) / autocast's copy
        if x.rg:
            tr.save(used)
        return tr.linear(x, h, E, True, w_dt=wd)

    def merged_expert_weight(self, out_f: int, in_f: int, fused: int = 1) -> Tensor:
        """PEFT ParamWrapper on a 3-D expert weight, one adapter: ``baddbmm(W, lhs, rhs, alpha=scaling)`` with
        autocast off (_LoraFactorsProxy): a new E x out x in tensor in the parameter's dtype. The factors are
        cast to that dtype (``lhs.to(param.dtype)``): in 16 bit, copies baddbmm saves. ``fused``: projections
        fused in the weight (gate_up_proj: 2), each with its own rank-r adapter (rank fused * r, measured)."""
        a, tr = self.a, self.tr
        E, r = a.num_experts, self.rank * fused
        if tr.pdt != "f32":
            tr.save(tr.new(E * out_f * r, tr.pdt, True), tr.new(E * r * in_f, tr.pdt, True))
        return tr.new(E * out_f * in_f, tr.pdt, True)

    def grouped_experts(self, x: Tensor, top: Tensor, i: int) -> Tensor:
        """transformers v5's default experts forward (integrations/moe.py ``grouped_mm_experts_forward``) on the
        tokens ``x`` and their top-k routing weights ``top`` (N x k); ``i``: one expert's inner width."""
        a, tr = self.a, self.tr
        h, E, k = a.hidden_size, a.num_experts, max(a.experts_per_token, 1)
        N = tr.N
        S = N * k
        tr.save(tr.new(S, "i64", False), tr.new(S, "i64", False))     # sort perm; hidden_states[perm // k]
        tr.save(tr.new(E, "i32", False))                               # grouped_mm offsets (cumsum)
        sel = tr.op(tr.new(S * h, x.dt, x.rg), [x])                    # IndexBackward: zeros + index_put
        w_dt = tr.pdt
        sel = tr.cast(sel, w_dt)                                       # input.to(weight.dtype); no autocast
        train = self.layer_trainable
        # torch's grouped_mm (bf16 weights) saves its input iff the weight trains (derivatives.yaml _grouped_mm);
        # other dtypes take transformers' fallback op, whose setup_context saves input and weight whenever its
        # node exists, frozen experts (LoRA) included (integrations/moe.py _grouped_mm_fallback_setup_context)
        fallback = w_dt != "bf16"
        ad_gu, ad_down = "gate_up" in self.moe_lora, "down" in self.moe_lora
        w_gu = self.merged_expert_weight(2 * i, h, fused=2) if ad_gu else None
        if train or ad_gu or (fallback and sel.rg):
            tr.save(sel)                                               # grouped_mm saves input (and weight)
        if ad_gu and (sel.rg or fallback):
            tr.save(w_gu)                                              # the adapted weight, not a parameter
        gu = tr.op(tr.new(S * 2 * i, sel.dt, sel.rg or train or ad_gu), [sel])
        g, u = tr.split(gu, [S * i, S * i])
        m = tr.mul(self.act(g), u)
        m = tr.cast(m, w_dt)
        w_down = self.merged_expert_weight(h, i) if ad_down else None
        if train or ad_down or (fallback and m.rg):
            tr.save(m)
        if ad_down and (m.rg or fallback):
            tr.save(w_down)
        o = tr.op(tr.new(S * h, m.dt, m.rg or train or ad_down), [m])
        sw = tr.op(tr.new(S, top.dt, top.rg), [top])                   # sample_weights[perm]
        wo = tr.mul(o, sw)                                             # saves o and the weights
        tr.save(tr.new(S, "i64", False))                               # weighted_out[inv_perm] indices
        f = tr.op(tr.new(N * h, wo.dt, wo.rg), [wo])                   # view(...).sum(dim=1)
        return tr.cast(f, x.dt)

    # -- blocks ------------------------------------------------------------------------------------------
    def window(self) -> int | None:
        """The sliding window of the layer being replayed: the config's, unless its kind is full attention."""
        if self.kind == "full_attention":
            return None
        return self.a.sliding_window

    def enter(self, kind: str) -> None:
        """Start a decoder layer of ``kind``: its rope tables (``rope_per_layer_kind``)."""
        self.kind = kind
        if self.rope_tables:
            self.rope_cos, self.rope_sin = self.rope_tables[kind if self.rope_per_layer_kind else ""]

    def layer(self, x: Tensor, selective: bool) -> Tensor:
        """One decoder layer. Saved tensors are attributed to ``<term>|attn`` and ``<term>|mlp`` (the MLP
        half is freed first in backward)."""
        a, tr = self.a, self.tr
        base = tr.term
        train = self.layer_trainable
        hp = a.hidden_dropout
        tr.term = base + "|attn"
        att = self.attention(self.norm(x, train), selective)
        if self.sandwich_norm:                                         # Gemma-2 post_attention_layernorm
            att = self.norm(att, train)
        x2 = tr.add(x, tr.dropout(att, hp))
        tr.term = base + "|mlp"
        m = self.mlp(self.norm(x2, train))
        if self.sandwich_norm:                                         # post_feedforward_layernorm
            m = self.norm(m, train)
        tr.term = base
        return tr.add(x2, tr.dropout(m, hp))

    def embeddings(self, emb_trainable: bool, input_grads: bool = False) -> Tensor:
        """Token (and learned position) embeddings and their dropout. ``input_grads``: the token embedding's
        output requires grad though its weight is frozen (enable_input_require_grads' forward hook on
        get_input_embeddings(), which gradient checkpointing installs): the ops after it (the embedding
        dropout's mask) save what they save for a tensor that needs a gradient."""
        a, tr = self.a, self.tr
        N, h = tr.N, a.hidden_size
        ids = tr.new(N, "i64", False)
        if emb_trainable:
            tr.save(ids)                                               # EmbeddingBackward saves the indices
        e = tr.new(N * (a.word_embed_proj_dim or h), tr.pdt, emb_trainable or input_grads)
        if self.scaled_embedding:
            e = tr.mul(e, tr.new(1, tr.pdt, False))                    # * embed_scale (a 0-d tensor)
        if a.word_embed_proj_dim:                                      # OPT-350m project_in (bias-free)
            e = tr.linear(e, a.word_embed_proj_dim, h, emb_trainable)
        if a.position == "learned":
            pos_n = N if self.batch_position_ids else tr.s
            if emb_trainable:
                tr.save(tr.new(pos_n, "i64", False))                   # position ids of the learned table
            e = tr.add(e, tr.new(N * h, tr.pdt, emb_trainable))
        return tr.dropout(e, a.embedding_dropout)

    def make_rope_cache(self, layer_kinds: tuple[str, ...] = ()) -> None:
        """The rotary tables of the layers (``layer_kinds``: of the replayed layers, default the model's)."""
        a, tr = self.a, self.tr
        if a.position != "rope":
            return
        d = a.qk_rope_head_dim or a.head_dim                            # MLA: rope on qk_rope_head_dim only
        rot = max(1, int(d * a.rotary_pct))
        # rotary_emb(hidden_states, position_ids): (1, s, rot) in the embeddings' dtype, shared by all layers (of a
        # kind, with rope_per_layer_kind: one pair per layer type of the whole model, sorted as Gemma-3 does)
        kinds = sorted(set(layer_kinds or a.layer_kinds)) if self.rope_per_layer_kind else [""]
        for kind in kinds:
            cos, sin = tr.new(tr.s * rot, tr.pdt, False), tr.new(tr.s * rot, tr.pdt, False)
            tr.owner[cos.sid] = tr.owner[sin.sid] = "rope_cache"
            self.rope_tables[kind] = (cos, sin)
        self.rope_cos, self.rope_sin = self.rope_tables[kinds[0]]

    def rope_storages(self) -> list[Tensor]:
        """Every rotary table (alive in the layers' kwargs under checkpointing)."""
        return [t for pair in self.rope_tables.values() for t in pair]

    def head(self, x: Tensor, final_trainable: bool, lm_trainable: bool) -> tuple[Tensor, Tensor]:
        """Final norm, lm_head and ForCausalLMLoss. Returns the logits tensor (held by the caller's output) and
        the loss."""
        a, tr = self.a, self.tr
        tr.term = "final_norm"
        if a.final_norm:
            x = self.norm(x, final_trainable)
        width = a.hidden_size
        if a.word_embed_proj_dim:                                       # OPT-350m project_out
            x = tr.linear(x, width, a.word_embed_proj_dim, final_trainable)
            width = a.word_embed_proj_dim
        tr.term = "logits_and_loss"
        loss_kind = getattr(self.t, "loss", "plain")
        if loss_kind == "fused-linear":
            return None, self.fused_linear_loss(x, width, lm_trainable)
        if loss_kind == "chunked":
            return None, self.chunked_loss(x, width, lm_trainable)
        if loss_kind == "trl-head":
            return None, self.trl_head_loss(x, width, lm_trainable)
        logits = self.head_linear(x, width, lm_trainable)
        if loss_kind == "legacy-inline":
            return self.legacy_inline_loss(logits)
        held = logits
        before = tr.bytes_of("logits_and_loss")
        loss = self.cross_entropy(logits, tr.N if tr.b > 1 else tr.s + 1)
        if self.lora_head:
            # issue 17: the LoRA'd head's forward moment above the end-of-forward saved set, which the loss's
            # saves (made after it) are part of (measured: benchmarks/loss_kernels.py --lora-head)
            self.head_moment(self.branch_live - (tr.bytes_of("logits_and_loss") - before))
        return held, loss

    def head_moment(self, above: int) -> None:
        """A forward moment of the head ``above`` bytes over the end-of-forward saved set (``forward_end``)."""
        self.forward_moment = max(getattr(self, "forward_moment", 0), above)

    def head_linear(self, x: Tensor, width: int, lm_trainable: bool) -> Tensor:
        """The lm_head on ``x`` (one loss chunk or all tokens): a plain linear, or PEFT's lora.Linear when the
        head is a LoRA target (issue 17): the frozen base logits plus the adapter's vocabulary-sized output."""
        tr, V = self.tr, self.a.vocab_size
        self.branch_live = 0
        if self.quantized_head:
            # bitsandbytes 0.42.0 (litgpt's pin) MatMul4Bit.forward keeps its input when it requires grad
            # (autograd/_functions.py ``ctx.tensors = (A, B)``), as the decoder's 4-bit linears (proj); the
            # dequantized weight is a transient (activation_memory: info:qlora_dequantized_lm_head)
            if x.rg:
                tr.save(x)
            base = tr.linear(x, width, V, False)
            return self.lora_branch(x, base, width, V) if self.lora_head else base
        if not self.lora_head:
            return tr.linear(x, width, V, lm_trainable)
        return self.lora_branch(x, tr.linear(x, width, V, False), width, V)

    def cross_entropy(self, logits: Tensor, labels: int) -> Tensor:
        """transformers ForCausalLMLoss on ``logits``: (soft-capping,) ``.float()``, log_softmax (saves its
        fp32 result), nll_loss (saves the targets and total_weight)."""
        a, tr = self.a, self.tr
        if a.final_logit_softcapping:                                  # logits / cap; tanh; * cap
            logits = tr.scalar_op(tr.save_result(tr.scalar_op(logits)))
        lf = tr.cast(logits, "f32")                                    # logits.float()
        lp = tr.save_result(lf)                                        # log_softmax saves its fp32 result
        tr.save(tr.new(labels, "i64", False), tr.new(1, "f32", False))  # nll_loss: target, total_weight
        # NllLossBackward: a zero N x V fp32 gradient scattered at the targets
        return tr.op(tr.new(1, "f32", lp.rg), [lp])

    def legacy_inline_loss(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The loss transformers <= 4.45 computed inside ``LlamaForCausalLM.forward`` (v4.37.2
        src/transformers/models/llama/modeling_llama.py; every causal LM alike): ``logits = logits.float()``,
        which the returned output holds; ``shift_logits = logits[..., :-1, :].contiguous()`` (a slice, whose
        backward allocates a zero fp32 gradient of all the logits, and a copy that dies when the forward
        returns); ``CrossEntropyLoss`` on it (log_softmax saves its fp32 result). Returns (held fp32 logits,
        loss). Measured against a recorded step: benchmarks/allocator_sequence.py --compare-loss."""
        a, tr = self.a, self.tr
        if a.final_logit_softcapping:                                  # logits / cap; tanh; * cap
            logits = tr.scalar_op(tr.save_result(tr.scalar_op(logits)))
        lf = tr.cast(logits, "f32")
        rows = tr.N - tr.b                                             # (s - 1) positions per sequence
        sliced = tr.view(lf, rows * a.vocab_size)
        shift = tr.op(tr.new(rows * a.vocab_size, "f32", sliced.rg), [sliced], "alias")   # .contiguous()
        lp = tr.save_result(shift)
        tr.save(tr.new(rows, "i64", False), tr.new(1, "f32", False))   # nll_loss: target, total_weight
        return lf, tr.op(tr.new(1, "f32", lp.rg), [lp])

    def chunked_loss(self, x: Tensor, width: int, lm_trainable: bool) -> Tensor:
        """torchtune ``CEWithChunkedOutputLoss`` (torchtune/modules/loss/ce_chunked_output_loss.py, default
        ``num_output_chunks=8``): the decoder applies the output projection to each of C sequence chunks
        (``h.tensor_split(C, dim=1)``), the loss upcasts and cross-entropies one chunk at a time; the recipe
        deletes the logits list before backward (``del logits``), so no logits are held in backward and each
        chunk's backward runs alone. Eager mode (uncompiled): every chunk's log_softmax saves its fp32 result."""
        tr = self.tr
        C = max(1, min(self.t.loss_chunks, tr.s))
        rows = [tr.s // C + (1 if i < tr.s % C else 0) for i in range(C)]     # tensor_split sizes
        parts = tr.split(x, [r * tr.b * width for r in rows])
        loss = None
        before = tr.bytes_of("logits_and_loss")
        moments = []
        for r, xc in zip(rows, parts):
            lc = self.head_linear(xc, width, lm_trainable)
            # the decoder applies the head to every chunk before the loss runs (torchtune's chunked output,
            # litgpt's lm_head_chunk_size): a LoRA'd head's chunk moment holds the earlier chunks' logits
            moments.append(sum(tr.size[sid] for sid in self.forward_held) + self.branch_live)
            self.forward_held.append(lc.sid)                           # the list lives until `del logits`
            lo = self.cross_entropy(lc, r * tr.b)
            loss = lo if loss is None else tr.add(loss, lo)            # total_loss += ...
        if self.lora_head:   # the losses' saves (all made after the heads) are in the end-of-forward set
            self.head_moment(max(moments) - (tr.bytes_of("logits_and_loss") - before))
        return tr.scalar_op(loss)                                      # / total_elements

    def trl_head_loss(self, x: Tensor, width: int, lm_trainable: bool) -> Tensor:
        """TRL >= 1.16's fused LM head (trl/trainer/utils.py ``add_fused_lm_head``, run by SFTTrainer.compute_loss
        with ``fused_lm_head=True``): ``ChunkedLogProbFunction`` (trl/kernels/chunked_logprob.py) over the scored
        rows ``hidden[mask]`` (a copy, in the hidden states' dtype) in tiles of 4096 tokens x 32768 vocabulary
        columns in the compute dtype (autocast's, else the input's); no N x V tensor, no logits returned. Saved:
        that copy, the int64 targets, the fp32 log-normalizer and entropy per token. Forward transient: one tile,
        the hidden / weight chunks cast to the compute dtype, seven fp32 per-token statistics. Backward: the tile
        and casts again, an fp32 N x h input gradient (cast to the input's dtype), and an fp32 V x h weight
        gradient accumulated before its cast to the weight's dtype (with fp32 weights it is the parameter's
        gradient, counted with the gradients). Measured: benchmarks/trl_loss.py (exact under CUDA semantics)."""
        a, tr = self.a, self.tr
        if self.lora_head:   # refused before: TRL's SFTTrainer raises on a PEFT adapter on lm_head
            raise ValueError("trl-head loss with LoRA on the lm_head")
        V, N = a.vocab_size, tr.N
        c = tr.low if tr.autocast else x.dt                             # compute_dtype
        tr.save(tr.new(N * width, x.dt, False), tr.new(N, "i64", False),  # hidden[mask], targets
                tr.new(N, "f32", False), tr.new(N, "f32", False))        # log_z, entropy
        rows, cols = min(N, 4096), min(V, 32768)
        tile = rows * cols * BYTES[c]                                   # mm_buf
        casts = (rows * width * BYTES[c] if x.dt != c else 0) + (cols * width * BYTES[c] if tr.pdt != c else 0)
        self.forward_transient = max(getattr(self, "forward_transient", 0), tile + casts + 28 * N)
        temp = tile + casts + (4 * N * width if x.dt != "f32" else 0) \
            + (4 * V * width if lm_trainable and tr.pdt != "f32" else 0)
        return tr.op(tr.new(N, "f32", x.rg or lm_trainable), [x], "new", temp=temp, leaf=lm_trainable)

    def fused_linear_loss(self, x: Tensor, width: int, lm_trainable: bool) -> Tensor:
        """Liger ``LigerFusedLinearCrossEntropyFunction`` (src/liger_kernel/ops/fused_linear_cross_entropy.py):
        the forward loops over token chunks of ``next_pow2(ceil(N / ceil(V / h)))`` rows (transient logits
        ≈ N x h), computes each chunk's loss and logits gradient in place, and accumulates ``grad_input``
        (``zeros_like(input)``) and ``grad_weight`` (``zeros_like(weight)``, when the head trains), which it
        saves for backward; backward only scales them by the incoming gradient. No N x V tensor exists and the
        model returns no logits."""
        a, tr = self.a, self.tr
        if self.lora_head:   # refused before (advisor.param_count.check_lora_head): Liger skips the adapter
            raise ValueError("fused-linear loss with LoRA on the lm_head")
        V, N = a.vocab_size, tr.N
        inc = -(-V // width)
        chunk = min(1 << max(0, (-(-N // inc) - 1).bit_length()), N)
        xin = tr.ac_low(x)
        saved = []
        if x.rg or lm_trainable:
            saved.append(tr.new(xin.n, xin.dt, False))                  # grad_input
            if lm_trainable:
                saved.append(tr.new(V * width, tr.pdt, False))          # grad_weight
        tr.save(*saved)
        loss_1d = tr.new(N, "f32", False)                               # per-token losses (not saved)
        logits_chunk = chunk * V * BYTES[xin.dt]                       # freed chunk by chunk in the forward
        self.forward_transient = max(getattr(self, "forward_transient", 0), logits_chunk + loss_1d.nbytes)
        # backward: element_mul of the saved grad_input (in place), handed on as the input's gradient
        return tr.op(tr.new(1, "f32", x.rg or lm_trainable), [xin], "new", leaf=lm_trainable)
