"""Make a CPU (or fake-CPU) forward save what the same forward saves on a CUDA GPU.

The same patch as the ground-truth harness (``benchmarks/harness/semantics.py``, ``cuda_semantics``) so that traced and
measured figures are taken under one set of rules:

* CUDA autocast's op lists (``aten/src/ATen/autocast_mode.cpp``: ``AT_FORALL_FP32``,
  ``AT_FORALL_FP32_SET_OPT_DTYPE``, ``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_PROMOTE``) registered at
  the ``AutocastCPU`` key for the ops where CPU autocast differs;
* ``aten::dropout`` routed to ``native_dropout`` (CUDA's fused kernel saves a 1-byte mask;
  ``aten/src/ATen/native/Dropout.cpp`` ``is_fused_kernel_acceptable``);
* SDPA whose value head width differs from the query/key width (DeepSeek's multi-head latent attention:
  q/k 192, v 128): CUDA cannot use the flash kernel (``check_head_dim_size_flash`` in
  ``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` wants one width for q, k and v) and runs the
  memory-efficient one, which saves q, k, v, the output and an fp32 logsumexp of (b, h, ceil(s/32)*32)
  (``_efficient_attention_forward``'s ``kAlignLSE``); the CPU has neither and takes the math path, which saves
  the b*h*s*s probabilities. :func:`sdpa_as_cuda` gives such calls the memory-efficient kernel's saved set
  (not in the harness's own ``cuda_semantics``: the comparisons apply this function around it).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch

_CUDA_FP32_OPS = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm",
    "native_layer_norm", "group_norm", "frobenius_norm.dim", "cosine_similarity", "dist", "pdist", "renorm",
    "logsumexp",
)
_CUDA_FP32_SET_OPT_DTYPE_OPS = (
    "prod", "prod.dim_int", "softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm",
    "sum", "sum.dim_IntList",
)
_CUDA_LOWER_OPS = ("addmv", "addr", "einsum", "mv", "chain_matmul", "linalg_multi_dot")
_CUDA_PROMOTE_OPS = ("addcdiv", "addcmul", "atan2", "dot", "tensordot", "scatter_add")


def _eligible(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _cast_all(obj: Any, dtype: torch.dtype) -> Any:
    if _eligible(obj):
        return obj.to(dtype) if obj.dtype != dtype else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_all(o, dtype) for o in obj)
    return obj


def _resolve(name: str) -> Any:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


@contextlib.contextmanager
def cuda_semantics(low: torch.dtype | None) -> Iterator[None]:
    """CUDA autocast policy (when ``low`` is the autocast dtype) and the fused dropout kernel, on CPU."""
    from torch._C import DispatchKey, DispatchKeySet, _ExcludeDispatchKeyGuard

    lib = torch.library.Library("aten", "IMPL")
    excl = DispatchKeySet(DispatchKey.AutocastCPU)

    def fp32_kernel(op):
        def k(*args, **kwargs):
            with _ExcludeDispatchKeyGuard(excl):
                return op(*_cast_all(args, torch.float32),
                          **{k_: _cast_all(v, torch.float32) for k_, v in kwargs.items()})
        return k

    def set_opt_dtype_kernel(op):
        idx = [a.name for a in op._schema.arguments].index("dtype")

        def k(*args, **kwargs):
            with _ExcludeDispatchKeyGuard(excl):
                if args and _eligible(args[0]):
                    if len(args) > idx:
                        if args[idx] is None:
                            args = (*args[:idx], torch.float32, *args[idx + 1:])
                    elif kwargs.get("dtype") is None:
                        kwargs["dtype"] = torch.float32
                return op(*args, **kwargs)
        return k

    def lower_kernel(op):
        def k(*args, **kwargs):
            with _ExcludeDispatchKeyGuard(excl):
                return op(*_cast_all(args, low), **kwargs)
        return k

    def promote_kernel(op):
        def k(*args, **kwargs):
            with _ExcludeDispatchKeyGuard(excl):
                flat = [a for a in args if _eligible(a)]
                to = torch.float32 if any(a.dtype == torch.float32 for a in flat) else low
                return op(*_cast_all(args, to), **kwargs)
        return k

    def dropout_kernel(x, p, train):
        if train and 0.0 < p < 1.0 and x.numel() > 0:
            return torch.ops.aten.native_dropout(x, p, train)[0]
        if train and p == 1.0:
            return x * torch.zeros_like(x)
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if low is not None:
            for name in _CUDA_FP32_OPS:
                lib.impl(name, fp32_kernel(_resolve(name)), "AutocastCPU")
            for name in _CUDA_FP32_SET_OPT_DTYPE_OPS:
                lib.impl(name, set_opt_dtype_kernel(_resolve(name)), "AutocastCPU")
            for name in _CUDA_LOWER_OPS:
                lib.impl(name, lower_kernel(_resolve(name)), "AutocastCPU")
            for name in _CUDA_PROMOTE_OPS:
                lib.impl(name, promote_kernel(_resolve(name)), "AutocastCPU")
        lib.impl("dropout", dropout_kernel, "AutogradCPU")
    try:
        with sdpa_as_cuda():
            yield
    finally:
        lib._destroy()


def _lse_width(s: int) -> int:
    """Columns of the memory-efficient kernel's logsumexp: the query length rounded up to 32 (kAlignLSE)."""
    return -(-s // 32) * 32


class _EfficientSDPA(torch.autograd.Function):
    """Attention with the saved set of CUDA's memory-efficient SDPA kernel: q, k, v, output, fp32 logsumexp.
    Fake tensors run the kernel's own meta functions (its exact outputs and gradient allocations); real CPU
    tensors compute the math attention without recording it and recompute it in backward."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale):
        from torch._subclasses.fake_tensor import FakeTensor

        b, h, s, _ = q.shape
        if isinstance(q, FakeTensor):
            out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, 0.0, is_causal, scale=scale)
        else:
            with torch.no_grad():
                ref = torch.ops.aten._scaled_dot_product_attention_math(q, k, v, None, 0.0, is_causal,
                                                                        scale=scale)[0]
            out = q.new_empty((b, s, h, v.shape[-1])).transpose(1, 2)   # the kernel writes (b, s, h, d)
            out.copy_(ref)
            lse = q.new_zeros((b, h, _lse_width(s)), dtype=torch.float32)
        ctx.is_causal, ctx.scale = is_causal, scale
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        from torch._subclasses.fake_tensor import FakeTensor

        q, k, v, out, lse = ctx.saved_tensors
        if isinstance(q, FakeTensor):
            seed = torch.empty((), dtype=torch.long)
            gq, gk, gv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
                grad, q, k, v, None, out, lse, seed, seed, 0.0, [True, True, True, False], ctx.is_causal,
                scale=ctx.scale)
            return gq, gk, gv, None, None
        with torch.enable_grad():
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            ref = torch.ops.aten._scaled_dot_product_attention_math(qq, kk, vv, None, 0.0, ctx.is_causal,
                                                                    scale=ctx.scale)[0]
            gq, gk, gv = torch.autograd.grad(ref, (qq, kk, vv), grad)
        return gq, gk, gv, None, None


@contextlib.contextmanager
def sdpa_as_cuda() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` calls that CUDA runs on its memory-efficient kernel and the CPU on its
    math path (value width != query width; no mask, no dropout, no GQA flag) get that kernel's saved set
    (:class:`_EfficientSDPA`); every other call is left as it is."""
    import torch.nn.functional as F

    orig = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if (attn_mask is None and not dropout_p and not enable_gqa and query.dim() == 4
                and query.shape[-1] != value.shape[-1] and query.shape[1] == key.shape[1] == value.shape[1]):
            if torch.is_autocast_enabled("cpu"):   # SDPA is on autocast's lower-precision list
                low = torch.get_autocast_dtype("cpu")
                query, key, value = (t.to(low) if t.is_floating_point() else t for t in (query, key, value))
            with torch.autocast("cpu", enabled=False):
                return _EfficientSDPA.apply(query, key, value, bool(is_causal),
                                            query.shape[-1] ** -0.5 if scale is None else float(scale))
        return orig(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                    scale=scale, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig
