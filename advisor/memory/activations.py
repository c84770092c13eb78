"""Activation memory from what each transformer block really saves for backward.

Instead of one textbook formula, this module *replays* the forward pass of the Hugging Face
``transformers`` (v5) implementation of the model's family on symbolic tensors: each tensor carries an
element count, a dtype, a ``requires_grad`` flag and a storage id. Every op applies PyTorch autograd's own
rule for what it saves (``tools/autograd/derivatives.yaml``: ``mm`` saves ``self`` only when the weight needs
a gradient, ``softmax`` saves its result, ``silu`` its input, ...), the dtype rules of the compute mode (CUDA
autocast's op lists from ``aten/src/ATen/autocast_mode.cpp``, type promotion, the explicit ``.float()``
upcasts of the HF code) and the storage aliasing that decides whether two saved tensors share memory (a view
of a fused QKV projection keeps the whole projection alive). Saved storages are counted once.

Nothing is fitted: every byte comes from a tensor the HF module creates. ``benchmarks/measure.py`` records
the same quantity on real models with ``torch.autograd.graph.saved_tensors_hooks`` and
``benchmarks/accuracy.py`` compares the two (see ``docs/accuracy.md``).

Pure arithmetic: no torch, no transformers (the CLI must start fast).

Conventions
-----------
* ``activations``: bytes autograd holds after the forward of one micro-batch (per GPU). Parameters and
  anything aliasing them are excluded. Under autocast over fp32 weights, the low-precision weight copies that
  linears save are *not* activations; they are reported as ``breakdown["info:autocast_weight_copies"]``
  (they scale with parameters, not tokens).
* ``temporaries``: the transient peak on top of ``activations`` during backward (logits gradients, the
  recomputed layer under checkpointing, gradients of a layer's largest tensors, the logits tensor the
  caller still holds, QLoRA's dequantized weight). It is the larger of two moments: the loss backward
  (two fp32 N x V gradients while everything is saved) and a layer's backward (after the head's saved
  tensors are freed). Validated against the CPU allocator in ``docs/accuracy.md`` (conservative: layer
  transients are bounded from above, not replayed op by op).
* ``breakdown``: named byte terms. ``embeddings + rope_cache + layers + final_norm + logits_and_loss
  (+ attention_mask)`` sum to ``activations``; ``per_layer`` is one decoder layer (``layers`` = the first
  layer + the rest; the first may differ when its input needs no gradient); ``temp:*`` terms are the
  moments whose maximum is ``temporaries``; ``info:*`` terms are in neither sum (the logits tensor held by
  the caller, already inside ``temp:*``; autocast's low-precision weight copies, which scale with
  parameters, for the model-state side).
* flash attention (flash-attn 2, GPU only) is accounted like PyTorch SDPA's flash kernel: q, k, v, the output
  and the fp32 logsumexp are saved (plus an RNG state of a few bytes); it needs no mask for sliding windows.
* SDPA attention dropout costs nothing: the fused kernels regenerate the mask from the Philox seed.
* checkpointing ``full``: transformers' ``gradient_checkpointing_enable`` (non-reentrant) keeps each decoder
  layer's input only. ``selective``: the core attention (QKᵀ, soft-capping, softmax, dropout, ·V) is
  recomputed, Megatron-LM style (Korthikanti et al. 2022): under eager attention the attention interface call
  is checkpointed, so its inputs (q, k, v after RoPE, in their dtype there) are kept and the b·h·s² tensors
  are not; with SDPA/flash nothing quadratic is saved, so ``selective`` equals ``none``.
* LoRA follows ``peft.tuners.lora.Linear.forward``: adapters in fp32 (``autocast_adapter_dtype=True``), the
  input cast to the adapter dtype before ``lora_A``, no LoRA dropout. QLoRA is LoRA over a 4-bit base whose
  ``MatMul4Bit`` saves no input (frozen) and dequantizes one weight at a time (a temporary).
  ``freeze``: only the last ``freeze_trainable_layers`` decoder layers train.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from advisor.architecture import Architecture
from advisor.specs import TrainingSpec

ComputeMode = Literal["fp32", "autocast-fp16", "autocast-bf16", "half-fp16", "half-bf16"]

_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "bool": 1, "i64": 8, "i32": 4}


def compute_mode(precision: str, backend: str) -> ComputeMode:
    """How the forward computes: DeepSpeed fp16/bf16 casts the model itself to half (``half-*``); single,
    DDP and FSDP with fp16/bf16 run torch autocast over fp32 weights (accelerate's ``mixed_precision``);
    ``pure-bf16`` is a bf16 model everywhere; ``fp32`` is fp32."""
    if precision == "fp32":
        return "fp32"
    if precision == "pure-bf16":
        return "half-bf16"
    if precision not in ("fp16", "bf16"):
        raise ValueError(f"unknown precision {precision!r}")
    kind = "half" if backend == "deepspeed" else "autocast"
    return f"{kind}-{precision}"  # type: ignore[return-value]


class ActivationEstimate(BaseModel):
    """Activation bytes of one micro-batch on one GPU (see the module docstring for the conventions)."""

    model_config = ConfigDict(frozen=True)

    activations: int
    temporaries: int
    breakdown: dict[str, int]


# ---------------------------------------------------------------------------------------------------------
# Symbolic tensors
# ---------------------------------------------------------------------------------------------------------
class _T:
    """A tensor: ``n`` elements of dtype ``dt``; ``sid`` names its storage (views share it); ``bshd`` marks a
    (batch, heads, seq, dim) view whose memory is laid out (batch, seq, heads, dim), i.e. a head split of a
    projection output; ``param`` marks parameters (never counted)."""

    __slots__ = ("n", "dt", "rg", "sid", "bshd", "param")

    def __init__(self, n: int, dt: str, rg: bool, sid: int, bshd: bool = False, param: bool = False):
        self.n, self.dt, self.rg, self.sid, self.bshd, self.param = n, dt, rg, sid, bshd, param


def _promote(a: str, b: str) -> str:
    """Type promotion of two floating dtypes (bf16 with fp16 never meets here)."""
    return a if a == b else "f32"


class _Trace:
    """Replays a forward pass: creates tensors, records what ops save, counts storages once."""

    def __init__(self, mode: ComputeMode, batch: int, seq: int):
        self.autocast = mode.startswith("autocast")
        self.low = "f32" if mode == "fp32" else ("bf16" if mode.endswith("bf16") else "f16")
        self.pdt = self.low if mode.startswith("half") else "f32"   # parameter (and embedding output) dtype
        self.b, self.s, self.N = batch, seq, batch * seq
        self._next = 0
        self.size: dict[int, int] = {}
        self.saved: dict[int, str] = {}
        self.owner: dict[int, str] = {}   # storages always counted under one term (the shared RoPE cache)
        self.term = "misc"
        self.weight_copy_elems = 0      # autocast low-precision copies of fp32 weights that linears save

    # -- bookkeeping
    def new(self, n: int, dt: str, rg: bool, bshd: bool = False) -> _T:
        self._next += 1
        self.size[self._next] = n * _BYTES[dt]
        return _T(n, dt, rg, self._next, bshd)

    def param(self, n: int, trainable: bool, dt: str | None = None) -> _T:
        t = self.new(n, dt or self.pdt, trainable)
        t.param = True
        return t

    def view(self, t: _T, n: int, bshd: bool | None = None) -> _T:
        return _T(n, t.dt, t.rg, t.sid, t.bshd if bshd is None else bshd, t.param)

    def save(self, *ts: _T | None) -> None:
        for t in ts:
            if t is not None and not t.param and t.sid not in self.saved:
                self.saved[t.sid] = self.owner.get(t.sid, self.term)

    def bytes_of(self, term: str) -> int:
        """Bytes first saved under ``term`` or one of its ``term|part`` sub-terms."""
        return sum(self.size[sid] for sid, tm in self.saved.items() if tm == term or tm.startswith(term + "|"))

    # -- dtype moves
    def cast(self, t: _T, dt: str) -> _T:
        """``Tensor.to(dtype)``: a new tensor (same layout) when the dtype changes; ToCopyBackward saves nothing."""
        if t.dt == dt:
            return t
        return _T(t.n, dt, t.rg, self.new(t.n, dt, t.rg).sid, t.bshd, False)

    def ac_low(self, t: _T) -> _T:
        """Autocast's cast of an input of a lower-precision op (linear, matmul, SDPA)."""
        return self.cast(t, self.low) if self.autocast else t

    def ac_f32(self, t: _T) -> _T:
        """Autocast's cast of an input of an fp32-list op (pow, rsqrt, layer_norm, softmax w/o dtype, ...)."""
        return self.cast(t, "f32") if self.autocast else t

    # -- ops, each with its autograd save rule (derivatives.yaml)
    def linear(self, x: _T, n_in: int, n_out: int, train_w: bool, w_dt: str | None = None) -> _T:
        """F.linear / Conv1D's addmm: MmBackward saves the input iff the weight needs a grad (and the weight
        iff the input does: a parameter, or its autocast copy, counted apart)."""
        w_dt = w_dt or self.pdt
        tokens = x.n // n_in
        if self.autocast:
            xin, out_dt = self.ac_low(x), self.low
            if w_dt == "f32" and (x.rg or train_w):
                self.weight_copy_elems += n_in * n_out
        else:
            xin, out_dt = x, _promote(x.dt, w_dt) if x.dt != w_dt else w_dt
        if train_w:
            self.save(xin)
        return self.new(tokens * n_out, out_dt, x.rg or train_w)

    def mul(self, a: _T, b: _T) -> _T:
        """MulBackward0: saves ``other`` iff ``self`` needs a grad and ``self`` iff ``other`` does."""
        if a.rg:
            self.save(b)
        if b.rg:
            self.save(a)
        return self.new(max(a.n, b.n), _promote(a.dt, b.dt), a.rg or b.rg, a.bshd if a.n >= b.n else b.bshd)

    def scalar_op(self, a: _T) -> _T:
        """Tensor (op) Python scalar: a new tensor, nothing saved."""
        return self.new(a.n, a.dt, a.rg, a.bshd)

    def add(self, a: _T, b: _T) -> _T:
        """AddBackward0 saves nothing; the result has the promoted dtype."""
        return self.new(max(a.n, b.n), _promote(a.dt, b.dt), a.rg or b.rg, a.bshd if a.n >= b.n else b.bshd)

    def pow_(self, x: _T) -> _T:
        """PowBackward0 saves ``self`` (CUDA autocast runs pow in fp32)."""
        x = self.ac_f32(x)
        if x.rg:
            self.save(x)
        return self.new(x.n, x.dt, x.rg, x.bshd)

    def save_result(self, x: _T, dt: str | None = None) -> _T:
        """Ops whose backward uses their result: rsqrt, tanh, sigmoid, relu, softmax, log_softmax."""
        out = self.new(x.n, dt or x.dt, x.rg, x.bshd)
        if x.rg:
            self.save(out)
        return out

    def save_input(self, x: _T) -> _T:
        """Ops whose backward uses their input: silu, gelu (exact and tanh-approximate)."""
        if x.rg:
            self.save(x)
        return self.new(x.n, x.dt, x.rg, x.bshd)

    def dropout(self, x: _T, p: float) -> _T:
        """``native_dropout`` (the CUDA kernel of F.dropout): saves a 1-byte bool mask; p = 0 is a no-op."""
        if p <= 0:
            return x
        mask = self.new(x.n, "bool", False)
        if x.rg:
            self.save(mask)
        return self.new(x.n, x.dt, x.rg, x.bshd)

    def layer_norm(self, x: _T, width: int, affine: bool) -> _T:
        """NativeLayerNormBackward0 saves input, mean and rstd (fp32 on CUDA); autocast runs it in fp32."""
        x = self.ac_f32(x)
        if x.rg or affine:
            self.save(x, self.new(x.n // width, "f32", False), self.new(x.n // width, "f32", False))
        return self.new(x.n, x.dt, x.rg or affine)


# ---------------------------------------------------------------------------------------------------------
# Family quirks that the Architecture fields do not carry (read from the transformers v5 modeling files)
# ---------------------------------------------------------------------------------------------------------
_GEMMA_NORM = ("gemma", "gemma2", "gemma3", "gemma3_text")   # GemmaRMSNorm: x.float(), * (1 + w.float())
_SOFTMAX_NO_DTYPE = ("gpt2",)                              # GPT-2 eager: softmax(scores) then .type(v.dtype)
_SCALED_EMBEDDING = ("gemma", "gemma2", "gemma3", "gemma3_text")  # embeddings * sqrt(hidden)
_BATCH_POSITION_IDS = ("opt",)                             # OPT computes (b, s) position ids (cumsum)
# apply_rotary_pos_emb ends in torch.cat([q_embed, q_pass]): a new contiguous (b, h, s, d) tensor
_ROPE_CAT = ("gpt_neox", "phi3", "gptj", "codegen", "glm", "glm4", "phi4_multimodal", "qwen3_next")


def _lora_linear_names(arch: Architecture, targets: tuple[str, ...]) -> set[str]:
    """Normalized linear names (advisor.param_count.linear_shapes) that get LoRA adapters."""
    from advisor import param_count as pc

    shapes = pc.linear_shapes(arch)
    native = getattr(pc, "_NATIVE_NAMES", {}).get(arch.family, {})
    chosen: set[str] = set()
    for t in targets:
        if t == getattr(pc, "ALL_LINEAR", "all-linear"):
            chosen.update(shapes)
        elif t in shapes:
            chosen.add(t)
        elif t in native:
            chosen.update(native[t])
    return chosen


class _Model:
    """One family's forward, replayed on a :class:`_Trace`."""

    def __init__(self, arch: Architecture, training: TrainingSpec, tr: _Trace, layer_trainable: bool):
        self.a, self.t, self.tr = arch, training, tr
        self.method = training.method
        self.lora = (_lora_linear_names(arch, training.lora.target_modules)
                     if training.method in ("lora", "qlora") else set())
        self.rank = training.lora.rank
        self.layer_trainable = layer_trainable  # weights of the decoder layer being traced need grads
        fam = arch.family
        self.gemma_norm = fam in _GEMMA_NORM
        self.rope_cos = self.rope_sin = None
        self.mask_dt = tr.pdt                   # create_causal_mask: dtype of inputs_embeds

    # -- pieces ------------------------------------------------------------------------------------------
    def proj(self, x: _T, n_in: int, n_out: int, name: str) -> _T:
        """A decoder-layer linear, LoRA-wrapped when targeted (peft.tuners.lora.Linear.forward)."""
        tr = self.tr
        if name not in self.lora:
            return tr.linear(x, n_in, n_out, self.layer_trainable)
        base = tr.linear(x, n_in, n_out, False)                    # frozen base: saves no input
        xa = tr.cast(x, "f32")                                      # _cast_input_dtype(x, lora_A.weight.dtype)
        a = tr.linear(xa, n_in, self.rank, True, w_dt="f32")        # lora_A saves its input
        bo = tr.linear(a, self.rank, n_out, True, w_dt="f32")       # lora_B saves lora_A's output
        res = tr.add(base, tr.scalar_op(bo))                        # result + lora_B(...) * scaling
        return tr.cast(res, base.dt)                                # result.to(torch_result_dtype)

    def norm(self, x: _T, trainable: bool) -> _T:
        a, tr = self.a, self.tr
        h = a.hidden_size
        if a.norm == "layernorm":
            return tr.layer_norm(x, h, trainable and a.norm_affine)
        w = tr.param(h, trainable)
        hf = tr.cast(x, "f32")                                      # hidden_states.to(float32) / x.float()
        var = tr.new(x.n // h, "f32", hf.rg)                        # pow(2).mean(-1): PowBackward saves hf
        tr.pow_(hf)
        r = tr.save_result(var)                                     # rsqrt saves its result
        n = tr.mul(hf, r)                                           # saves hf and r
        if self.gemma_norm:                                         # Gemma2RMSNorm.forward
            w1 = tr.new(h, "f32", trainable)                        # (1.0 + self.weight.float())
            o = tr.mul(n, w1)                                       # saves n (fp32) and w1
            return tr.cast(o, x.dt)                                 # .type_as(x)
        n2 = tr.cast(n, x.dt)                                       # LlamaRMSNorm: .to(input_dtype)
        return tr.mul(w, n2)                                        # weight * hs: saves hs iff weight trains

    def rope(self, q: _T, heads: int) -> _T:
        """apply_rotary_pos_emb: q*cos saves cos, rotate_half(q)*sin saves sin (shared by all layers)."""
        a, tr = self.a, self.tr
        d = a.head_dim
        rot = max(1, int(d * a.rotary_pct))
        full = tr.b * heads * tr.s * d
        part = q if rot == d else tr.view(q, full * rot // d)
        c1 = tr.mul(part, self.rope_cos)
        c2 = tr.mul(tr.new(part.n, part.dt, part.rg, part.bshd), self.rope_sin)  # rotate_half: cat -> new
        e = tr.add(c1, c2)
        if rot == d and a.family not in _ROPE_CAT:
            return e                                                # keeps q's (b, s, h, d) memory layout
        return tr.new(full, e.dt, e.rg, False)                      # torch.cat([q_embed, q_pass]) contiguous

    def repeat_kv(self, x: _T, heads: int) -> _T:
        a, tr = self.a, self.tr
        if a.num_key_value_heads == heads:
            return x
        return tr.new(tr.b * heads * tr.s * a.head_dim, x.dt, x.rg, False)   # expand + reshape: a copy

    def bmm_operand(self, x: _T) -> _T:
        """torch.matmul on 4-D inputs reshapes to (b*h, ., .): a view when (b, h) merge, else a copy."""
        tr = self.tr
        c = tr.ac_low(x)
        if tr.b > 1 and c.bshd:
            c = tr.new(c.n, c.dt, c.rg, False)
        return c

    def attention_core(self, q: _T, k: _T, v: _T, selective: bool) -> _T:
        """Returns the attention output laid out (b, s, heads*d), as o_proj receives it."""
        a, tr, t = self.a, self.tr, self.t
        H, d = a.num_attention_heads, a.head_dim
        b, s = tr.b, tr.s
        out_n = b * H * s * d
        impl = t.attention
        window_mask = (a.sliding_window is not None and s > a.sliding_window)
        if impl == "eager" and selective:
            # checkpointed attention interface: its tensor inputs are kept (NoopSaveInputs), nothing inside
            if q.rg or k.rg or v.rg:
                tr.save(q, k, v)
            return tr.new(out_n, tr.low if tr.autocast else q.dt, q.rg or k.rg or v.rg, False)
        if impl == "eager":
            kr, vr = self.repeat_kv(k, H), self.repeat_kv(v, H)
            qo, ko = self.bmm_operand(q), self.bmm_operand(kr)
            if ko.rg:
                tr.save(qo)
            if qo.rg:
                tr.save(ko)
            mm_dt = tr.low if tr.autocast else qo.dt
            sc = tr.new(b * H * s * s, mm_dt, qo.rg or ko.rg)          # matmul(q, kᵀ) (* scaling: no save)
            sc = tr.scalar_op(sc)
            if a.attn_logit_softcapping:
                sc = tr.scalar_op(tr.save_result(tr.scalar_op(sc)))   # / cap, tanh (saves result), * cap
            sc = tr.add(sc, tr.new(b * s * s, self.mask_dt, False))   # + causal mask (no save)
            if a.family in _SOFTMAX_NO_DTYPE:
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
            o = tr.new(out_n, tr.low if tr.autocast else po.dt, po.rg or vo.rg, False)
            return tr.new(out_n, o.dt, o.rg, True)                     # transpose(1, 2).contiguous(): copy
        # SDPA / flash: saves q, k, v (as passed), out and the fp32 logsumexp
        sdpa_mask = impl == "sdpa" and window_mask
        if sdpa_mask and a.num_key_value_heads != H:                   # mask given: no enable_gqa, repeat_kv
            k, v = self.repeat_kv(k, H), self.repeat_kv(v, H)
        qc, kc, vc = tr.ac_low(q), tr.ac_low(k), tr.ac_low(v)
        rg = qc.rg or kc.rg or vc.rg
        out = tr.new(out_n, qc.dt, rg, qc.bshd)                        # output follows the query's layout
        if rg:
            tr.save(qc, kc, vc, out, tr.new(b * H * s, "f32", False))
            if sdpa_mask:                                              # memory-efficient kernel keeps attn_bias
                tr.save(tr.new(b * s * s, qc.dt, False))
        if out.bshd:
            return tr.view(out, out_n, True)                           # transpose(1, 2).contiguous(): no-op
        return tr.new(out_n, out.dt, out.rg, True)

    def attention(self, x: _T, selective: bool) -> _T:
        a, tr = self.a, self.tr
        h, H, KV, d = a.hidden_size, a.num_attention_heads, a.num_key_value_heads, a.head_dim
        b, s = tr.b, tr.s
        qn, kn = b * s * H * d, b * s * KV * d
        if a.fused_qkv:
            qkv = self.proj(x, h, (H + 2 * KV) * d, "qkv_proj")
            q, k, v = tr.view(qkv, qn, True), tr.view(qkv, kn, True), tr.view(qkv, kn, True)
        else:
            q = self.proj(x, h, H * d, "q_proj")
            k = self.proj(x, h, KV * d, "k_proj")
            v = self.proj(x, h, KV * d, "v_proj")
            q, k, v = tr.view(q, qn, True), tr.view(k, kn, True), tr.view(v, kn, True)
        if a.family == "opt":
            q = tr.scalar_op(q)                                        # q_proj(x) * self.scaling
        if a.qk_norm:                                                  # Qwen3: per-head RMSNorm on q and k
            q, k = self._head_norm(q), self._head_norm(k)
        if a.position == "rope":
            q, k = self.rope(q, H), self.rope(k, KV)
        o = self.attention_core(q, k, v, selective)
        return self.proj(o, H * d, h, "o_proj")

    def _head_norm(self, x: _T) -> _T:
        tr, d = self.tr, self.a.head_dim
        hf = tr.cast(x, "f32")
        tr.pow_(hf)
        r = tr.save_result(tr.new(x.n // d, "f32", hf.rg))
        n2 = tr.cast(tr.mul(hf, r), x.dt)
        return tr.mul(tr.param(d, self.layer_trainable), n2)

    def act(self, x: _T) -> _T:
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
            d = tr.scalar_op(tr.mul(c, x))                             # 1.0 + c * input
            th = tr.scalar_op(tr.save_result(tr.mul(i1, d)))           # 1.0 + tanh(i1 * d)
            return tr.mul(half, th)
        # gelu_new / gelu_python_tanh / gelu_accurate and unknown kinds: NewGELUActivation's chain
        half = tr.scalar_op(x)                                         # 0.5 * input
        p3 = tr.scalar_op(tr.pow_(x))                                  # 0.044715 * pow(input, 3)
        inner = tr.scalar_op(tr.add(x, p3))                            # sqrt(2/pi) * (input + ...)
        th = tr.scalar_op(tr.save_result(inner))                       # 1.0 + tanh(...)
        return tr.mul(half, th)

    def mlp(self, x: _T) -> _T:
        a, tr = self.a, self.tr
        h, i = a.hidden_size, a.intermediate_size
        if a.is_moe:
            return self.moe(x)
        if a.mlp == "gated":
            if a.fused_gate_up:
                gu = self.proj(x, h, 2 * i, "gate_up_proj")
                g, u = tr.view(gu, gu.n // 2), tr.view(gu, gu.n // 2)
            else:
                g = self.proj(x, h, i, "gate_proj")
                u = self.proj(x, h, i, "up_proj")
            m = tr.mul(self.act(g), u)
            return self.proj(m, i, h, "down_proj")
        f = self.proj(x, h, i, "fc1")
        return self.proj(self.act(f), i, h, "fc2")

    def moe(self, x: _T) -> _T:
        """MixtralSparseMoeBlock with transformers v5's default grouped_mm experts (integrations/moe.py)."""
        a, tr = self.a, self.tr
        h, i, E, k = a.hidden_size, a.intermediate_size, a.num_experts, max(a.experts_per_token, 1)
        N = tr.N
        S = N * k
        logits = self.proj(x, h, E, "router")                          # router F.linear
        probs = tr.save_result(tr.cast(logits, "f32"))                 # softmax(router_logits.float())
        idx = tr.new(N * k, "i64", False)                              # topk: TopkBackward saves indices
        tr.save(idx)
        top = tr.new(N * k, "f32", probs.rg)
        tr.save(top, tr.new(N, "f32", probs.rg))                       # top /= top.sum(): DivBackward
        tr.save(tr.new(S, "i64", False), tr.new(S, "i64", False))     # sort perm; hidden_states[perm // k]
        tr.save(tr.new(E, "i32", False))                               # grouped_mm offsets (cumsum)
        sel = tr.new(S * h, x.dt, x.rg)
        w_dt = tr.pdt
        sel = tr.cast(sel, w_dt)                                       # input.to(weight.dtype); no autocast
        train = self.layer_trainable
        if train:
            tr.save(sel)                                               # grouped_mm saves input (and weight)
        gu = tr.new(S * 2 * i, sel.dt, sel.rg or train)
        g, u = tr.view(gu, S * i), tr.view(gu, S * i)
        m = tr.mul(self.act(g), u)
        m = tr.cast(m, w_dt)
        if train:
            tr.save(m)
        o = tr.new(S * h, m.dt, m.rg or train)
        sw = tr.new(S, "f32", top.rg)                                  # sample_weights[perm]
        wo = tr.mul(o, sw)                                             # saves o and the weights
        tr.save(tr.new(S, "i64", False))                               # weighted_out[inv_perm] indices
        f = tr.new(N * h, wo.dt, wo.rg)                                # view(...).sum(dim=1)
        return tr.cast(f, x.dt)

    # -- blocks ------------------------------------------------------------------------------------------
    def layer(self, x: _T, selective: bool) -> _T:
        """One decoder layer. Saved tensors are attributed to ``<term>|attn`` and ``<term>|mlp`` (the MLP
        half is freed first in backward)."""
        a, tr = self.a, self.tr
        base = tr.term
        train = self.layer_trainable
        hp = a.hidden_dropout
        tr.term = base + "|attn"
        if a.parallel_residual:                                        # GPT-NeoX / Falcon parallel block
            h1 = self.norm(x, train)
            att = tr.dropout(self.attention(h1, selective), hp)
            tr.term = base + "|mlp"
            h2 = self.norm(x, train) if a.norms_per_layer >= 2 else h1
            m = tr.dropout(self.mlp(h2), hp)
            tr.term = base
            return tr.add(tr.add(m, att), x)
        att = self.attention(self.norm(x, train), selective)
        if self.gemma_norm and a.norms_per_layer >= 4:                 # Gemma-2 post_attention_layernorm
            att = self.norm(att, train)
        x2 = tr.add(x, tr.dropout(att, hp))
        tr.term = base + "|mlp"
        m = self.mlp(self.norm(x2, train))
        if self.gemma_norm and a.norms_per_layer >= 4:                 # post_feedforward_layernorm
            m = self.norm(m, train)
        tr.term = base
        return tr.add(x2, tr.dropout(m, hp))

    def embeddings(self, emb_trainable: bool) -> _T:
        a, tr = self.a, self.tr
        N, h = tr.N, a.hidden_size
        ids = tr.new(N, "i64", False)
        if emb_trainable:
            tr.save(ids)                                               # EmbeddingBackward saves the indices
        e = tr.new(N * (a.word_embed_proj_dim or h), tr.pdt, emb_trainable)
        if a.family in _SCALED_EMBEDDING:
            e = tr.mul(e, tr.new(1, tr.pdt, False))                    # * embed_scale (a 0-d tensor)
        if a.word_embed_proj_dim:                                      # OPT-350m project_in (bias-free)
            e = tr.linear(e, a.word_embed_proj_dim, h, emb_trainable)
        if a.position == "learned":
            pos_n = N if a.family in _BATCH_POSITION_IDS else tr.s
            if emb_trainable:
                tr.save(tr.new(pos_n, "i64", False))                   # position ids of the learned table
            e = tr.add(e, tr.new(N * h, tr.pdt, emb_trainable))
        if a.embedding_norm:
            e = tr.layer_norm(e, h, emb_trainable)
        return tr.dropout(e, a.embedding_dropout)

    def make_rope_cache(self) -> None:
        a, tr = self.a, self.tr
        if a.position != "rope":
            return
        d = a.head_dim
        rot = max(1, int(d * a.rotary_pct))
        # rotary_emb(hidden_states, position_ids): (1, s, rot) in the embeddings' dtype, shared by all layers
        self.rope_cos = tr.new(tr.s * rot, tr.pdt, False)
        self.rope_sin = tr.new(tr.s * rot, tr.pdt, False)
        tr.owner[self.rope_cos.sid] = tr.owner[self.rope_sin.sid] = "rope_cache"

    def head(self, x: _T, final_trainable: bool, lm_trainable: bool) -> tuple[_T, int]:
        """Final norm, lm_head and ForCausalLMLoss. Returns the logits tensor (held by the caller's output)."""
        a, tr = self.a, self.tr
        tr.term = "final_norm"
        if a.final_norm:
            x = self.norm(x, final_trainable)
        width = a.hidden_size
        if a.word_embed_proj_dim:                                       # OPT-350m project_out
            x = tr.linear(x, width, a.word_embed_proj_dim, final_trainable)
            width = a.word_embed_proj_dim
        tr.term = "logits_and_loss"
        logits = tr.linear(x, width, a.vocab_size, lm_trainable)
        held = logits
        if a.final_logit_softcapping:                                  # logits / cap; tanh; * cap
            logits = tr.scalar_op(tr.save_result(tr.scalar_op(logits)))
        lf = tr.cast(logits, "f32")                                    # logits.float()
        tr.save_result(lf)                                             # log_softmax saves its fp32 result
        lab = tr.N if tr.b > 1 else tr.s + 1                           # pad(labels)[..., 1:].contiguous()
        tr.save(tr.new(lab, "i64", False), tr.new(1, "f32", False))   # nll_loss: target, total_weight
        return held, tr.size[held.sid]


# ---------------------------------------------------------------------------------------------------------
# Whole-model assembly
# ---------------------------------------------------------------------------------------------------------
def _saving_layers(arch: Architecture, training: TrainingSpec, ckpt: str) -> int:
    """Decoder layers that save tensors. Under ``freeze`` without checkpointing the frozen layers in front
    save nothing (no tensor there needs a gradient); with full checkpointing every layer keeps its input,
    which requires grad (enable_input_require_grads)."""
    if training.method == "freeze" and ckpt != "full":
        return min(training.freeze_trainable_layers, arch.num_layers)
    return arch.num_layers


def _trace_model(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str) -> dict[str, int]:
    """Byte terms of one micro-batch: embeddings, first_layer, per_layer, final_norm, logits_and_loss, ..."""
    b, s = training.micro_batch_size, training.seq_len
    tr = _Trace(mode, b, s)
    full = training.method == "full"
    freeze = training.method == "freeze"
    selective = ckpt == "selective"
    # Frozen layers in front of the first trainable one save nothing: no tensor there needs a gradient.
    m = _Model(arch, training, tr, layer_trainable=full or freeze)
    tr.term = "embeddings"
    emb = m.embeddings(emb_trainable=full)
    tr.term = "rope_cache"
    m.make_rope_cache()
    if ckpt == "full":
        # gradient_checkpointing_enable() calls enable_input_require_grads() for input_ids models (as PEFT
        # does): the embedding output requires grad even when the embeddings are frozen
        emb = _T(emb.n, emb.dt, True, emb.sid)
    elif freeze:
        emb = _T(emb.n, emb.dt, False, emb.sid)                        # output of frozen layers: no grad

    terms: dict[str, int] = {}
    x = emb
    layer_terms = ("first_layer", "per_layer")
    for term in layer_terms:
        if ckpt == "full":
            # checkpoint() keeps the layer input (NoopSaveInputs); what the layer saves inside is dropped
            # after the forward and rebuilt, one layer at a time, during backward
            tr.term = term + ":inner"
            before = set(tr.saved)
            out = m.layer(x, False)
            inner = [sid for sid in tr.saved if sid not in before]
            terms[term + "_recompute"] = sum(tr.size[sid] for sid in inner)
            terms[term + "_recompute_mlp"] = sum(tr.size[sid] for sid in inner if tr.saved[sid].endswith("|mlp"))
            terms[term + "_recompute_input"] = tr.size[x.sid] if x.sid in inner else 0
            for sid in inner:
                del tr.saved[sid]
            tr.term = term
            tr.save(x)
            x = tr.new(out.n, out.dt, out.rg)
        else:
            tr.term = term
            x = m.layer(x, selective)
    if ckpt == "full" and m.rope_cos is not None:
        tr.save(m.rope_cos, m.rope_sin)                                # alive in the layers' kwargs
    for term in layer_terms:
        terms[term] = tr.bytes_of(term)
        terms[term + "_mlp"] = tr.bytes_of(term + "|mlp")
    weight_copy_layer = tr.weight_copy_elems // 2
    tr.weight_copy_elems = 0

    final_trainable = full
    lm_trainable = full
    _, held = m.head(x, final_trainable, lm_trainable)
    weight_copy_head = tr.weight_copy_elems

    for term in ("embeddings", "rope_cache", "final_norm", "logits_and_loss"):
        terms[term] = tr.bytes_of(term)
    terms["logits_held"] = held
    terms["weight_copy_layer"] = weight_copy_layer
    terms["weight_copy_head"] = weight_copy_head
    return terms


def _layer_backward_transients(arch: Architecture, training: TrainingSpec, mode: ComputeMode) -> tuple[int, int]:
    """Gradient buffers alive at once in a decoder layer's backward, for its two halves (MLP first).

    MLP: the gradients of gate, up and their product (three b·s·inner buffers; the routed tokens for MoE).
    Eager attention: the gradient of the probabilities and of the scores (b·h·s², the second in fp32); under
    selective recomputation the probabilities are rebuilt as well. Plus two residual-stream gradients."""
    b, s = training.micro_batch_size, training.seq_len
    low = 4 if mode == "fp32" else 2
    stream = 4 if mode.startswith("autocast") or mode == "fp32" else 2
    inner = arch.intermediate_size * max(arch.experts_per_token, 1) if arch.is_moe else arch.intermediate_size
    mlp_dt = 4 if (mode.startswith("autocast") and arch.hidden_act in ("gelu_new", "gelu_python_tanh",
                                                                        "gelu_accurate")) else low
    residual = 2 * b * s * arch.hidden_size * stream
    mlp = 3 * b * s * inner * mlp_dt + residual
    attn = residual
    if training.attention == "eager":
        quad = b * arch.num_attention_heads * s * s * (low + 4)
        if training.activation_checkpointing == "selective":
            quad *= 2                  # the recomputed probabilities (fp32 + 16-bit copy) come back too
        attn += quad
    return mlp, attn


def activation_memory(arch: Architecture, training: TrainingSpec, mode: ComputeMode) -> ActivationEstimate:
    """Saved-for-backward bytes of one micro-batch and the backward transient peak on top (per GPU)."""
    ckpt = training.activation_checkpointing
    if arch.attn_logit_softcapping and training.attention == "sdpa":
        # transformers' sdpa_attention_forward refuses softcap (Gemma-2): the model runs eager attention
        training = training.model_copy(update={"attention": "eager"})
    if training.attention in ("sdpa", "flash") and ckpt == "selective":
        ckpt = "none"                                                  # nothing quadratic to recompute
    terms = _trace_model(arch, training, mode, ckpt)
    n_train = _saving_layers(arch, training, ckpt)
    layers = terms["first_layer"] + max(n_train - 1, 0) * terms["per_layer"]

    breakdown: dict[str, int] = {
        "embeddings": terms["embeddings"],
        "rope_cache": terms["rope_cache"],
        "per_layer": terms["per_layer"],
        "layers": layers,
        "final_norm": terms["final_norm"],
        "logits_and_loss": terms["logits_and_loss"],
    }
    b, s = training.micro_batch_size, training.seq_len
    if ckpt in ("full", "selective") and training.attention == "eager":
        # checkpointed calls keep the 4-D causal mask (inputs_embeds dtype) until backward: as a kwarg of
        # each checkpointed layer (full) or as an input of each checkpointed attention call (selective)
        breakdown["attention_mask"] = b * s * s * (2 if mode.startswith("half") else 4)
    activations = sum(v for k, v in breakdown.items() if k != "per_layer")

    # -- temporaries: the largest transient on top of the saved set during backward. Two moments:
    # (1) loss backward: nll_loss's gradient and log_softmax's gradient (fp32 N x V each) while everything
    #     the forward saved is still alive; (2) a decoder layer's backward (the last layer's comes first):
    #     by then the head's saved tensors are freed. The logits tensor the caller's output holds is alive
    #     throughout (``outputs = model(**batch); accelerator.backward(outputs.loss)``).
    N, V = b * s, arch.vocab_size
    held = terms["logits_held"]
    head_saved = terms["final_norm"] + terms["logits_and_loss"]
    logits_phase = held + 2 * N * V * 4
    mlp_t, attn_t = _layer_backward_transients(arch, training, mode)
    if ckpt == "full":
        # the recomputed layer's saved set (its input is already counted) comes back before its backward
        key = max(("first_layer", "per_layer"), key=lambda k: terms[k + "_recompute"])
        recompute = terms[key + "_recompute"] - terms[key + "_recompute_input"]
        recompute_mlp = terms[key + "_recompute_mlp"]
    else:
        recompute, recompute_mlp = 0, terms["per_layer_mlp"]
    # by the attention half's backward, the MLP half's saved tensors are freed
    layer_transient = recompute + max(mlp_t, attn_t - recompute_mlp)
    if training.method == "qlora":
        from advisor import param_count as pc

        biggest = max(i * o for i, o, _ in pc.linear_shapes(arch).values())
        # bitsandbytes MatMul4Bit dequantizes the weight (compute dtype) for the forward and again for
        # grad_input in backward; one at a time
        breakdown["info:qlora_dequantized_weight"] = biggest * (4 if mode == "fp32" else 2)
        layer_transient += breakdown["info:qlora_dequantized_weight"]
    layer_phase = max(held + layer_transient - head_saved, 0)
    breakdown["temp:logits_and_loss_backward"] = logits_phase
    breakdown["temp:layer_backward"] = layer_phase
    temporaries = max(logits_phase, layer_phase)
    breakdown["info:logits_output_held"] = held
    if mode.startswith("autocast"):
        layer_copies = terms["weight_copy_layer"] * n_train
        breakdown["info:autocast_weight_copies"] = (layer_copies + terms["weight_copy_head"]) * 2
    return ActivationEstimate(activations=int(activations), temporaries=int(temporaries), breakdown=breakdown)


__all__ = ["ActivationEstimate", "ComputeMode", "activation_memory", "compute_mode"]
