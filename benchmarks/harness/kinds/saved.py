"""Saved activations: the bytes autograd saves for backward in one training forward, at real widths.

Builds a real ``transformers`` causal LM from the case's config with 1 decoder layer, runs one
training-mode forward with labels under :func:`cuda_semantics` (with the speed-only matmul kernels) and
records every tensor autograd saves with :func:`torch.autograd.graph.saved_tensors_hooks`. Saved tensors are
deduplicated by storage (``untyped_storage().data_ptr()``, whole storage bytes, because a saved view keeps
its whole storage alive); parameters, anything sharing storage with a parameter, and autocast's
low-precision copies of the weights are excluded from the activation count (the copies are reported on
their own, as ``weight_copies``). Then a second layer sharing the first one's parameters is appended and
the forward repeated: ``per_layer = m(2) - m(1)``, ``fixed = m(1) - per_layer``, and the full model saves
``fixed + layers_that_save * per_layer``. The estimate is ``advisor.memory.activations.activation_memory``.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from benchmarks.harness.cases import Case, model_label
from benchmarks.harness.kinds import Row
from benchmarks.harness.models import (SELECTIVE, add_shared_layer, apply_method, build_model,
                                       register_selective, sdpa_no_attn_dropout)
from benchmarks.harness.semantics import Semantics, autocast, cuda_semantics

TITLE = "Saved activations"
ORDER = 10
UNIT = "GiB"
SOURCES = ("semantics", "models")
COLUMNS = ("per-layer measured MiB", "per-layer estimated MiB")
DESCRIPTION = (
    "**Measured**: bytes autograd saves for backward in one training forward with labels, recorded with "
    "`torch.autograd.graph.saved_tensors_hooks`, deduplicated by storage, parameters and autocast weight "
    "copies excluded (`benchmarks/harness/kinds/saved.py`); real `transformers` models built from the "
    "catalog configs at their real widths with 1 and 2 layers, extrapolated to the full depth "
    "(`fixed + num_layers * per_layer`). **Estimated**: `advisor.memory.activations`, from the architecture "
    "alone.")


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


def is_weight_copy(t: torch.Tensor, param_ids: set[int], param_shapes: set[tuple]) -> bool:
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
                wc = is_weight_copy(t, self.param_ids, self.param_shapes if self.frozen_half else set())
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
    rec = _Recorder(model)
    with _module_tracking(rec), torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), autocast(mode):
        out = model(input_ids=input_ids, labels=input_ids)
    snap = rec.snapshot()
    return snap, out


@dataclass
class Measurement:
    case: dict[str, Any]
    one: Snapshot            # 1-layer model
    two: Snapshot            # 2-layer model (second layer shares the first one's parameters)
    logits_held: int         # bytes of the logits tensor the model returns (alive while the caller holds it)
    semantics: Semantics

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
    """Saved-for-backward bytes of a 1-layer and a 2-layer model (see module doc), under
    :func:`cuda_semantics` with the speed-only matmul kernels."""
    with cuda_semantics(mode, fast_matmul=True) as sem:
        return _measure_saved(cfg, sem, seq_len=seq_len, batch=batch, mode=mode, attn=attn,
                              checkpointing=checkpointing, method=method, lora_rank=lora_rank, seed=seed,
                              **overrides)


def _measure_saved(cfg: dict[str, Any], sem: Semantics, *, seq_len: int, batch: int, mode: str, attn: str,
                   checkpointing: str, method: str, lora_rank: int, seed: int, **overrides: Any) -> Measurement:
    if attn == "sdpa":
        overrides = {**sdpa_no_attn_dropout(cfg), **overrides}
    impl = attn
    if checkpointing == "selective" and attn == "eager":
        register_selective()
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
    return Measurement(case, one, two, logits_held, sem)



def print_records(snap: Snapshot, limit: int | None = None) -> None:
    rows = sorted(snap.records, key=lambda r: -r.bytes)[:limit]
    for r in rows:
        print(f"{r.bytes:>14,d}  {r.dtype:<9} {str(r.shape):<28} {r.producer:<28} {r.module}")


# ----------------------------------------------------------------------------------------------------------
# The kind
# ----------------------------------------------------------------------------------------------------------
label = model_label


def measure(case: Case) -> dict[str, Any]:
    """``{"fixed", "per_layer", "logits_held", "weight_copies", "cuda_semantics"}`` of the case (bytes)."""
    from benchmarks.harness.estimates import LORA_RANK

    s = case.settings
    m = measure_saved(case.config(), seq_len=s["seq"], batch=s["batch"], mode=s["mode"], attn=s["attn"],
                      checkpointing=s.get("ckpt", "none"), method=s.get("method", "full"), lora_rank=LORA_RANK)
    return {"fixed": m.fixed, "per_layer": m.per_layer, "logits_held": m.logits_held,
            "weight_copies": m.two.weight_copies, "cuda_semantics": m.semantics.record()}


def compare(case: Case, measured: dict[str, Any]) -> Row:
    """Full-depth saved bytes against ``activation_memory(...).activations``."""
    from advisor.memory.activations import activation_memory

    from benchmarks.harness.estimates import architecture, layers_that_save, training_spec

    arch = architecture(case)
    est = activation_memory(arch, training_spec(case), case.settings["mode"])
    total = measured["fixed"] + layers_that_save(arch.num_layers, case) * measured["per_layer"]
    return Row(case, total, est.activations,
               [f"{measured['per_layer'] / 2**20:.1f}", f"{est.breakdown['per_layer'] / 2**20:.1f}"])
