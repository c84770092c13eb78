"""Make a CPU (or fake-CPU) forward save what the same forward saves on a CUDA GPU.

The same patch as the ground-truth harness (``benchmarks/harness/semantics.py``, ``cuda_semantics``) so that traced and
measured figures are taken under one set of rules:

* CUDA autocast's op lists (``aten/src/ATen/autocast_mode.cpp``: ``AT_FORALL_FP32``,
  ``AT_FORALL_FP32_SET_OPT_DTYPE``, ``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_PROMOTE``) registered at
  the ``AutocastCPU`` key for the ops where CPU autocast differs;
* ``aten::dropout`` routed to ``native_dropout`` (CUDA's fused kernel saves a 1-byte mask;
  ``aten/src/ATen/native/Dropout.cpp`` ``is_fused_kernel_acceptable``).
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
        yield
    finally:
        lib._destroy()
