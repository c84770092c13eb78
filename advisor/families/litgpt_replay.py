"""litgpt's own model code, replayed (``--model-code litgpt``): what ``litgpt.lora.GPT`` / ``litgpt.model.GPT`` save.

litgpt does not run transformers' modeling files: one ``GPT`` class (litgpt/model.py, litgpt/lora.py at commit
fd71063c, version 0.4.5, the config_hub commit of the published litgpt points) runs every family, switched by its
``Config`` (norm class, MLP class, parallel residual, rotary fraction, ...). Its forward differs from
transformers' + PEFT's in what autograd keeps (measured on litgpt's real code: ``benchmarks/litgpt_saved.py``):

* ``RMSNorm.forward``: ``x.float()``, ``x * rsqrt(mean(x*x) + eps)``, then ``(x_normed * weight.float()).to(dtype)``:
  the fp32 x and the rsqrt (as transformers), plus the fp32 x_normed when the weight trains (full fine-tuning).
* ``CausalSelfAttention``: one fused ``attn`` linear for q, k, v whatever the checkpoint; grouped k and v are
  ``expand``-ed to all heads before SDPA (``k.expand(...)``, ``reshape``): SDPA saves H-head k and v; q and k end in
  ``torch.cat((roped, pass))`` (new tensors); the rope cache is fp32 (``model.max_seq_length = ...`` rebuilds it
  in fp32 in finetune/*.py); the SDPA output is re-assembled with ``reshape`` (a copy: its layout follows q's).
* ``LoRALinear``: ``pretrained + (dropout(x) @ A.T @ B.T) * scaling`` with adapters in the model dtype (bf16-true:
  bf16), no cast of x; ``LoRAQKVLinear``: one dropout and one ``lora_A`` over the fused projection for every
  enabled q/k/v part (lora_A of ``r * parts`` rows), ``conv1d`` for lora_B, ``zero_pad`` (``new_zeros`` +
  ``index_copy_``) when not all of q, k, v are adapted. LoRA switches are per kind: query/key/value/projection/
  mlp (every MLP linear)/head.
* ``LLaMAMLP``: ``silu(fc_1(x)) * fc_2(x)``; ``GemmaMLP``: tanh-GELU; ``GptNeoxMLP``: one ``F.gelu`` kernel
  (``approximate=config.gelu_approximate``), which saves only its input.
* no dropout but LoRA's; the head of finetune/lora.py: ``lm_head`` applied per 128-token chunk
  (``lm_head_chunk_size=128``); lightning's ``_FabricModule`` casts the returned chunks to fp32
  (``precision.convert_output``: :meth:`LitgptReplay.fabric_output`), then ``chunked_cross_entropy`` on the fp32
  chunk logits (log_softmax saves its fp32 result); finetune/full.py: the whole logits, cast to fp32 the same
  way, then ``chunked_cross_entropy`` in 128-row chunks.
"""

from __future__ import annotations

from advisor.architecture import Architecture
from advisor.memory.symbolic import Tensor

from .replay import DecoderReplay

# litgpt finetune/lora.py ``model(input_ids, lm_head_chunk_size=128)`` and utils.chunked_cross_entropy's default
# ``chunk_size=128`` (both at fd71063c)
LM_HEAD_CHUNK = 128

# dsadvise's normalized linear names -> litgpt's LoRA switch (litgpt/lora.py Config: lora_query, ...)
_SWITCH = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "qkv_proj": "qkv", "o_proj": "projection"}
_MLP = frozenset({"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2"})


def litgpt_lora_switches(arch: Architecture, targets) -> dict[str, bool]:
    """litgpt's lora_query/key/value/projection/mlp switches for the LoRA targets ``targets`` (as given: normalized
    or native names; q_proj / k_proj / v_proj name a part of litgpt's fused ``attn`` whatever the checkpoint's
    layout). ValueError when the targets name some MLP linears but not all (litgpt's ``lora_mlp`` adapts every
    one)."""
    from advisor import param_count as pc

    from .replay import _lora_linear_names

    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    names = _lora_linear_names(arch, targets) | {t for t in targets if t in ("q_proj", "k_proj", "v_proj")}

    mlp_all = {n for n in pc.linear_shapes(arch) if n in _MLP}
    mlp = names & _MLP
    if mlp and mlp != mlp_all:
        raise ValueError(f"litgpt's lora_mlp adapts every MLP linear ({', '.join(sorted(mlp_all))}); the targets "
                         f"name {', '.join(sorted(mlp))} only")
    qkv = "qkv_proj" in names
    return {"query": qkv or "q_proj" in names, "key": qkv or "k_proj" in names, "value": qkv or "v_proj" in names,
            "projection": "o_proj" in names, "mlp": bool(mlp)}


class LitgptReplay(DecoderReplay):
    """litgpt's GPT forward on symbolic tensors (see the module docstring); the family's quirks come from ``arch``
    and the family's own replay class attributes (Gemma's unit-offset norm and scaled embeddings, Gemma-2's post
    norms)."""

    def __init__(self, arch: Architecture, training, tr, layer_trainable: bool):
        super().__init__(arch, training, tr, layer_trainable)
        from advisor.families import REPLAYED_FAMILIES, family

        fam = family(arch.family).replay if arch.family in REPLAYED_FAMILIES else None
        self.gemma_norm = bool(getattr(fam, "gemma_norm", False))
        self.scaled_embedding = bool(getattr(fam, "scaled_embedding", False))
        self.sandwich_norm = bool(getattr(fam, "sandwich_norm", False))
        self.switch = (litgpt_lora_switches(arch, training.lora.target_modules)
                       if training.method in ("lora", "qlora") else {})
        # QLoRA: (term, storage) of the inputs bitsandbytes 0.42 keeps in ctx.tensors
        self.prev_graph_inputs: list[tuple[str, int]] = []

    # -- LoRA -----------------------------------------------------------------------------------------------
    def _base(self, x: Tensor, n_in: int, n_out: int, trainable: bool) -> Tensor:
        """The frozen (or, full fine-tuning, trainable) base linear. QLoRA: lightning's ``_NF4Linear`` runs
        bitsandbytes 0.42.0 ``MatMul4Bit``, which keeps its input (``ctx.tensors = (A, B)``) whenever it needs a
        gradient; kept in a Python attribute of ctx, it lives as long as the graph, which litgpt's loop holds
        through ``loss`` until the next micro-step's loss replaces it (``prev_graph_inputs``)."""
        tr = self.tr
        if self.method == "qlora":
            if x.rg:
                tr.save(x)
                self.prev_graph_inputs.append((tr.term.split("|")[0], x.sid))
            return tr.linear(x, n_in, n_out, False)
        return tr.linear(x, n_in, n_out, trainable)

    def _adapter(self, x: Tensor, n_in: int, rank_rows: int) -> Tensor:
        """``dropout(x) @ lora_A.T`` (or ``F.linear(dropout(x), lora_A)``): nn.Dropout saves its bool mask and
        the matmul the dropped copy (x itself without dropout), in the model dtype; returns lora_A's output."""
        tr = self.tr
        xd = tr.dropout(x, self.t.lora.dropout)
        return tr.linear(xd, n_in, rank_rows, True)

    def lora_linear(self, x: Tensor, n_in: int, n_out: int, adapted: bool) -> Tensor:
        """litgpt ``LoRALinear.forward``: ``pretrained + (dropout(x) @ A.T @ B.T) * scaling``."""
        tr = self.tr
        base = self._base(x, n_in, n_out, self.method == "full" and self.layer_trainable)
        if not adapted:
            return base
        a = self._adapter(x, n_in, self.rank)
        bo = tr.linear(a, self.rank, n_out, True)                     # @ lora_B.T saves lora_A's output
        return tr.add(base, tr.scalar_op(bo))

    def qkv_linear(self, x: Tensor, n_in: int, widths: tuple[int, int, int]) -> Tensor:
        """litgpt ``LoRAQKVLinear.forward`` over the fused q, k, v projection (``widths``: their output widths)."""
        tr = self.tr
        out_w = sum(widths)
        base = self._base(x, n_in, out_w, self.method == "full" and self.layer_trainable)
        enabled = [self.switch.get(k, False) for k in ("query", "key", "value")]
        if not any(enabled):
            return base
        parts = sum(enabled)
        a = self._adapter(x, n_in, self.rank * parts)                  # F.linear(dropout(x), lora_A)
        # conv1d(after_A.transpose(-2, -1), lora_B.unsqueeze(-1)): saves its input, a view of after_A (the
        # ``chunk`` pieces under grouped queries are views too); output (B, C_out, T), transposed back (a view)
        tr.save(a)
        en_w = sum(w for w, e in zip(widths, enabled) if e)
        bo = tr.op(tr.new(tr.N * en_w, a.dt, True), [a], "newview", leaf=True)
        if parts < 3:
            # zero_pad: new_zeros(...).index_copy_(-1, lora_ind, after_B): IndexCopyBackward keeps the source
            # (derivatives.yaml index_copy: ``grad.index_select(dim, index).expand_as(source)``; measured)
            tr.save(bo)
            bo = tr.op(tr.new(tr.N * out_w, bo.dt, True), [bo], "new")
        return tr.add(base, tr.scalar_op(bo))

    # -- blocks ---------------------------------------------------------------------------------------------
    def norm(self, x: Tensor, trainable: bool, width: int | None = None) -> Tensor:
        """litgpt ``RMSNorm`` (fp32 path, ``.to(dtype)`` at the end) or ``torch.nn.LayerNorm``."""
        a, tr = self.a, self.tr
        h = width or a.hidden_size
        if a.norm == "layernorm":
            return tr.layer_norm(x, h, trainable and a.norm_affine)
        hf = tr.cast(x, "f32")                                      # x.float()
        var = tr.mean(tr.mul(hf, hf), h)                            # torch.mean(x * x): saves x (fp32)
        r = tr.save_result(tr.scalar_op(var, add=True))             # rsqrt(norm_x + eps)
        n = tr.mul(hf, r)                                           # saves x and the rsqrt
        w = tr.param(h, trainable)
        if self.gemma_norm:                                         # (1 + self.weight): a new tensor
            w = tr.op(tr.new(h, w.dt, trainable), [w], "alias") if trainable else tr.new(h, w.dt, False)
        wf = tr.new(h, "f32", trainable) if trainable or w.dt != "f32" else w   # weight.float()
        o = tr.mul(n, wf)                                           # saves weight.float(); x_normed iff w trains
        return tr.cast(o, x.dt)                                     # .to(dtype=dtype)

    def attention(self, x: Tensor, selective: bool) -> Tensor:
        a, tr = self.a, self.tr
        h, H, KV, d = a.hidden_size, a.num_attention_heads, a.num_key_value_heads, a.head_dim
        b, s, N = tr.b, tr.s, tr.N
        qkv = self.qkv_linear(x, h, (H * d, KV * d, KV * d))
        # view (B, T, G, q_per_kv + 2, hs), permute, split; grouped k/v expanded to H heads; reshape: copies
        q, k, v = tr.split(qkv, [N * H * d, N * KV * d, N * KV * d])
        kv_heads = H if KV != H else KV
        q = tr.op(tr.new(N * H * d, q.dt, q.rg), [q], "new")
        k = tr.op(tr.new(N * kv_heads * d, k.dt, k.rg), [k], "new")
        if KV in (1, H):
            # v.reshape(B, -1, T, hs) of the permuted qkv view is itself a view when one head dimension is 1 (MHA:
            # no expand; MQA: the expanded group merges with stride 0): SDPA then keeps the whole qkv output alive
            v = tr.view(qkv, N * H * d, how="new")
        else:
            v = tr.op(tr.new(N * kv_heads * d, v.dt, v.rg), [v], "new")   # grouped: expand + reshape copies
        q, k = self.rope_litgpt(q, kv_heads=H), self.rope_litgpt(k, kv_heads=kv_heads)
        y = self.litgpt_core(q, k, v, kv_heads)
        # y.transpose(1, 2).reshape(B, T, C): a copy (the output's layout follows q's (B, H, T, hs))
        y = tr.op(tr.new(N * H * d, y.dt, y.rg), [y], "view")
        return self.lora_linear(y, H * d, h, self.switch.get("projection", False))

    def rope_litgpt(self, q: Tensor, kv_heads: int) -> Tensor:
        """``apply_rope(q[..., :n_elem], cos, sin)`` with the fp32 cache, ``.to(x.dtype)``, then
        ``torch.cat((roped, q[..., n_elem:]))``: a new tensor; x * cos saves cos only (a buffer)."""
        a, tr = self.a, self.tr
        d = a.head_dim
        rot = max(1, int(d * a.rotary_pct))
        part = q if rot == d else tr.view(q, q.n * rot // d)
        c1 = tr.mul(part, self.rope_cos)                             # bf16 * fp32 -> fp32
        x1, x2 = tr.view(part, part.n // 2), tr.view(part, part.n // 2)
        rh = tr.cat([tr.scalar_op(x2), x1])                          # cat((-x2, x1))
        c2 = tr.mul(rh, self.rope_sin)
        e = tr.cast(tr.add(c1, c2), q.dt)                            # roped.to(dtype=x.dtype)
        rest = [] if rot == d else [tr.view(q, q.n - part.n)]
        return tr.cat([e, *rest])

    def litgpt_core(self, q: Tensor, k: Tensor, v: Tensor, kv_heads: int) -> Tensor:
        """``scaled_dot_product_attention``: SDPA (flash: q, k, v, out, fp32 logsumexp; with the sliding-window
        mask litgpt builds, the memory-efficient kernel, which keeps the mask too), or, with
        ``attention_logit_softcapping`` (Gemma-2), litgpt's eager path: ``q @ k.mT * scale``, tanh soft-capping,
        ``+ mask``, ``softmax(dtype=float).to(q.dtype)``, ``@ v``."""
        a, tr = self.a, self.tr
        H, d, b, s = a.num_attention_heads, a.head_dim, tr.b, tr.s
        n = b * H * s * d
        rg = q.rg or k.rg or v.rg
        if a.attn_logit_softcapping:
            if k.rg:
                tr.save(q)
            if q.rg:
                tr.save(k)
            sc = tr.op(tr.new(b * H * s * s, q.dt, rg), [q, k], "newview")
            sc = tr.scalar_op(sc)                                   # * scale
            sc = tr.scalar_op(tr.save_result(tr.scalar_op(sc)))      # tanh(scores / cap) * cap
            sc = tr.add(sc, tr.new(s * s, q.dt, False))              # + mask (an input no op saves)
            p = tr.cast(tr.save_result(sc, "f32"), q.dt)             # softmax(dtype=float).to(q.dtype)
            if v.rg:
                tr.save(p)
            if p.rg:
                tr.save(v)
            out = tr.op(tr.new(n, p.dt, p.rg or v.rg), [p, v], "newview")
            return out
        out = tr.new(n, q.dt, rg)
        if rg:
            tr.save(q, k, v, out, tr.new(b * H * s, "f32", False))
            if self.window_mask_litgpt():
                tr.save(tr.new(s * s, q.dt, False))                  # attn_bias kept by the efficient kernel
        return tr.op(out, [q, k, v])

    def window_mask_litgpt(self) -> bool:
        """litgpt builds a (T, T) mask on layers with ``sliding_window_size`` (the config's sliding window)."""
        return self.a.sliding_window is not None

    def act(self, x: Tensor) -> Tensor:
        """litgpt's MLP activations are single kernels: F.silu, F.gelu (exact or tanh): they save their input."""
        return self.tr.save_input(x)

    def mlp(self, x: Tensor) -> Tensor:
        a, tr = self.a, self.tr
        h, i = a.hidden_size, a.intermediate_size
        ad = self.switch.get("mlp", False)
        if a.mlp == "gated":                                         # LLaMAMLP / GemmaMLP
            f1 = self.lora_linear(x, h, i, ad)
            f2 = self.lora_linear(x, h, i, ad)
            m = tr.mul(self.act(f1), f2)
            return self.lora_linear(m, i, h, ad)
        f = self.lora_linear(x, h, i, ad)                            # GptNeoxMLP
        return self.lora_linear(self.act(f), i, h, ad)

    def layer(self, x: Tensor, selective: bool) -> Tensor:
        """litgpt ``Block.forward`` (non-parallel or parallel residual, shared attention norm, Gemma-2's post
        norms)."""
        a, tr = self.a, self.tr
        base, train = tr.term, self.layer_trainable
        tr.term = base + "|attn"
        n1 = self.norm(x, train)
        att = self.attention(n1, selective)
        if self.sandwich_norm:
            att = self.norm(att, train)                              # post_attention_norm
        # one norm per layer feeding both branches is litgpt's shared_attention_norm, a parallel block (phi-2;
        # transformers' Phi sets no parallel_residual flag, its PhiDecoderLayer is parallel)
        if a.parallel_residual or a.norms_per_layer == 1:
            tr.term = base + "|mlp"
            n2 = n1 if a.norms_per_layer == 1 else self.norm(x, train)
            m = self.mlp(n2)
            tr.term = base
            return tr.add(tr.add(m, att), x)                         # mlp(x_normed) + attention_output + x
        x2 = tr.add(att, x)
        tr.term = base + "|mlp"
        m = self.mlp(self.norm(x2, train))
        if self.sandwich_norm:
            m = self.norm(m, train)                                  # post_mlp_norm
        tr.term = base
        return tr.add(m, x2)

    def embeddings(self, emb_trainable: bool, input_grads: bool = False) -> Tensor:
        """``transformer.wte(idx)`` (``* n_embd ** 0.5`` with scale_embeddings): no dropout."""
        a, tr = self.a, self.tr
        ids = tr.new(tr.N, "i64", False)
        if emb_trainable:
            tr.save(ids)
        e = tr.new(tr.N * a.hidden_size, tr.pdt, emb_trainable or input_grads)
        if self.scaled_embedding:
            e = tr.scalar_op(e)
        return e

    def make_rope_cache(self, layer_kinds: tuple[str, ...] = ()) -> None:
        """``build_rope_cache``: (T, n_elem) fp32 cos and sin (rebuilt by ``model.max_seq_length = ...``)."""
        a, tr = self.a, self.tr
        rot = max(1, int(a.head_dim * a.rotary_pct))
        cos, sin = tr.new(tr.s * rot, "f32", False), tr.new(tr.s * rot, "f32", False)
        tr.owner[cos.sid] = tr.owner[sin.sid] = "rope_cache"
        self.rope_tables[""] = (cos, sin)
        self.rope_cos, self.rope_sin = cos, sin

    # -- head -----------------------------------------------------------------------------------------------
    def head(self, x: Tensor, final_trainable: bool, lm_trainable: bool):
        """finetune/lora.py: ``ln_f``, ``lm_head`` per 128-token chunk, ``chunked_cross_entropy`` over the list
        (the last chunk sliced ``[..., :-1, :]``); finetune/full.py: the whole logits, sliced, reshaped (a copy
        when b > 1) and cross-entropied in 128-row chunks. Both receive the logits through Fabric's
        ``convert_output`` in fp32 (:meth:`fabric_output`). The logits stay referenced by the loop's ``logits``
        (held); log_softmax saves each chunk's fp32 result."""
        a, tr = self.a, self.tr
        V, h = a.vocab_size, a.hidden_size
        tr.term = "final_norm"
        x = self.norm(x, final_trainable)
        tr.term = "logits_and_loss"
        self.branch_live = 0
        if self.method == "full":
            logits = self.lora_linear(x, h, V, False) if lm_trainable else tr.linear(x, h, V, False)
            logits = self.fabric_output([logits])[0]
            rows = tr.N - tr.b
            sl = tr.view(logits, rows * V)
            if tr.b > 1:                                                # reshape(-1, V) of the slice: a copy
                sl = tr.op(tr.new(rows * V, sl.dt, sl.rg), [sl], "view")
            chunks = [min(LM_HEAD_CHUNK, rows - i) for i in range(0, rows, LM_HEAD_CHUNK)]
            loss = None
            # targets[..., 1:].reshape(-1).split(128): views of one storage (a copy of b x (s-1) when b > 1)
            shared = tr.new(tr.s if tr.b == 1 else rows, "i64", False)
            for c, part in zip(chunks, tr.split(sl, [c * V for c in chunks])):
                lo = self.litgpt_ce(part, c, shared)
                loss = lo if loss is None else tr.add(loss, lo)
            return logits, self._mean(loss)
        loss = None
        rows_per = [min(LM_HEAD_CHUNK, tr.s - i) for i in range(0, tr.s, LM_HEAD_CHUNK)]
        parts = tr.split(x, [r * tr.b * h for r in rows_per])
        head_lora = self.lora_head
        # model(...) applies the head to every chunk (a list comprehension), then the loss runs over the list
        chunk_logits = self.fabric_output([self._head_chunk(xc, h, V, head_lora) for xc in parts])
        held_sids = [lc.sid for lc in chunk_logits]
        last = chunk_logits[-1]
        shared = tr.new(tr.s, "i64", False) if tr.b == 1 else None      # the chunks' targets: views of one row
        for j, (r, lc) in enumerate(zip(rows_per, chunk_logits)):
            rows = r * tr.b
            if j == len(rows_per) - 1:                                  # logits[-1][..., :-1, :]
                rows = (r - 1) * tr.b
                lc = tr.view(lc, rows * V)
                if tr.b > 1:                                            # reshape(-1, V) of the slice: a copy
                    lc = tr.op(tr.new(rows * V, lc.dt, lc.rg), [lc], "view")
            lo = self.litgpt_ce(lc, rows, shared)
            loss = lo if loss is None else tr.add(loss, lo)
        # the loop's ``logits`` list holds every chunk through the backward (the last one is returned as held)
        self.held_more = [sid for sid in held_sids[:-1]]
        return last, self._mean(loss)

    def fabric_output(self, outs: list[Tensor]) -> list[Tensor]:
        """What litgpt's loop receives from ``model(...)``: finetune/*.py call the model through lightning's
        ``_FabricModule`` (``fabric.setup_module``), whose ``forward`` returns ``precision.convert_output(output)``
        (lightning/fabric/wrappers.py; read in 2.3.0 and in b19c3a96 (2024-03-04), litgpt's pin when the
        config_hub LoRA values were first published in March 2024; the automated table of April 2024, litgpt
        43c44323, pinned 2.3.0.dev20240328, between the two, and printed the same values): every floating tensor
        of the output cast to ``torch.get_default_dtype()``, fp32 once the plugin's ``forward_context`` (default
        dtype bf16) has exited (HalfPrecision, BitsandbytesPrecision,
        FSDPPrecision ``convert_output``, all ``apply_to_collection(..., _convert_fp_tensor, dst_type=
        torch.get_default_dtype())``). So the loop holds fp32 logits and the loss runs on them. The 16-bit
        outputs stay referenced by the output list until ``apply_to_collection`` has built the new one, then
        nothing keeps them (ToCopyBackward saves nothing). Measured on the real wrapper by
        ``benchmarks/litgpt_saved.py`` (it runs the model through ``_FabricModule``)."""
        tr = self.tr
        out = [tr.cast(t, "f32") for t in outs]
        if tr.events is not None:
            end = len(tr.events)
            for t in outs:                                              # the old list, alive until the new exists
                if t.dt != "f32":
                    tr.last_use[t.sid] = max(tr.last_use.get(t.sid, 0), end)
        return out

    def _mean(self, loss: Tensor) -> Tensor:
        """``torch.cat(loss_chunks).sum() / non_masked_elems.maximum(torch.ones_like(non_masked_elems))``: DivBackward
        keeps the int64 denominator."""
        tr = self.tr
        tr.save(tr.new(1, "i64", False))
        return tr.scalar_op(loss)

    def _head_chunk(self, xc: Tensor, h: int, V: int, adapted: bool) -> Tensor:
        """The lm_head (``LoRALinear``; NF4 under lightning QLoRA) on one chunk."""
        saved_before = self.layer_trainable
        self.layer_trainable = False
        out = self.lora_linear(xc, h, V, adapted)
        self.layer_trainable = saved_before
        return out

    def litgpt_ce(self, logits: Tensor, rows: int, targets: Tensor | None = None) -> Tensor:
        """``F.cross_entropy(chunk, targets, reduction='none')`` on the logits (fp32 from Fabric's
        ``convert_output``): log_softmax saves its result in the logits' dtype; nll_loss saves the targets and
        total_weight. ``targets``: a storage the chunk's targets are a view of (micro batch 1: ``targets[..., 1:]``
        reshaped and split are views of the whole int64 row)."""
        tr = self.tr
        lp = tr.save_result(logits)
        tgt = targets if targets is not None else tr.new(rows, "i64", False)
        tr.save(tgt, tr.new(1, lp.dt, False))                           # targets; total_weight in the input dtype
        return tr.op(tr.new(rows, lp.dt, lp.rg), [lp])


# ------------------------------------------------------------------------------------ what --model-code litgpt runs
def check_model_code(arch: Architecture, training, strategy) -> None:
    """Refuse, in one line (InputError), a ``--model-code litgpt`` run that litgpt's finetune scripts (fd71063c) do
    not run or that this replay does not cover."""
    from advisor.errors import InputError

    if getattr(training, "model_code", "transformers") != "litgpt":
        return
    field = "--model-code"
    from advisor.families import has_family

    if training.task != "train":
        raise InputError("--model-code litgpt is a training setting (litgpt finetune lora/full)", field=field)
    if arch.traced or not has_family(arch.family) or arch.is_moe or arch.hybrid:
        raise InputError(f"--model-code litgpt replays litgpt's dense GPT; {arch.family} "
                         f"({'MoE' if arch.is_moe else 'several layer kinds' if arch.hybrid else 'traced'}) is not "
                         "covered: use --model-code transformers", field=field)
    if arch.position != "rope" or arch.qk_norm or arch.word_embed_proj_dim:
        raise InputError(f"--model-code litgpt: {arch.family}'s layout (learned positions, q/k norms or an embedding "
                         "projection) is not one litgpt's GPT replay covers", field=field)
    if training.method not in ("lora", "qlora", "full"):
        raise InputError(f"--model-code litgpt: litgpt finetunes with lora, qlora (lora --quantize bnb.nf4) or full, "
                         f"not {training.method}", field="--method")
    # finetune/{lora,full}.py: one device checkpoints nothing; several run FSDPStrategy(activation_checkpointing_policy=
    # {Block}): every Block checkpointed (non-reentrant), i.e. --checkpointing full under --strategy fsdp-*
    want = "full" if strategy.backend == "fsdp" else "none"
    if training.activation_checkpointing != want:
        raise InputError(f"--model-code litgpt: litgpt's finetune scripts checkpoint "
                         f"{'every Block under FSDP' if want == 'full' else 'no activations on one device'}: use "
                         f"--checkpointing {want}", field="--checkpointing")
    if training.attention != "sdpa":
        raise InputError("--model-code litgpt: litgpt calls F.scaled_dot_product_attention (eager only for "
                         "soft-capping): use --attention sdpa", field="--attention")
    if training.precision not in ("pure-bf16", "fp32"):
        raise InputError(f"--model-code litgpt replays litgpt's bf16-true (--precision pure-bf16) and 32-true (fp32); "
                         f"its -mixed precisions are not replayed (--precision {training.precision})",
                         field="--precision")
    if training.loss not in ("plain", "chunked"):
        raise InputError(f"--model-code litgpt computes litgpt's chunked_cross_entropy (128-token chunks), not "
                         f"--loss {training.loss}", field="--loss")
    if training.base_dtype != "16-bit" or training.offload_activations or training.tiled_mlp:
        raise InputError("--model-code litgpt: --base-dtype fp32, --offload-activations and --tiled-mlp are not "
                         "litgpt settings", field=field)
    if strategy.backend == "deepspeed":
        raise InputError("--model-code litgpt: litgpt's finetune scripts run Fabric single/DDP/FSDP, not DeepSpeed",
                         field="--strategy")
    if training.method in ("lora", "qlora"):
        try:
            litgpt_lora_switches(arch, training.lora.target_modules)
        except ValueError as exc:
            raise InputError(f"--model-code litgpt: {exc}", field="--lora-targets") from None


def model_code_note(training) -> str | None:
    """The estimate's note naming the model code assumed (None for transformers, the default, said elsewhere)."""
    if getattr(training, "model_code", "transformers") != "litgpt":
        return None
    head = ("the lm_head per 128-token chunk (lm_head_chunk_size=128), the chunks cast to fp32 by lightning Fabric's "
            "convert_output, chunked_cross_entropy on the fp32 chunk logits, every chunk held by the loop's logits "
            "through the backward"
            if training.method != "full" else
            "the whole logits, cast to fp32 by lightning Fabric's convert_output, then chunked_cross_entropy in "
            "128-row chunks")
    note = ("model code: litgpt (finetune/lora.py, full.py at fd71063c): litgpt's GPT (fused qkv linear, grouped k/v "
            "expanded to every head before SDPA, fp32 RMSNorm path, fp32 rope cache), its LoRA layers (adapters in the "
            f"model dtype, one dropout for the fused qkv), {head}; --loss/--loss-chunks are not used")
    if training.method == "qlora":
        note += ("; QLoRA by lightning BitsandbytesPrecision with bitsandbytes 0.42.0 (litgpt's pin), whose MatMul4Bit "
                 "keeps its input in ctx.tensors for the graph's life: litgpt's loop holds that graph through `loss` "
                 "until the next micro-step's loss replaces it, so the previous micro-step's 4-bit linear inputs are "
                 "alive through the next forward (counted at the forward's end)")
    return note


def litgpt_lora_elements(arch: Architecture, rank: int, targets) -> int:
    """LoRA elements litgpt trains for ``targets``: q_proj / k_proj / v_proj on a checkpoint whose transformers
    layout fuses them (Falcon, GPT-NeoX, Phi-3) name parts of litgpt's ``LoRAQKVLinear`` (``lora_A``: r x parts rows
    of the input width; ``lora_B``: the enabled parts' output widths x r, litgpt/lora.py); every other target is
    counted as transformers/PEFT counts it (advisor.param_count.lora_trainable_parameters)."""
    from advisor import param_count as pc

    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    shapes = pc.linear_shapes(arch)
    parts = [t for t in targets if t in ("q_proj", "k_proj", "v_proj") and t not in shapes]
    rest = tuple(t for t in targets if t not in parts)
    extra = 0
    if parts:
        if "qkv_proj" not in shapes:
            raise ValueError(f"{', '.join(parts)}: {arch.family} has no q/k/v projections")
        H, KV, d = arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim
        width = {"q_proj": H * d, "k_proj": KV * d, "v_proj": KV * d}
        native = pc.native_linear_names(arch.family)
        fused = {n for t in rest for n in native.get(t, ())} | set(rest)
        if fused & {"qkv_proj", "all-linear"}:
            parts = []                                                 # the whole fused qkv is adapted anyway
        extra = arch.num_layers * rank * (len(parts) * arch.hidden_size + sum(width[t] for t in parts))
    if not rest:
        return extra
    return pc.lora_trainable_parameters(arch, rank, rest) + extra


def litgpt_model_note(note: str | None, training) -> str | None:
    """The model's note with the activation source corrected under ``--model-code litgpt`` (a family without a
    transformers replay is still replayed here, from litgpt's code, not traced)."""
    if not note or getattr(training, "model_code", "transformers") != "litgpt" or "activations traced" not in note:
        return note
    return note.split("; activations traced")[0] + "; activations replayed from litgpt's model code (--model-code litgpt)"
