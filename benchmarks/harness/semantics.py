"""CUDA semantics on CPU: the one context manager every measurement of the harness runs under.

The harness measures on CPU what a CUDA GPU would allocate. Where CPU kernels differ from CUDA's in what
they save or allocate, :func:`cuda_semantics` swaps in CPU kernels that behave like the CUDA ones. Every
measurement kind (``benchmarks/harness/kinds/``) calls it around the whole measured region, records
:meth:`Semantics.record` in its result (the cache keeps it), and the docs say so. The patches:

``autocast_policy`` (only under a mode with autocast)
    CPU autocast has different op lists from CUDA autocast. Python kernels at the ``AutocastCPU`` dispatch
    key give the CPU CUDA's lists (``aten/src/ATen/autocast_mode.cpp``): the ops CUDA runs in fp32 and CPU
    leaves alone (``pow``, ``rsqrt``, ``exp``, ``layer_norm``, ...), the fp32-unless-a-dtype-is-given ops
    (``softmax``/``log_softmax``/``sum`` without a dtype), CUDA's extra low-precision ops (``einsum``,
    ``mv``, ...) and its promote ops. Example: GPT-2's ``gelu_new`` calls ``torch.pow``, so on CUDA its MLP
    saves fp32 tensors; plain CPU autocast would save bf16 ones.
``fused_dropout``
    On CUDA ``F.dropout`` runs the fused ``native_dropout`` kernel when ``0 < p < 1``
    (``aten/src/ATen/native/Dropout.cpp``, ``is_fused_kernel_acceptable``), which saves a 1-byte bool mask;
    on CPU ``aten::dropout`` multiplies by a noise tensor of the input's dtype (2 or 4 bytes). The patch
    routes ``aten::dropout`` (``AutogradCPU`` key) to ``native_dropout``, so the CPU saves the bool mask.
``fused_dropout_backward``
    CUDA's ``native_dropout_backward`` is one fused kernel (``aten/src/ATen/native/cuda/Dropout.cu``,
    ``masked_scale``) that allocates the gradient only. The CPU kernel computes ``grad * mask * scale`` and
    TensorIterator first casts the bool mask to the gradient's dtype: one more gradient-sized temporary that
    a GPU never allocates. The patch is a one-allocation equivalent (``where`` takes the bool mask as is).
``fast_matmul`` (speed only; only where nothing is profiled: the saved-bytes kind)
    This CPU has no native 16-bit GEMM (minutes for one 7B-width projection). ``mm``/``addmm``/``bmm``/
    ``baddbmm`` get ``CPU``-key kernels that multiply 16-bit inputs in fp32 by column blocks and round to
    16 bits. They sit below autograd and autocast: what is saved does not change, the fp32 blocks would only
    show up as transients in a profiled timeline, which is why profiled kinds do not use it.

Not patched, and why: SDPA on CPU already runs a flash kernel that saves what CUDA's flash / memory-efficient
kernels save (q, k, v, out, fp32 logsumexp) except with attention dropout, for which the CPU falls back to
the math path; the model builders therefore set attention dropout to 0 for SDPA
(:func:`benchmarks.harness.models.sdpa_no_attn_dropout`). The CUDA caching allocator is not reproduced:
measurements are allocated bytes (``max_memory_allocated``'s notion), not reserved bytes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

MODES = ("fp32", "autocast-bf16", "autocast-fp16", "half-bf16", "half-fp16")

PATCHES = ("autocast_policy", "fused_dropout", "fused_dropout_backward", "fast_matmul")

# CUDA autocast's fp32 ops (aten/src/ATen/autocast_mode.cpp, AT_FORALL_FP32) that CPU autocast does not cast.
_CUDA_FP32_OPS = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm",
    "native_layer_norm", "group_norm", "frobenius_norm.dim", "cosine_similarity", "dist", "pdist", "renorm",
    "logsumexp",
)
# CUDA's fp32_set_opt_dtype ops (AT_FORALL_FP32_SET_OPT_DTYPE): run in fp32 unless a dtype is passed.
_CUDA_FP32_SET_OPT_DTYPE_OPS = (
    "prod", "prod.dim_int", "softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm",
    "sum", "sum.dim_IntList",
)
# CUDA's lower-precision ops that CPU autocast lacks (AT_FORALL_LOWER_PRECISION_FP).
_CUDA_LOWER_OPS = ("addmv", "addr", "einsum", "mv", "chain_matmul", "linalg_multi_dot")
# CUDA's promote ops (AT_FORALL_PROMOTE) that CPU autocast lacks.
_CUDA_PROMOTE_OPS = ("addcdiv", "addcmul", "atan2", "dot", "tensordot", "scatter_add")

_LOW = (torch.bfloat16, torch.float16)


def mode_dtypes(mode: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(weight dtype, autocast dtype or None) of a compute mode (one of :data:`MODES`)."""
    return {
        "fp32": (torch.float32, None),
        "autocast-bf16": (torch.float32, torch.bfloat16),
        "autocast-fp16": (torch.float32, torch.float16),
        "half-bf16": (torch.bfloat16, None),
        "half-fp16": (torch.float16, None),
    }[mode]


def autocast(mode: str):
    """The CPU autocast context of a mode (a null context for fp32 and half modes)."""
    _, low = mode_dtypes(mode)
    return torch.autocast("cpu", dtype=low) if low is not None else contextlib.nullcontext()


@dataclass
class Semantics:
    """What :func:`cuda_semantics` patched, and how often the dropout kernels ran (proof that it applied)."""

    mode: str
    patches: tuple[str, ...]
    calls: Counter = field(default_factory=Counter)

    def record(self) -> dict[str, Any]:
        """The JSON a measurement stores: ``{"mode", "patches", "calls"}``."""
        return {"mode": self.mode, "patches": list(self.patches), "calls": dict(sorted(self.calls.items()))}


_ACTIVE: list[Semantics] = []


def active() -> Semantics | None:
    """The innermost :func:`cuda_semantics` in effect in this process, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


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
    packet = getattr(torch.ops.aten, base)
    return getattr(packet, overload or "default")


def _autocast_kernels(lib, low: torch.dtype) -> None:
    from torch._C import DispatchKey, DispatchKeySet, _ExcludeDispatchKeyGuard

    excl = DispatchKeySet(DispatchKey.AutocastCPU)

    def fp32_kernel(op):
        def k(*args, **kwargs):
            with _ExcludeDispatchKeyGuard(excl):
                return op(*_cast_all(args, torch.float32), **{k_: _cast_all(v, torch.float32)
                                                              for k_, v in kwargs.items()})
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

    for name in _CUDA_FP32_OPS:
        lib.impl(name, fp32_kernel(_resolve(name)), "AutocastCPU")
    for name in _CUDA_FP32_SET_OPT_DTYPE_OPS:
        lib.impl(name, set_opt_dtype_kernel(_resolve(name)), "AutocastCPU")
    for name in _CUDA_LOWER_OPS:
        lib.impl(name, lower_kernel(_resolve(name)), "AutocastCPU")
    for name in _CUDA_PROMOTE_OPS:
        lib.impl(name, promote_kernel(_resolve(name)), "AutocastCPU")


def _dropout_kernels(lib, calls: Counter) -> None:
    def dropout_kernel(x, p, train):
        # at::dropout on CUDA: native_dropout (bool mask) when 0 < p < 1 (Dropout.cpp is_fused_kernel_acceptable)
        if train and 0.0 < p < 1.0 and x.numel() > 0:
            calls["dropout"] += 1
            return torch.ops.aten.native_dropout(x, p, train)[0]
        if train and p == 1.0:
            return x * torch.zeros_like(x)
        return x

    def dropout_backward_kernel(grad, mask, scale):
        calls["native_dropout_backward"] += 1
        return torch.where(mask, grad, 0.0).mul_(scale)

    lib.impl("dropout", dropout_kernel, "AutogradCPU")
    lib.impl("native_dropout_backward", dropout_backward_kernel, "CPU")


def _fast_matmul_kernels(lib) -> None:
    """CPU kernels for mm/addmm/bmm/baddbmm that compute 16-bit products in fp32 (then round to 16 bits);
    fp32 goes to the stock ``.out`` kernels. Speed only (module doc, ``fast_matmul``)."""

    def up(t):
        return t.float() if isinstance(t, torch.Tensor) and t.dtype in _LOW else t

    def make(name):
        out_op = getattr(torch.ops.aten, name).out

        def kernel(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            a, b = tensors[-2], tensors[-1]
            shape = (a.shape[0], b.shape[1]) if a.dim() == 2 else (a.shape[0], a.shape[1], b.shape[2])
            low = next((t.dtype for t in tensors if t.dtype in _LOW), None)
            if not low:
                return out_op(*args, **kwargs, out=torch.empty(shape, dtype=a.dtype))
            result = torch.empty(shape, dtype=low)
            cols = shape[-1]
            # column blocks: never an fp32 copy of a whole (vocabulary-sized) weight
            step = max(1, min(cols, (1 << 26) // max(1, b.shape[-2] * (b.shape[0] if b.dim() == 3 else 1))))
            for j in range(0, cols, step):
                blk = [up(x[..., j:j + step]) if isinstance(x, torch.Tensor) and x is not a and x.dim() >= 1
                       and x.shape[-1] == cols else up(x) for x in args]
                out = torch.empty(shape[:-1] + (min(step, cols - j),), dtype=torch.float32)
                out_op(*blk, **kwargs, out=out)
                result[..., j:j + step].copy_(out)
            return result
        return kernel

    for name in ("mm", "addmm", "bmm", "baddbmm"):
        lib.impl(name, make(name), "CPU")


@contextlib.contextmanager
def cuda_semantics(mode: str, *, fast_matmul: bool = False) -> Iterator[Semantics]:
    """Make this CPU process save and allocate what a CUDA GPU would (every patch of the module doc that
    applies to ``mode``); yields the :class:`Semantics` a measurement records. ``fast_matmul`` adds the
    speed-only matmul kernels (never where allocations are profiled)."""
    _, low = mode_dtypes(mode)
    patches = (("autocast_policy",) if low is not None else ()) + ("fused_dropout", "fused_dropout_backward") \
        + (("fast_matmul",) if fast_matmul and mode != "fp32" else ())
    sem = Semantics(mode, patches)
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel" for the same op and key
        if low is not None:
            _autocast_kernels(lib, low)
        _dropout_kernels(lib, sem.calls)
        if "fast_matmul" in patches:
            _fast_matmul_kernels(lib)
    _ACTIVE.append(sem)
    try:
        yield sem
    finally:
        _ACTIVE.remove(sem)
        lib._destroy()
