"""Ground-truth harness: what autograd really saves, and what a whole training step really peaks at.

Builds a real ``transformers`` causal LM from a config dict with random weights and a few layers, runs one
training-mode forward pass with labels under a compute mode, and records every tensor autograd saves for
backward with :func:`torch.autograd.graph.saved_tensors_hooks`. Saved tensors are deduplicated by storage
(``untyped_storage().data_ptr()``, whole storage bytes, because a saved view keeps its whole storage alive);
parameters, anything sharing storage with a parameter, and autocast's low-precision copies of the weights
are excluded from the activation count (the copies are reported on their own, as ``weight_copies``).

Per-layer and fixed bytes come from two forward passes of one model: first with 1 decoder layer, then with a
second layer appended that *shares the first layer's parameters* (parameters are excluded from the count, so
sharing them changes nothing that is measured and halves the harness's memory). ``per_layer = m(2) - m(1)``,
``fixed = m(1) - per_layer``; the full model is ``fixed + num_layers * per_layer``.

The measurement runs on CPU but reproduces what the same forward saves on a CUDA GPU:

* autocast: CPU autocast has different op lists from CUDA autocast. :func:`cuda_semantics` registers Python
  kernels at the ``AutocastCPU`` dispatch key for the ops that CUDA autocast runs in fp32 and CPU autocast
  leaves alone (``pow``, ``rsqrt``, ``exp``, ``layer_norm``, ``softmax``/``log_softmax`` without a dtype,
  ``sum``, ...; the lists of ``aten/src/ATen/autocast_mode.cpp``) and for CUDA's extra low-precision ops
  (``einsum``, ``mv``, ...). Example: GPT-2's ``gelu_new`` calls ``torch.pow``, so on CUDA its MLP saves fp32
  tensors; on plain CPU autocast it would save bf16 ones.
* dropout: on CUDA ``F.dropout`` runs the fused ``native_dropout`` kernel, which saves a 1-byte bool mask; on
  CPU it multiplies by a noise tensor of the input's dtype (2 or 4 bytes). :func:`cuda_semantics` routes
  ``aten::dropout`` to ``native_dropout`` so the CPU run saves what the GPU run saves.
* SDPA: on CPU, PyTorch's flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) saves q, k, v, out and
  the fp32 logsumexp, as the CUDA flash / memory-efficient kernels do. Attention *dropout* inside SDPA has no
  CPU flash kernel (CPU falls back to the math path, which materializes the b*h*s*s probabilities and mask),
  while the CUDA kernels regenerate the mask from a Philox seed; so SDPA measurements run with
  ``attention_dropout = 0`` (what the GPU saves either way, plus two scalars).
* speed only: this CPU has no native 16-bit GEMM, so ``mm``/``addmm``/``bmm``/``baddbmm`` get CPU-key kernels that
  multiply 16-bit inputs in fp32 (below autograd and autocast: what is saved does not change).

Besides :func:`measure_saved`: :func:`measure_backward_peak` (the backward's transient on top of the forward's
level, from the profiler's memory timeline) and :func:`measure_step_peak` (peak of a whole training step).

This module is never imported by ``advisor``; the CLI stays free of torch.
"""

from __future__ import annotations

import contextlib
import copy
import gc
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

MODES = ("fp32", "autocast-bf16", "autocast-fp16", "half-bf16", "half-fp16")


def catalog_config(name: str) -> dict[str, Any]:
    """The ``config`` dict (real HF config.json keys) of a model in ``advisor/data/models.yaml``: the same
    dict the estimator normalizes, so harness and estimate see one architecture."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "advisor" / "data" / "models.yaml"
    for entry in yaml.safe_load(path.read_text())["models"]:
        if entry["name"] == name or name in entry.get("aliases", ()):
            return dict(entry["config"])
    raise KeyError(f"{name!r} is not in {path}")


def _dtype(mode: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(weight dtype, autocast dtype or None) of a compute mode."""
    return {
        "fp32": (torch.float32, None),
        "autocast-bf16": (torch.float32, torch.bfloat16),
        "autocast-fp16": (torch.float32, torch.float16),
        "half-bf16": (torch.bfloat16, None),
        "half-fp16": (torch.float16, None),
    }[mode]


# ----------------------------------------------------------------------------------------------------------
# CUDA semantics on CPU
# ----------------------------------------------------------------------------------------------------------
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


_LOW = (torch.bfloat16, torch.float16)


def _fast_matmul_kernels(lib) -> None:
    """CPU kernels for mm/addmm/bmm that compute 16-bit products in fp32 (then round to 16 bits).

    This CPU has no native bf16 GEMM: PyTorch's fallback takes minutes for one 7B-width projection. These
    kernels sit at the CPU backend key, *below* autograd and autocast, so what autograd saves is unchanged
    (same inputs, same output dtype); only the arithmetic is faster. fp32 goes to the stock ``.out`` kernels.
    Not used where allocations are profiled (the fp32 copies would show up as transients)."""

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
def cuda_semantics(mode: str, fast_matmul: bool = False) -> Iterator[None]:
    """Make CPU save what CUDA saves: CUDA autocast op policy and the fused dropout kernel (see module doc).
    ``fast_matmul``: see :func:`_fast_matmul_kernels` (speed only)."""
    from torch._C import DispatchKey, DispatchKeySet, _ExcludeDispatchKeyGuard

    lib = torch.library.Library("aten", "IMPL")
    excl = DispatchKeySet(DispatchKey.AutocastCPU)
    _, low = _dtype(mode)

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

    def dropout_kernel(x, p, train):
        # at::dropout on CUDA: native_dropout (bool mask) when 0 < p < 1 (Dropout.cpp is_fused_kernel_acceptable)
        if train and 0.0 < p < 1.0 and x.numel() > 0:
            return torch.ops.aten.native_dropout(x, p, train)[0]
        if train and p == 1.0:
            return x * torch.zeros_like(x)
        return x

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel" for the same op and key
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
        if fast_matmul and mode != "fp32":
            _fast_matmul_kernels(lib)
    try:
        yield
    finally:
        lib._destroy()


# ----------------------------------------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------------------------------------
def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList holding the decoder layers (the longest ModuleList whose items are all one class)."""
    best = None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(x) for x in m}) == 1:
            if "Layer" in type(m[0]).__name__ or "Block" in type(m[0]).__name__:
                if best is None or len(m) > len(best):
                    best = m
    if best is None:
        raise RuntimeError("cannot find the decoder layers")
    return best


SELECTIVE = "dsadvise_selective_eager"


def _register_selective() -> None:
    """Selective recomputation (Korthikanti et al. 2022) for eager attention: the attention interface call
    (QKᵀ, soft-capping, softmax, dropout, ·V) runs under a non-reentrant checkpoint, so only its inputs are
    kept. Registered as an attention implementation that wraps the model's own ``eager_attention_forward``."""
    import sys

    from torch.utils.checkpoint import checkpoint
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    def selective(module, query, key, value, attention_mask, **kwargs):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return checkpoint(eager, module, query, key, value, attention_mask, use_reentrant=False, **kwargs)

    AttentionInterface.register(SELECTIVE, selective)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SELECTIVE, eager_mask)


def make_config(cfg: dict[str, Any], attn: str, num_layers: int = 1, **overrides: Any):
    from transformers import AutoConfig

    d = dict(cfg)
    d.update(overrides)
    model_type = d.pop("model_type")
    d["num_hidden_layers"] = num_layers
    if model_type == "gpt2":
        d["n_layer"] = num_layers
    config = AutoConfig.for_model(model_type, **d)
    config._attn_implementation = attn
    config.use_cache = False
    return config


def build_model(cfg: dict[str, Any], *, attn: str = "sdpa", mode: str = "fp32", seed: int = 0,
                **overrides: Any) -> nn.Module:
    """A 1-layer random-weight model in train mode, with weights in the mode's dtype."""
    wdtype, _ = _dtype(mode)
    config = make_config(cfg, attn, 1, **overrides)
    return _instantiate(config, attn, wdtype, seed)


def _instantiate(config, attn: str, wdtype: torch.dtype, seed: int) -> nn.Module:
    """from_config without transformers' slow random init (minutes of RNG on 2 cores for 7B widths); every
    parameter is filled from one small seeded random block instead (values do not change what is saved)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    prev = torch.get_default_dtype()
    torch.set_default_dtype(wdtype)
    try:
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    finally:
        torch.set_default_dtype(prev)
    model.to(wdtype)
    model.tie_weights()   # no_init_weights also skips the tying that init_weights does (tied lm_head)
    g = torch.Generator().manual_seed(seed)
    block = (torch.randn(_FILL, generator=g) * 0.02).to(wdtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.view(-1)
            if "norm" in name and p.dim() == 1 and "bias" not in name:
                flat.fill_(1.0)
                continue
            for i in range(0, flat.numel(), _FILL):
                n = min(_FILL, flat.numel() - i)
                flat[i:i + n].copy_(block[:n])
    model.train()
    return model


_FILL = 1_000_003  # prime, so the repeated block does not line up with rows


def add_shared_layer(model: nn.Module) -> None:
    """Append a copy of the first decoder layer that shares its parameters (layer_idx = next index)."""
    layers = _layer_list(model)
    first = layers[0]
    memo = {id(p): p for p in first.parameters()}
    new = copy.deepcopy(first, memo)
    idx = len(layers)
    for m in new.modules():
        if hasattr(m, "layer_idx"):
            m.layer_idx = idx
    if hasattr(new, "gradient_checkpointing"):
        new.gradient_checkpointing = first.gradient_checkpointing
    layers.append(new)
    cfg = model.config
    cfg.num_hidden_layers = idx + 1
    lt = getattr(cfg, "layer_types", None)
    if lt is not None and len(lt) < idx + 1:
        cfg.layer_types = list(lt) + [lt[idx % len(lt)] if len(lt) > 1 else lt[0]]


# ----------------------------------------------------------------------------------------------------------
# LoRA / freeze (peft is not installed: a faithful stand-in for peft's LoraLayer.forward)
# ----------------------------------------------------------------------------------------------------------
LORA_TARGETS_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                    "qkv_proj", "gate_up_proj", "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h",
                    "c_attn", "c_proj", "c_fc", "fc1", "fc2", "out_proj", "w1", "w2", "w3")


class LoraLinear(nn.Module):
    """``peft.tuners.lora.Linear`` forward: base(x) + B(A(dropout(x.to(A.dtype)))) * scaling.

    peft keeps adapter weights in fp32 (``autocast_adapter_dtype=True``) and casts the input to the adapter
    dtype (``_cast_input_dtype``) before ``lora_A``; dropout defaults to 0 (identity).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float = 32.0, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        w = base.weight
        in_f, out_f = (w.shape[1], w.shape[0]) if isinstance(base, nn.Linear) else (w.shape[0], w.shape[1])
        self.lora_A = nn.Linear(in_f, rank, bias=False, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, out_f, bias=False, dtype=torch.float32)
        nn.init.normal_(self.lora_B.weight, std=0.02)  # random (not zero) so every path is exercised
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank

    def forward(self, x):
        result = self.base_layer(x)
        dtype = result.dtype
        xa = x.to(self.lora_A.weight.dtype) if x.dtype != self.lora_A.weight.dtype else x
        result = result + self.lora_B(self.lora_A(self.dropout(xa))) * self.scaling
        return result.to(dtype)


def apply_method(model: nn.Module, method: str, *, lora_rank: int = 16, trainable_layers: int = 2) -> None:
    """full: everything trains; lora: frozen base + adapters on every linear of the decoder layers;
    freeze: only the last ``trainable_layers`` decoder layers train (LLaMA-Factory's freeze tuning)."""
    if method == "full":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    layers = _layer_list(model)
    if method == "lora":
        from transformers.pytorch_utils import Conv1D

        for layer in layers:
            for name, mod in list(layer.named_modules()):
                for cname, child in list(mod.named_children()):
                    if isinstance(child, (nn.Linear, Conv1D)) and cname in LORA_TARGETS_ALL:
                        setattr(mod, cname, LoraLinear(child, lora_rank))
    elif method == "freeze":
        for layer in list(layers)[-trainable_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
    else:
        raise ValueError(f"unsupported method {method!r}")


# ----------------------------------------------------------------------------------------------------------
# Saved-tensor measurement
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SavedRecord:
    bytes: int
    shape: tuple[int, ...]
    dtype: str
    producer: str
    module: str


@dataclass
class Snapshot:
    activations: int                      # saved bytes, params and weight copies excluded
    weight_copies: int                    # autocast low-precision copies of parameters that were saved
    records: list[SavedRecord] = field(default_factory=list)


def _is_weight_copy(t: torch.Tensor, param_ids: set[int], param_shapes: set[tuple]) -> bool:
    """A low-precision cast of a parameter (autocast's cached or uncached weight cast)."""
    if t._is_view() and t._base is not None:  # e.g. the transposed weight copy that mm saves
        t = t._base
    fn = t.grad_fn
    if fn is not None:
        if type(fn).__name__ != "ToCopyBackward0":
            return False
        nxt = fn.next_functions
        return bool(nxt) and nxt[0][0] is not None and hasattr(nxt[0][0], "variable") and \
            id(nxt[0][0].variable) in param_ids
    # frozen weights: the cast has no grad_fn; recognize it by a parameter's shape in a half dtype
    return t.dtype in (torch.bfloat16, torch.float16) and tuple(t.shape) in param_shapes and not t.requires_grad


class _Recorder:
    def __init__(self, model: nn.Module):
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.param_ids = {id(p) for p in model.parameters()}
        self.param_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
        self.frozen_half = any(not p.requires_grad for p in model.parameters())
        self.seen: dict[int, tuple[int, bool]] = {}
        self.records: list[SavedRecord] = []
        self.module_stack: list[str] = []
        self.names = {m: n for n, m in model.named_modules()}

    def pack(self, t: torch.Tensor):
        if t.device.type != "meta":
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr and ptr not in self.param_ptrs and ptr not in self.seen:
                wc = _is_weight_copy(t, self.param_ids, self.param_shapes if self.frozen_half else set())
                self.seen[ptr] = (st.nbytes(), wc)
                self.records.append(SavedRecord(
                    st.nbytes(), tuple(t.shape), str(t.dtype).replace("torch.", ""),
                    type(t.grad_fn).__name__ if t.grad_fn is not None else ("leaf" if t.requires_grad else "-"),
                    ("weight-copy " if wc else "") + (self.module_stack[-1] if self.module_stack else "")))
        # a detached alias (same storage and version counter): returning ``t`` itself would make a saved
        # *output* hold its own grad_fn through C++ (tensor -> node -> saved variable -> tensor), a cycle
        # Python's GC cannot see, and every measured model would leak
        return t.detach()

    def snapshot(self) -> Snapshot:
        act = sum(b for b, wc in self.seen.values() if not wc)
        wcs = sum(b for b, wc in self.seen.values() if wc)
        return Snapshot(act, wcs, list(self.records))


@contextlib.contextmanager
def _module_tracking(rec: _Recorder) -> Iterator[None]:
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    def pre(mod, args):
        rec.module_stack.append(rec.names.get(mod, type(mod).__name__))

    def post(mod, args, out):
        if rec.module_stack:
            rec.module_stack.pop()

    h1 = register_module_forward_pre_hook(pre)
    h2 = register_module_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def _forward_saved(model: nn.Module, mode: str, input_ids: torch.Tensor) -> tuple[Snapshot, Any]:
    _, low = _dtype(mode)
    rec = _Recorder(model)
    ac = torch.autocast("cpu", dtype=low) if low is not None else contextlib.nullcontext()
    with cuda_semantics(mode, fast_matmul=True), _module_tracking(rec), \
            torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), ac:
        out = model(input_ids=input_ids, labels=input_ids)
    snap = rec.snapshot()
    return snap, out


@dataclass
class Measurement:
    case: dict[str, Any]
    one: Snapshot            # 1-layer model
    two: Snapshot            # 2-layer model (second layer shares the first one's parameters)
    logits_held: int         # bytes of the logits tensor the model returns (alive while the caller holds it)

    @property
    def per_layer(self) -> int:
        return self.two.activations - self.one.activations

    @property
    def fixed(self) -> int:
        return self.one.activations - self.per_layer

    def total(self, num_layers: int) -> int:
        return self.fixed + num_layers * self.per_layer


def measure_saved(cfg: dict[str, Any], *, seq_len: int, batch: int = 1, mode: str = "fp32",
                  attn: str = "sdpa", checkpointing: str = "none", method: str = "full",
                  lora_rank: int = 16, seed: int = 0, **overrides: Any) -> Measurement:
    """Saved-for-backward bytes of a 1-layer and a 2-layer model (see module doc)."""
    if attn == "sdpa":
        overrides = {**_sdpa_no_attn_dropout(cfg), **overrides}
    impl = attn
    if checkpointing == "selective" and attn == "eager":
        _register_selective()
        impl = SELECTIVE    # with SDPA nothing quadratic is saved: selective is measured as none
    model = build_model(cfg, attn=impl, mode=mode, seed=seed, **overrides)
    if checkpointing == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing not in ("none", "selective"):
        raise ValueError("the harness measures checkpointing none|full|selective")
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
    apply_method(model, method, lora_rank=lora_rank, trainable_layers=1)
    one, out = _forward_saved(model, mode, input_ids)
    logits_held = out.logits.untyped_storage().nbytes()
    del out
    gc.collect()
    add_shared_layer(model)
    if method == "lora":
        pass  # the copied layer carries its own (unshared) LoRA adapters, as a real second layer would
    two, out = _forward_saved(model, mode, input_ids)
    del out, model
    gc.collect()
    case = dict(seq_len=seq_len, batch=batch, mode=mode, attn=attn, checkpointing=checkpointing, method=method)
    return Measurement(case, one, two, logits_held)


def _sdpa_no_attn_dropout(cfg: dict[str, Any]) -> dict[str, Any]:
    """Attention-probability dropout off for SDPA runs (CPU has no fused SDPA-dropout kernel; module doc)."""
    out = {}
    for key in ("attn_pdrop", "attention_dropout"):
        if cfg.get(key):
            out[key] = 0.0
    return out


def print_records(snap: Snapshot, limit: int | None = None) -> None:
    rows = sorted(snap.records, key=lambda r: -r.bytes)[:limit]
    for r in rows:
        print(f"{r.bytes:>14,d}  {r.dtype:<9} {str(r.shape):<28} {r.producer:<28} {r.module}")


# ----------------------------------------------------------------------------------------------------------
# Backward transients
# ----------------------------------------------------------------------------------------------------------
@dataclass
class BackwardPeak:
    forward_level: int   # bytes allocated at the end of the forward above the level before it
    transient: int       # peak during backward above the end-of-forward level
    weight_copies: int   # autocast weight copies saved (part of forward_level)
    logits_held: int


_MARK_BYTES = 7_777_777  # an allocation of this odd size marks a point in the profiled timeline


def _mark() -> None:
    m = torch.empty(_MARK_BYTES, dtype=torch.uint8)
    del m


def _live_curve(prof) -> tuple[list[int], list[int]]:
    """Live bytes after each allocation event (CREATE/DESTROY of the profiler's memory timeline, the data
    behind ``export_memory_timeline``), and the indices of the marker allocations (see :func:`_mark`)."""
    from torch.profiler._memory_profiler import Action

    live, curve, marks = 0, [], []
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            if size == _MARK_BYTES:
                marks.append(len(curve))
            live += size
        elif action == Action.DESTROY:
            live -= size
        else:
            continue
        curve.append(live)
    return curve, marks


@contextlib.contextmanager
def _fused_dropout_backward() -> Iterator[None]:
    """CUDA's native_dropout_backward is one fused kernel (aten/src/ATen/native/cuda/Dropout.cu, masked_scale):
    it allocates the gradient only. The CPU kernel computes ``grad * mask * scale``, and TensorIterator first
    casts the bool mask to the gradient's dtype on CPU: an extra gradient-sized temporary that a GPU never
    allocates. This replaces the CPU kernel by a one-allocation equivalent (``where`` takes the bool mask as
    is), so the measured backward transient is the CUDA one."""
    lib = torch.library.Library("aten", "IMPL")

    def kernel(grad, mask, scale):
        return torch.where(mask, grad, 0.0).mul_(scale)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib.impl("native_dropout_backward", kernel, "CPU")
    try:
        yield
    finally:
        lib._destroy()


def measure_backward_peak(cfg: dict[str, Any], *, seq_len: int, batch: int = 1, mode: str = "fp32",
                          attn: str = "sdpa", checkpointing: str = "none", seed: int = 0,
                          **overrides: Any) -> BackwardPeak:
    """Transient memory of the backward pass on top of what the forward left allocated.

    2 decoder layers (the second sharing the first's parameters), full fine-tuning. The backward is
    ``torch.autograd.grad(loss, first_layer_input)``: every activation gradient is computed as in training,
    but no parameter gradient is formed (those are model states, counted elsewhere). The caller keeps the
    model output (and so the logits) alive during backward, as ``outputs = model(**batch)`` does.
    """
    from torch.profiler import ProfilerActivity, profile

    if attn == "sdpa":
        overrides = {**_sdpa_no_attn_dropout(cfg), **overrides}
    impl = attn
    if checkpointing == "selective" and attn == "eager":
        _register_selective()
        impl = SELECTIVE
    model = build_model(cfg, attn=impl, mode=mode, seed=seed, **overrides)
    add_shared_layer(model)
    if checkpointing == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, low = _dtype(mode)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g)
    captured: list[torch.Tensor] = []
    # the first decoder layer's input: saved by the layer anyway, so capturing it keeps nothing extra alive
    hook = _layer_list(model)[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    rec = _Recorder(model)
    gc.collect()
    with cuda_semantics(mode), _fused_dropout_backward():
        ac = torch.autocast("cpu", dtype=low) if low is not None else contextlib.nullcontext()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            _mark()
            with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), ac:
                out = model(input_ids=ids, labels=ids)
            _mark()
            torch.autograd.grad(out.loss, captured[:1])
            _mark()
    hook.remove()
    logits_held = out.logits.untyped_storage().nbytes()
    curve, marks = _live_curve(prof)
    i0, i1, i2 = marks[:3]
    base, level = curve[i0] - _MARK_BYTES, curve[i1] - _MARK_BYTES
    peak = max(curve[i1 + 2:i2] or [level])
    snap = rec.snapshot()
    del out, model, captured
    gc.collect()
    return BackwardPeak(forward_level=level - base, transient=peak - level, weight_copies=snap.weight_copies,
                        logits_held=logits_held)


# ----------------------------------------------------------------------------------------------------------
# Whole training step peak
# ----------------------------------------------------------------------------------------------------------
@dataclass
class StepPeak:
    peak: int          # peak bytes allocated during step 2 (forward + backward + AdamW step) above baseline
    baseline: int      # bytes allocated inside the profiled window before step 2 (0: params etc. predate it)
    params: int
    adam_states: int


def measure_step_peak(cfg: dict[str, Any], *, num_layers: int = 2, seq_len: int = 128, batch: int = 1,
                      mode: str = "fp32", attn: str = "sdpa", checkpointing: str = "none",
                      seed: int = 0, **overrides: Any) -> StepPeak:
    """Peak CPU-allocator bytes of the second full training step (forward+backward+AdamW), tracked with
    ``torch.profiler.profile(profile_memory=True)`` allocation events. Layers do not share parameters here."""
    if attn == "sdpa":
        overrides = {**_sdpa_no_attn_dropout(cfg), **overrides}
    wdtype, low = _dtype(mode)
    config = make_config(cfg, attn, num_layers, **overrides)
    model = _instantiate(config, attn, wdtype, seed)
    if checkpointing == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len))

    def step():
        ac = torch.autocast("cpu", dtype=low) if low is not None else contextlib.nullcontext()
        with ac:
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()                      # the caller's output (and its logits) is still alive, as in
        opt.zero_grad(set_to_none=True)  # accelerate's loop: outputs = model(**batch); ...; optimizer.step()
        del out

    with cuda_semantics(mode):
        step()
        gc.collect()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            _mark()
            step()
            _mark()
    curve, marks = _live_curve(prof)
    base = curve[marks[0]] - _MARK_BYTES
    peak = max(curve[marks[0] + 2:marks[1]] or [base])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    states = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor) and t.dim() > 0)
    del model, opt
    gc.collect()
    return StepPeak(peak=peak - base, baseline=base, params=params, adam_states=states)


if __name__ == "__main__":  # pragma: no cover - exploration helper
    import argparse

    ap = argparse.ArgumentParser(description="print what autograd saves for one config")
    ap.add_argument("model", help="a catalog name (advisor/data/models.yaml)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mode", default="fp32", choices=MODES)
    ap.add_argument("--attn", default="sdpa", choices=("eager", "sdpa"))
    ap.add_argument("--ckpt", default="none", choices=("none", "full", "selective"))
    ap.add_argument("--method", default="full", choices=("full", "lora", "freeze"))
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--override", nargs="*", default=[], help="key=value config overrides (ints/floats)")
    a = ap.parse_args()
    ov = {}
    for kv in a.override:
        k, v = kv.split("=")
        ov[k] = int(v) if v.isdigit() else float(v)
    cfg = catalog_config(a.model)
    m = measure_saved(cfg, seq_len=a.seq, batch=a.batch, mode=a.mode, attn=a.attn,
                      checkpointing=a.ckpt, method=a.method, **ov)
    print("== 2-layer records (largest first)")
    print_records(m.two, a.limit)
    print(f"per_layer={m.per_layer:,}  fixed={m.fixed:,}  weight_copies(2L)={m.two.weight_copies:,}  "
          f"logits_held={m.logits_held:,}")
    L = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    print(f"full model ({L} layers): {m.total(L):,} bytes = {m.total(L) / 2**30:.3f} GiB")
