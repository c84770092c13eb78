"""DeepSeek-V3 / DeepSeek-R1 (transformers/models/deepseek_v3/modeling_deepseek_v3.py).

Multi-head latent attention (MLA): q through a low-rank ``q_a_proj`` → RMSNorm → ``q_b_proj`` (heads x
(qk_nope + qk_rope)), keys and values through ``kv_a_proj_with_mqa`` (kv_lora_rank + a shared rope key) →
RMSNorm → ``kv_b_proj`` (heads x (qk_nope + v_head_dim)); for inference only the compressed kv_lora_rank +
qk_rope_head_dim per token need caching. The first ``first_k_dense_replace`` layers have a dense gated MLP of
``intermediate_size``; the others an MoE block: a sigmoid router over ``n_routed_experts`` (group-limited top-k,
an ``e_score_correction_bias`` buffer, no parameter), fused routed experts of ``moe_intermediate_size`` and
``n_shared_experts`` shared experts (one MLP of n_shared x moe_intermediate_size) every token passes through.
The multi-token-prediction layer of the checkpoint (``num_nextn_predict_layers``) is not built by transformers
and is not counted.

The forward is replayed by :class:`DeepseekV3Replay` (the fast path), op by op as modeling_deepseek_v3.py
writes it; tests/families/test_deepseek_v3.py holds it against the tracer byte for byte. Attention under SDPA:
q/k are qk_nope + qk_rope wide and v is v_head_dim wide, so CUDA cannot take the flash kernel and runs the
memory-efficient one (advisor/trace/cuda_semantics.py ``sdpa_as_cuda``: q, k, v, output and an fp32 logsumexp
padded to 32 rows saved). flash-attn 2 is accounted like SDPA's kernel (not traceable on a CPU).
"""

from __future__ import annotations

from advisor.memory.symbolic import Tensor

from .base import PROXY_HEADS, PROXY_INNER, Family, attention_lora_only, llama_proxy, proxy_experts, read_experts, \
    read_llama_like
from .replay import DecoderReplay


class DeepseekV3Replay(DecoderReplay):
    """DeepseekV3DecoderLayer: MLA attention, a dense gated MLP (``dense`` layers) or DeepseekV3MoE (sigmoid
    group-limited router, grouped_mm routed experts, a shared-experts MLP)."""

    peft_moe_params = True      # PEFT adapts experts and router; neither the dense MLP nor the shared experts

    # -- attention (DeepseekV3Attention.forward) -------------------------------------------------------------
    def attention(self, x: Tensor, selective: bool) -> Tensor:
        a, tr = self.a, self.tr
        h, H = a.hidden_size, a.num_attention_heads
        rope, qk, v_dim, L = a.qk_rope_head_dim, a.head_dim, a.v_head_dim, a.kv_lora_rank
        nope = qk - rope
        b, s = tr.b, tr.s
        N = b * s
        if a.q_lora_rank:                                               # q_b_proj(q_a_layernorm(q_a_proj(x)))
            qa = self.proj(x, h, a.q_lora_rank, "q_a_proj")
            q = self.proj(self.norm(qa, self.layer_trainable, a.q_lora_rank), a.q_lora_rank, H * qk, "q_b_proj")
        else:
            q = self.proj(x, h, H * qk, "q_proj")
        q = tr.view(q, q.n, True)                                       # view(b, s, H, qk).transpose(1, 2)
        q_pass, q_rot = tr.split(q, [N * H * nope, N * H * rope])       # split [nope, rope] on the last dim
        ckv = self.proj(x, h, L + rope, "kv_a_proj_with_mqa")
        kv_nope, k_rot = tr.split(ckv, [N * L, N * rope])
        kv_nope = self.norm(kv_nope, self.layer_trainable, L)           # kv_a_layernorm on the slice
        q_rot, k_rot = self.mla_rope(q_rot, H), self.mla_rope(k_rot, 1)
        query = self.cat(q_pass, q_rot)                                 # cat((q_pass, q_rot), -1)
        # expand_kv: kv_b_proj, view/transpose/split into k_nope and v (views of its output); key_states a new
        # tensor (new_empty) filled through two slice copy_ (CopySlices: no save)
        kv = self.proj(kv_nope, L, H * (nope + v_dim), "kv_b_proj")
        kv = tr.view(kv, kv.n, True)
        k_nope, value = tr.split(kv, [N * H * nope, N * H * v_dim], True)
        key = tr.op(tr.new(N * H * qk, kv.dt, k_nope.rg or k_rot.rg), [k_nope, k_rot])
        o = self.attention_core(query, key, value, selective)
        return self.proj(o, H * v_dim, h, "o_proj")

    def mla_rope(self, x: Tensor, heads: int) -> Tensor:
        """Rotary embedding of the rope part of q (``heads`` = H) or of the shared k_rot (one head)."""
        tr = self.tr
        r = self.a.qk_rope_head_dim
        n = tr.b * heads * tr.s * r
        if not self.a.rope_interleave:                                    # apply_rotary_pos_emb (rotate_half)
            c1 = tr.mul(x, self.rope_cos)
            x1, x2 = tr.view(x, n // 2), tr.view(x, n // 2)
            rh = tr.cat([tr.scalar_op(x2), x1])
            return tr.add(c1, tr.mul(rh, self.rope_sin))
        # apply_rotary_pos_emb_interleave: cos/sin[..., :r/2]; x[..., 0::2], x[..., 1::2];
        # cat([x1*cos - x2*sin, x2*cos + x1*sin], -1)
        cos, sin = tr.view(self.rope_cos, tr.s * r // 2), tr.view(self.rope_sin, tr.s * r // 2)
        x1, x2 = tr.view(x, n // 2), tr.view(x, n // 2)
        first = tr.add(tr.mul(x1, cos), tr.scalar_op(tr.mul(x2, sin), add=True))   # sub: no save
        second = tr.add(tr.mul(x2, cos), tr.mul(x1, sin))
        return tr.cat([first, second])

    def cat(self, a: Tensor, b: Tensor) -> Tensor:
        """torch.cat of two tensors, type-promoted (under autocast the rope half is fp32: the rotary tables
        follow the fp32 residual stream)."""
        tr = self.tr
        out = tr.new(a.n + b.n, a.dt if a.dt == b.dt else "f32", a.rg or b.rg)
        return tr.op(out, [a, b], "view", keep_size=True)

    def attention_core(self, q: Tensor, k: Tensor, v: Tensor, selective: bool) -> Tensor:
        a, tr, t = self.a, self.tr, self.t
        if t.attention != "sdpa" or a.v_head_dim == a.head_dim:
            return super().attention_core(q, k, v, selective)
        # SDPA with v narrower than q/k: CUDA's memory-efficient kernel (advisor/trace/cuda_semantics.py
        # sdpa_as_cuda) saves q, k, v, the output (written (b, s, h, d)) and an fp32 logsumexp of
        # (b, h, ceil(s/32)*32) (_efficient_attention_forward, kAlignLSE = 32)
        H, b, s = a.num_attention_heads, tr.b, tr.s
        out_n = b * H * s * a.v_head_dim
        qc, kc, vc = tr.ac_low(q), tr.ac_low(k), tr.ac_low(v)
        rg = qc.rg or kc.rg or vc.rg
        out = tr.new(out_n, qc.dt, rg, True)
        if rg:
            tr.save(qc, kc, vc, out, tr.new(b * H * (-(-s // 32) * 32), "f32", False))
        out = tr.op(out, [qc, kc, vc])
        return tr.view(out, out_n, True)                               # transpose(1, 2).contiguous(): no-op

    # -- MLP / MoE -------------------------------------------------------------------------------------------
    def dense(self) -> bool:
        """The layer being replayed has DeepseekV3MLP (index < first_k_dense_replace)."""
        a = self.a
        return self.kind == "dense" or (self.kind == "" and a.dense_layers >= a.num_layers)

    def gated_mlp(self, x: Tensor, i: int, names: tuple[str, str, str]) -> Tensor:
        """DeepseekV3MLP: down_proj(act(gate_proj(x)) * up_proj(x)) of width ``i``."""
        h = self.a.hidden_size
        g = self.proj(x, h, i, names[0])
        u = self.proj(x, h, i, names[1])
        return self.proj(self.tr.mul(self.act(g), u), i, h, names[2])

    def mlp(self, x: Tensor) -> Tensor:
        a = self.a
        if self.dense():
            return self.gated_mlp(x, a.dense_intermediate_size or a.intermediate_size,
                                  ("gate_proj", "up_proj", "down_proj"))
        return self.moe(x)

    def moe(self, x: Tensor) -> Tensor:
        """DeepseekV3MoE: gate (DeepseekV3TopkRouter), experts on the routed tokens, + shared_experts(x)."""
        a, tr = self.a, self.tr
        h, E, k = a.hidden_size, a.num_experts, max(a.experts_per_token, 1)
        N = tr.N
        groups = a.moe_groups
        # router_logits = F.linear(x.type(float32), weight.type(float32)) (the weight is kept in fp32;
        # a frozen or half copy of it is a weight copy, not an activation); a plain F.linear: no LoRA
        xf = tr.cast(x, "f32")
        if tr.pdt != "f32" and not tr.autocast and not self.layer_trainable and xf.rg and "router" not in self.moe_lora:
            # weight.type(float32) of a frozen 16-bit router: a plain fp32 copy (no grad_fn ties it to the
            # parameter) that the mm saves for the input's gradient; it lives until backward
            tr.save(tr.new(E * h, "f32", False))
        logits = self.router_linear(xf, h, E, "f32")
        scores = tr.save_result(logits)                                 # sigmoid saves its result
        choice = tr.add(scores, tr.new(E, "f32", False))                # + e_score_correction_bias (fp32)
        # group_scores = choice.view(-1, G, E/G).topk(2)[0].sum(-1): TopkBackward saves its indices
        tr.save(tr.new(N * groups * 2, "i64", False))
        group_scores = tr.op(tr.new(N * groups, choice.dt, choice.rg), [choice])
        tr.save(tr.new(N * a.moe_topk_groups, "i64", False))  # topk(group_scores, topk_group)
        del group_scores
        tr.save(tr.new(N * E, "bool", False))                           # masked_fill(~score_mask, -inf)
        masked = tr.op(tr.new(N * E, choice.dt, choice.rg), [choice])
        idx = tr.new(N * k, "i64", False)                               # topk(.., top_k): saves its indices
        tr.save(idx)
        del masked
        tr.save(idx, scores)                                            # scores.gather(1, idx): index and self
        top = tr.op(tr.new(N * k, scores.dt, scores.rg), [scores])
        if a.moe_norm_topk:
            total = tr.op(tr.new(N, "f32" if tr.autocast else top.dt, top.rg), [top])   # sum(-1): fp32 on autocast
            den = tr.scalar_op(total, add=True)                         # + 1e-20
            # topk_weights /= denominator (in place): DivBackward saves the denominator and a copy of the
            # weights before the division
            tr.save(tr.new(N * k, top.dt, False), den)
            top = tr.op(tr.new(N * k, top.dt, top.rg), [top, den])
        top = tr.scalar_op(top)                                         # * routed_scaling_factor
        out = self.grouped_experts(x, top, a.intermediate_size)
        shared = self.gated_mlp(x, a.shared_expert_size, ("shared_gate_proj", "shared_up_proj",
                                                           "shared_down_proj"))
        return tr.add(out, shared)

    def proj(self, x: Tensor, n_in: int, n_out: int, name: str) -> Tensor:
        # PEFT matches module names by suffix: a target gate_proj also adapts mlp.shared_experts.gate_proj
        if name.startswith("shared_") and name[7:] in self.lora:
            name = name[7:]
        return super().proj(x, n_in, n_out, name)


def extra(r):
    heads = r.integer("num_attention_heads")
    nope = r.integer("qk_nope_head_dim", default=128)
    rope = r.integer("qk_rope_head_dim", default=64)
    q_lora = r.cfg.get("q_lora_rank", 1536)
    experts = read_experts(r, "n_routed_experts", 256, 8)
    layers = r.integer("num_hidden_layers")
    groups = r.integer("n_group", default=8)
    topk_groups = r.integer("topk_group", default=4)
    if experts["num_experts"] % groups:
        raise r.fail("n_group", f"({groups}) must divide n_routed_experts ({experts['num_experts']})")
    if topk_groups > groups:
        raise r.fail("topk_group", f"({topk_groups}) exceeds n_group ({groups})")
    return dict(experts,
                num_key_value_heads=heads, head_dim=nope + rope, qk_rope_head_dim=rope,
                q_lora_rank=0 if q_lora is None else r.integer("q_lora_rank", default=1536),
                kv_lora_rank=r.integer("kv_lora_rank", default=512),
                v_head_dim=r.integer("v_head_dim", default=128),
                shared_expert_size=r.integer("n_shared_experts", default=1, minimum=0)
                * r.integer("moe_intermediate_size", default=2048),
                dense_layers=min(r.integer("first_k_dense_replace", default=3, minimum=0), layers),
                dense_intermediate_size=r.integer("intermediate_size", default=18432),
                moe_norm_topk=r.flag("norm_topk_prob", default=True),
                moe_groups=groups, moe_topk_groups=topk_groups,
                rope_interleave=r.flag("rope_interleave", default=True))


def read(r):
    return read_llama_like(r, kv=None, head_dim=None, tie=False, max_pos=4096, act="silu", extra=extra,
                           intermediate=("moe_intermediate_size", 2048))


def proxy(arch):
    experts, top_k = proxy_experts(arch)
    return llama_proxy(arch, num_key_value_heads=PROXY_HEADS, n_routed_experts=experts, num_experts_per_tok=top_k,
                       moe_intermediate_size=PROXY_INNER // 4, n_shared_experts=1, first_k_dense_replace=1,
                       n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                       qk_nope_head_dim=8, v_head_dim=16)


FAMILY = Family(model_type="deepseek_v3", modeling="transformers/models/deepseek_v3/modeling_deepseek_v3.py",
                read=read, fsdp_layer_class="DeepseekV3DecoderLayer", proxy=proxy, replay=DeepseekV3Replay,
                z3_leaf_modules=("DeepseekV3MoE",), replay_covers=attention_lora_only,
                native_linear_names={"gate": ("router",)})
