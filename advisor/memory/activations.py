"""Activation memory from what each transformer block really saves for backward.

Instead of one textbook formula, this module *replays* the forward pass of the Hugging Face
``transformers`` (v5) implementation of the model's family on symbolic tensors: each tensor carries an
element count, a dtype, a ``requires_grad`` flag and a storage id. Every op applies PyTorch autograd's own
rule for what it saves (``tools/autograd/derivatives.yaml``: ``mm`` saves ``self`` only when the weight needs
a gradient, ``softmax`` saves its result, ``silu`` its input, ...), the dtype rules of the compute mode (CUDA
autocast's op lists from ``aten/src/ATen/autocast_mode.cpp``, type promotion, the explicit ``.float()``
upcasts of the HF code) and the storage aliasing that decides whether two saved tensors share memory (a view
of a fused QKV projection keeps the whole projection alive). Saved storages are counted once.

Nothing is fitted: every byte comes from a tensor the HF module creates. ``benchmarks/harness/kinds/saved.py`` records
the same quantity on real models with ``torch.autograd.graph.saved_tensors_hooks`` and
``benchmarks/accuracy.py`` compares the two (see ``docs/accuracy.md``).

Pure arithmetic: no torch, no transformers (the CLI must start fast).

Conventions
-----------
* ``activations``: bytes autograd holds after the forward of one micro-batch (per GPU). Parameters and
  anything aliasing them are excluded. Under autocast over fp32 weights, the low-precision weight copies that
  linears save are *not* activations; they are reported as ``breakdown["info:autocast_weight_copies"]``
  (they scale with parameters, not tokens).
* ``temporaries``: the transient peak on top of ``activations`` during backward. The trace also records the
  autograd node each op creates, and ``_replay_backward`` runs them the way autograd's engine does
  (descending sequence number): each node allocates its inputs' gradients (or hands on / views the incoming
  one), plus the temporaries its formula allocates; it then releases its saved tensors (a storage dies with
  the last node that saved it) and its incoming gradient; a second gradient arriving at a tensor is
  accumulated in place or out of place by ``InputBuffer``'s rule; a checkpointed region (full or selective)
  rebuilds its saved set when its first node unpacks one. ``temporaries`` is the larger of two moments: the
  loss and final-norm backward (two fp32 N x V gradients while everything is saved) and the backward of the
  last decoder layer (the first to run), each including the logits tensor the caller's output still holds,
  plus QLoRA's dequantized weight. Parameter gradients are model states, counted elsewhere. Validated
  against the CPU allocator in ``docs/accuracy.md`` (fp32); half-precision modes apply the same accounting
  with their dtype sizes (not measurable on a CPU without fast 16-bit GEMM). Kernel-internal workspaces of
  fused attention backwards (SDPA/flash) are not modeled.
* ``breakdown``: named byte terms. ``embeddings + rope_cache + layers + final_norm + logits_and_loss
  (+ attention_mask)`` sum to ``activations``; ``per_layer`` is one decoder layer (``layers`` = the first
  layer + the rest; the first may differ when its input needs no gradient); ``temp:*`` terms are the
  moments whose maximum is ``temporaries`` (bytes above the whole end-of-forward activations level, held
  logits included); ``info:*`` terms are in neither sum (the logits tensor held by the caller, already inside
  ``temp:*``; ``info:layer_transient``, one decoder layer's backward peak above what is still saved at that
  moment, for placing it at any layer; autocast's low-precision weight copies, which scale with parameters,
  for the model-state side).
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
  ``MatMul4Bit`` saves its input whenever that input requires grad (bitsandbytes autograd/_functions.py) and
  dequantizes one weight at a time (a temporary).
  ``freeze``: only the last ``freeze_trainable_layers`` decoder layers train.
"""

from __future__ import annotations

import itertools
from collections import Counter
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from advisor.architecture import Architecture
from advisor.datacache import computed
from advisor.specs import TrainingSpec

# autocast16-*: torch autocast over 16-bit weights (FSDP MixedPrecision param_dtype; a LoRA/QLoRA base loaded in
# 16 bit under accelerate's autocast): autocast's op lists, but parameters and the embedding output are 16-bit.
ComputeMode = Literal["fp32", "autocast-fp16", "autocast-bf16", "autocast16-fp16", "autocast16-bf16",
                      "half-fp16", "half-bf16"]

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
    projection output; ``param`` marks parameters (never counted). ``tid`` names the tensor itself (a view is a
    new tensor: gradients flow per tensor, memory is per storage); ``p`` marks tensors on the path from the
    backward's target (the first decoder layer's input) to the loss: only those get gradients."""

    __slots__ = ("n", "dt", "rg", "sid", "bshd", "param", "tid", "p")
    _ids = itertools.count(1)

    def __init__(self, n: int, dt: str, rg: bool, sid: int, bshd: bool = False, param: bool = False):
        self.n, self.dt, self.rg, self.sid, self.bshd, self.param = n, dt, rg, sid, bshd, param
        self.tid = next(_T._ids)
        self.p = False

    @property
    def nbytes(self) -> int:
        return self.n * _BYTES[self.dt]


class _Node:
    """One autograd node of the backward graph, in creation (sequence-number) order. ``outs``: the tensors
    whose gradients it consumes; ``ins``: (tensor id, gradient bytes, how) for each input that gets a
    gradient, ``how`` one of ``new`` (a fresh dense buffer), ``newview`` (a fresh buffer handed on as a view,
    e.g. through the ViewBackward of a linear's flattened input), ``alias`` (the incoming gradient itself,
    e.g. AddBackward), ``view`` (a view of the incoming gradient); ``saved``: storages it saved (released
    after it runs); ``temp``: bytes its formula allocates and frees internally on top of its results."""

    __slots__ = ("outs", "ins", "saved", "temp", "term")

    def __init__(self, outs: list[int], ins: list[tuple[int, int, str]], saved: list[int], temp: int, term: str):
        self.outs, self.ins, self.saved, self.temp, self.term = outs, ins, saved, temp, term


def _promote(a: str, b: str) -> str:
    """Type promotion of two floating dtypes (bf16 with fp16 never meets here)."""
    return a if a == b else "f32"


class _Trace:
    """Replays a forward pass: creates tensors, records what ops save (counting storages once) and the autograd
    node each op creates (for the backward replay, :func:`_replay_backward`)."""

    def __init__(self, mode: ComputeMode, batch: int, seq: int):
        self.autocast = mode.startswith("autocast")
        self.low = "f32" if mode == "fp32" else ("bf16" if mode.endswith("bf16") else "f16")
        self.pdt = self.low if mode.startswith(("half", "autocast16")) else "f32"   # parameter (and embedding output) dtype
        self.b, self.s, self.N = batch, seq, batch * seq
        self._next = 0
        self.size: dict[int, int] = {}
        self.saved: dict[int, str] = {}
        self.owner: dict[int, str] = {}   # storages always counted under one term (the shared RoPE cache)
        self.term = "misc"
        self.weight_copy_elems = 0      # autocast low-precision copies of fp32 weights that linears save
        self.nodes: list[_Node] = []
        self._pend: list[int] = []      # storages saved by the op being recorded (its node releases them)
        self.events: list | None = None  # allocation log for the allocator model (advisor/memory/allocator.py)
        self.event_terms: list[str] = []
        self.last_use: dict[int, int] = {}
        self.params: set[int] = set()

    # -- bookkeeping
    def new(self, n: int, dt: str, rg: bool, bshd: bool = False) -> _T:
        self._next += 1
        self.size[self._next] = n * _BYTES[dt]
        if self.events is not None:
            self.events.append(("a", self._next, self.size[self._next]))
            self.event_terms.append(self.term)
        return _T(n, dt, rg, self._next, bshd)

    def param(self, n: int, trainable: bool, dt: str | None = None) -> _T:
        t = self.new(n, dt or self.pdt, trainable)
        t.param = True
        if self.events is not None:
            self.events.pop()                   # parameters are model states, not forward allocations
            self.event_terms.pop()
            self.params.add(t.sid)
        return t

    def view(self, t: _T, n: int, bshd: bool | None = None, how: str = "view") -> _T:
        """A view of ``t``. Same size: reshape/transpose, whose backward views the gradient (``how="new"`` when
        that backward must copy, e.g. reshaping a transposed gradient). Fewer elements: a slice, whose
        SliceBackward allocates a zero gradient of the whole base (derivatives.yaml: slice_backward)."""
        v = _T(n, t.dt, t.rg, t.sid, t.bshd if bshd is None else bshd, t.param)
        return self.op(v, [t], how if n == t.n else "new")

    def split(self, t: _T, parts: list[int], bshd: bool | None = None) -> list[_T]:
        """``split`` / ``chunk``: views; one SplitBackward (multi-output) that allocates the whole input's
        gradient once (derivatives.yaml: split_backward stacks the pieces' gradients)."""
        vs = [_T(n, t.dt, t.rg, t.sid, t.bshd if bshd is None else bshd, t.param) for n in parts]
        if self.events is not None:
            self.last_use[t.sid] = len(self.events)
        if t.p:
            for v in vs:
                v.p = True
            self.nodes.append(_Node([v.tid for v in vs], [(t.tid, t.nbytes, "new")], self._take(), 0, self.term))
        return vs

    def cat(self, parts: list[_T], bshd: bool = False) -> _T:
        """``torch.cat``: a new tensor; CatBackward hands each input a slice (a view) of the gradient."""
        out = self.new(sum(t.n for t in parts), parts[0].dt, any(t.rg for t in parts), bshd)
        return self.op(out, parts, "view", keep_size=True)

    def _take(self) -> list[int]:
        saved, self._pend = self._pend, []
        return saved

    def op(self, out: _T, ins: list[_T | None], how: str = "new", temp: int = 0, keep_size: bool = False,
           leaf: bool = False, fused: bool = False) -> _T:
        """Record the autograd node that creates ``out`` from ``ins``. Only tensors on the backward's path
        (``p``) get a gradient; an op with none of them creates no node that runs, unless ``leaf``: it uses a
        trainable weight, so its node runs for the weight's gradient (not counted here) and then releases
        what it saved. ``how``: see :class:`_Node`. ``fused``: the backward kernel writes the input's dtype
        directly (ToCopy, softmax with ``dtype=``), no full-size intermediate."""
        saved = self._take()
        if self.events is not None:
            for t in ins:
                if t is not None:
                    self.last_use[t.sid] = len(self.events)
        on = [t for t in ins if t is not None and t.p]
        if not on and not leaf:
            return out
        out.p = True
        spec = []
        for t in on:
            h = how
            if h in ("alias", "view") and not keep_size and (t.dt != out.dt or t.n != out.n):
                # the engine casts a gradient to the input's dtype (validate_outputs); a broadcast input gets
                # sum_to_size of the gradient: both are new tensors
                h = "new"
            elif h in ("new", "newview") and not fused and (t.dt != out.dt or t.n < out.n):
                # the formula runs at the output's size/dtype, then reduces (sum_to_size) or casts
                temp = max(temp, out.nbytes)
            spec.append((t.tid, t.nbytes, h))
        self.nodes.append(_Node([out.tid], spec, saved, temp, self.term))
        return out

    def save(self, *ts: _T | None) -> None:
        for t in ts:
            if t is not None and not t.param:
                if t.sid not in self.saved:
                    self.saved[t.sid] = self.owner.get(t.sid, self.term)
                self._pend.append(t.sid)

    def bytes_of(self, term: str) -> int:
        """Bytes first saved under ``term`` or one of its ``term|part`` sub-terms."""
        return sum(self.size[sid] for sid, tm in self.saved.items() if tm == term or tm.startswith(term + "|"))

    # -- dtype moves
    def cast(self, t: _T, dt: str) -> _T:
        """``Tensor.to(dtype)``: a new tensor (same layout) when the dtype changes; ToCopyBackward saves nothing
        and casts the gradient back (a new tensor)."""
        if t.dt == dt:
            return t
        return self.op(_T(t.n, dt, t.rg, self.new(t.n, dt, t.rg).sid, t.bshd, False), [t], fused=True)

    def ac_low(self, t: _T) -> _T:
        """Autocast's cast of an input of a lower-precision op (linear, matmul, SDPA)."""
        return self.cast(t, self.low) if self.autocast else t

    def ac_f32(self, t: _T) -> _T:
        """Autocast's cast of an input of an fp32-list op (pow, rsqrt, layer_norm, softmax w/o dtype, ...)."""
        return self.cast(t, "f32") if self.autocast else t

    # -- ops, each with its autograd save rule (derivatives.yaml) and its node
    def linear(self, x: _T, n_in: int, n_out: int, train_w: bool, w_dt: str | None = None) -> _T:
        """F.linear / Conv1D's addmm: MmBackward saves the input iff the weight needs a grad (and the weight
        iff the input does: a parameter, or its autocast copy, counted apart). Backward: grad.mm(weight), a new
        tensor, handed on through the ViewBackward of the flattened (b*s, n_in) input: a view."""
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
        return self.op(self.new(tokens * n_out, out_dt, x.rg or train_w), [xin], "newview", leaf=train_w)

    def mul(self, a: _T, b: _T) -> _T:
        """MulBackward0: saves ``other`` iff ``self`` needs a grad and ``self`` iff ``other`` does."""
        if a.rg:
            self.save(b)
        if b.rg:
            self.save(a)
        out = self.new(max(a.n, b.n), _promote(a.dt, b.dt), a.rg or b.rg, a.bshd if a.n >= b.n else b.bshd)
        return self.op(out, [a, b])

    def scalar_op(self, a: _T, add: bool = False) -> _T:
        """Tensor (op) Python scalar: a new tensor, nothing saved. ``x * c`` / ``x / c``: the backward allocates
        grad * c; ``x + c``: AddBackward hands the gradient on."""
        return self.op(self.new(a.n, a.dt, a.rg, a.bshd), [a], "alias" if add else "new")

    def add(self, a: _T, b: _T) -> _T:
        """AddBackward0 saves nothing and hands the same gradient to both inputs; the result has the promoted
        dtype."""
        out = self.new(max(a.n, b.n), _promote(a.dt, b.dt), a.rg or b.rg, a.bshd if a.n >= b.n else b.bshd)
        return self.op(out, [a, b], "alias")

    def pow_(self, x: _T) -> _T:
        """PowBackward0 saves ``self`` (CUDA autocast runs pow in fp32). Backward (derivatives.yaml
        pow_backward): grad * (exponent * self.pow(exponent - 1)): two input-sized temporaries (measured)."""
        x = self.ac_f32(x)
        if x.rg:
            self.save(x)
        return self.op(self.new(x.n, x.dt, x.rg, x.bshd), [x], temp=2 * x.nbytes)

    def mean(self, x: _T, width: int) -> _T:
        """``mean(-1, keepdim=True)``: MeanBackward saves nothing; its backward expands and divides, a new
        input-sized tensor (measured)."""
        return self.op(self.new(x.n // width, x.dt, x.rg), [x])

    def save_result(self, x: _T, dt: str | None = None) -> _T:
        """Ops whose backward uses their result: rsqrt, tanh, sigmoid, relu, softmax, log_softmax."""
        out = self.new(x.n, dt or x.dt, x.rg, x.bshd)
        if x.rg:
            self.save(out)
        return self.op(out, [x], fused=True)   # _softmax_backward_data(..., input_dtype) writes x's dtype

    def save_input(self, x: _T) -> _T:
        """Ops whose backward uses their input: silu, gelu (exact and tanh-approximate)."""
        if x.rg:
            self.save(x)
        return self.op(self.new(x.n, x.dt, x.rg, x.bshd), [x])

    def dropout(self, x: _T, p: float) -> _T:
        """``native_dropout`` (the CUDA kernel of F.dropout): saves a 1-byte bool mask; p = 0 is a no-op.
        Backward: native_dropout_backward(grad, mask, scale), a new tensor."""
        if p <= 0:
            return x
        mask = self.new(x.n, "bool", False)
        if x.rg:
            self.save(mask)
        return self.op(self.new(x.n, x.dt, x.rg, x.bshd), [x])

    def layer_norm(self, x: _T, width: int, affine: bool) -> _T:
        """NativeLayerNormBackward0 saves input, mean and rstd (fp32 on CUDA); autocast runs it in fp32.
        Backward: grad_input only (weight/bias gradients are not asked for here)."""
        x = self.ac_f32(x)
        if x.rg or affine:
            self.save(x, self.new(x.n // width, "f32", False), self.new(x.n // width, "f32", False))
        return self.op(self.new(x.n, x.dt, x.rg or affine), [x])


# ---------------------------------------------------------------------------------------------------------
# Backward replay
# ---------------------------------------------------------------------------------------------------------
class _Buf:
    """A gradient storage: ``size`` bytes, ``refs`` holders (input buffers of nodes, the running node)."""

    __slots__ = ("size", "refs")

    def __init__(self, size: int):
        self.size, self.refs = size, 1


def _replay_backward(tr: _Trace, loss: _T, kept: set[int], recompute: list[tuple[str, list[int]]],
                     log: list | None = None) -> dict[str, tuple[int, int]]:
    """Replay autograd's CPU engine over the recorded nodes, from ``loss`` down to the first layer's input.

    Nodes run in descending sequence number (creation order reversed; only those whose outputs received a
    gradient). A node allocates its inputs' gradients (or hands on / views the incoming one), plus internal
    temporaries; then it releases its saved tensors (a storage is freed once the last node saving it ran,
    unless ``kept``: held by the caller) and its incoming gradient. A gradient arriving at a tensor that
    already has one is accumulated (torch/csrc/autograd/input_buffer.cpp): in place into the old one when it
    is a dense tensor held only there, else ``old + new`` (a view's base keeps a second reference to the
    storage, and AddBackward hands one tensor to two inputs). ``recompute``: (term prefix, storages) rebuilt
    by a non-reentrant checkpoint when the first node under that prefix unpacks a saved tensor.

    Returns, per term (``first_layer``, ``per_layer``, ``final_norm``, ``logits_and_loss``), the peak of live
    bytes above the end-of-forward level and the peak of transient bytes (gradients, temporaries, recomputed
    tensors: everything that is not part of the forward's saved set). ``log``, when given, receives the
    allocation sequence: ``("a", key, bytes)``, ``("f", key, 0)`` and ``("t", term, 0)`` when a new term's
    nodes start (for the allocator model)."""
    reached, run = {loss.tid}, []
    for nd in reversed(tr.nodes):
        if any(o in reached for o in nd.outs):
            run.append(nd)
            reached.update(t for t, _, _ in nd.ins)
    refs = Counter(sid for nd in run for sid in nd.saved)
    alive = set(tr.saved)
    pending = list(recompute)
    seed = _Buf(loss.nbytes)                 # ones_like(loss), held by autograd's caller (_make_grads) throughout
    seed.refs = 2
    grads: dict[int, tuple[_Buf, bool]] = {loss.tid: (seed, False)}
    live, freed = loss.nbytes, 0
    peaks: dict[str, tuple[int, int]] = {}

    def mark(term: str, at: int) -> None:
        key = term.split("|")[0].split(":")[0]
        old = peaks.get(key, (-(1 << 62), -(1 << 62)))
        peaks[key] = (max(old[0], at), max(old[1], at + freed))

    def drop(buf: _Buf) -> None:
        nonlocal live
        buf.refs -= 1
        if buf.refs == 0:
            live -= buf.size
            if log is not None:
                log.append(("f", ("g", id(buf)), 0))

    def alloc(buf: _Buf) -> None:
        if log is not None:
            log.append(("a", ("g", id(buf)), buf.size))

    bufs_alive: list[_Buf] = []          # keeps ids unique while logging
    term_now = None
    if log is not None:
        bufs_alive.append(seed)
        alloc(seed)

    for nd in run:
        if log is not None and nd.term.split("|")[0].split(":")[0] != term_now:
            term_now = nd.term.split("|")[0].split(":")[0]
            log.append(("t", term_now, 0))
        inc = [grads.pop(o, None) for o in nd.outs]
        if nd.saved:
            for item in list(pending):
                if nd.term.startswith(item[0]):
                    pending.remove(item)
                    for sid in dict.fromkeys(s for s in item[1] if s not in alive):   # forward order
                        alive.add(sid)
                        live += tr.size[sid]
                        if log is not None:
                            log.append(("a", sid, tr.size[sid]))
                        freed -= tr.size[sid]          # recomputed: transient, not part of the saved set
        made = []
        for tid, nbytes, how in nd.ins:
            if how in ("alias", "view"):
                src, was_view = next(g for g in inc if g is not None)
                src.refs += 1
                made.append((tid, src, was_view or how == "view"))
            else:
                buf = _Buf(nbytes)
                live += nbytes
                if log is not None:
                    bufs_alive.append(buf)
                    alloc(buf)
                made.append((tid, buf, how == "newview"))
        mark(nd.term, live + nd.temp)
        if log is not None and nd.temp:
            log.append(("a", ("tmp", len(log)), nd.temp))
            log.append(("f", ("tmp", len(log) - 1), 0))
        for sid in nd.saved:
            refs[sid] -= 1
            if refs[sid] == 0 and sid in alive and sid not in kept:
                alive.discard(sid)
                live -= tr.size[sid]
                freed += tr.size[sid]
                if log is not None:
                    log.append(("f", sid, 0))
        for g in inc:
            if g is not None:
                drop(g[0])
        for tid, buf, is_view in made:
            if tid not in grads:
                grads[tid] = (buf, is_view)
                continue
            old, old_view = grads[tid]
            if old.refs == 1 and not old_view:
                drop(buf)                                    # old.add_(new)
            else:
                acc = _Buf(max(old.size, buf.size))          # old + new
                live += acc.size
                if log is not None:
                    bufs_alive.append(acc)
                    alloc(acc)
                mark(nd.term, live)
                drop(old)
                drop(buf)
                grads[tid] = (acc, False)
    return peaks


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
        self.recompute: list[tuple[str, list[int]]] = []   # (term prefix, storages) rebuilt in backward
        self.forward_held: list[int] = []       # storages alive until the forward ends (torchtune's logit chunks)

    # -- pieces ------------------------------------------------------------------------------------------
    def proj(self, x: _T, n_in: int, n_out: int, name: str) -> _T:
        """A decoder-layer linear, LoRA-wrapped when targeted (peft.tuners.lora.Linear.forward)."""
        tr = self.tr
        if self.method == "qlora":
            # bitsandbytes MatMul4Bit.forward (bitsandbytes/autograd/_functions.py) keeps its input whenever A or
            # B needs a gradient (`if any(ctx.needs_input_grad[:2]): ctx.tensors = (A, B)`): a frozen 4-bit
            # linear whose input requires grad saves that input, cast to the compute dtype (Linear4bit.forward
            # casts x to compute_dtype), unlike a frozen nn.Linear.
            xq = tr.ac_low(x) if tr.autocast else x
            if xq.rg:
                tr.save(xq)
            base = tr.linear(xq, n_in, n_out, False)
            if name not in self.lora:
                return base
        elif name not in self.lora:
            return tr.linear(x, n_in, n_out, self.layer_trainable)
        else:
            base = tr.linear(x, n_in, n_out, False)                # frozen base: saves no input
        xa = tr.cast(x, "f32")                                      # _cast_input_dtype(x, lora_A.weight.dtype)
        # lora_B(lora_A(dropout(x))): with lora_dropout > 0 nn.Dropout saves a bool mask and lora_A saves the
        # dropped copy, one per adapted linear (peft.tuners.lora.layer.Linear.forward; Identity when p = 0)
        xa = tr.dropout(xa, self.t.lora.dropout)
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
        var = tr.mean(tr.pow_(hf), h)                               # pow(2).mean(-1): PowBackward saves hf
        r = tr.save_result(tr.scalar_op(var, add=True))             # rsqrt(variance + eps) saves its result
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
        part = q if rot == d else tr.view(q, full * rot // d)        # q[..., :rot] (a slice)
        c1 = tr.mul(part, self.rope_cos)
        x1, x2 = tr.view(part, part.n // 2), tr.view(part, part.n // 2)   # rotate_half: two slices,
        rh = tr.cat([tr.scalar_op(x2), x1], part.bshd)               # cat((-x2, x1)): a new tensor
        c2 = tr.mul(rh, self.rope_sin)
        e = tr.add(c1, c2)
        if rot == d and a.family not in _ROPE_CAT:
            return e                                                # keeps q's (b, s, h, d) memory layout
        if rot == d:
            return tr.cat([e])
        return tr.cat([e, tr.view(q, full - part.n)])                # torch.cat([q_embed, q_pass]) contiguous

    def repeat_kv(self, x: _T, heads: int) -> _T:
        a, tr = self.a, self.tr
        if a.num_key_value_heads == heads:
            return x
        # expand + reshape: a copy; ExpandBackward sums the gradient back to the kv heads (a new tensor)
        return tr.op(tr.new(tr.b * heads * tr.s * a.head_dim, x.dt, x.rg, False), [x])

    def bmm_operand(self, x: _T) -> _T:
        """torch.matmul on 4-D inputs reshapes to (b*h, ., .): a view when (b, h) merge, else a copy."""
        tr = self.tr
        c = tr.ac_low(x)
        if tr.b > 1 and c.bshd:
            c = tr.op(tr.new(c.n, c.dt, c.rg, False), [c], "view")   # reshape copy; backward views the grad
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
            o = tr.op(tr.new(out_n, tr.low if tr.autocast else po.dt, po.rg or vo.rg, False), [po, vo], "newview")
            # transpose(1, 2).contiguous(): a copy; CloneBackward and TransposeBackward hand on (a view of) the
            # gradient
            return tr.op(tr.new(out_n, o.dt, o.rg, True), [o], "view")
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
        # the fused backward allocates grad_q, grad_k, grad_v (in the inputs' layouts)
        out = tr.op(out, [qc, kc, vc])
        if out.bshd:
            return tr.view(out, out_n, True)                           # transpose(1, 2).contiguous(): no-op
        return tr.op(tr.new(out_n, out.dt, out.rg, True), [out], "view")

    def attention(self, x: _T, selective: bool) -> _T:
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
            if a.family == "opt":
                q = tr.scalar_op(q)                                    # q_proj(x) * self.scaling
            q = tr.view(q, qn, True, "new" if copy_qk else "view")
            k = tr.view(k, kn, True, "new" if copy_qk else "view")
            v = tr.view(v, kn, True, "new" if copy_v else "view")
        if a.qk_norm:                                                  # Qwen3: per-head RMSNorm on q and k
            q, k = self._head_norm(q), self._head_norm(k)
        if a.position == "rope":
            q, k = self.rope(q, H), self.rope(k, KV)
        o = self.attention_core(q, k, v, selective)
        return self.proj(o, H * d, h, "o_proj")

    def _head_norm(self, x: _T) -> _T:
        tr, d = self.tr, self.a.head_dim
        hf = tr.cast(x, "f32")
        r = tr.save_result(tr.scalar_op(tr.mean(tr.pow_(hf), d), add=True))
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
            d = tr.scalar_op(tr.mul(c, x), add=True)                   # 1.0 + c * input
            th = tr.scalar_op(tr.save_result(tr.mul(i1, d)), add=True)  # 1.0 + tanh(i1 * d)
            return tr.mul(half, th)
        # gelu_new / gelu_python_tanh / gelu_accurate and unknown kinds: NewGELUActivation's chain
        half = tr.scalar_op(x)                                         # 0.5 * input
        p3 = tr.scalar_op(tr.pow_(x))                                  # 0.044715 * pow(input, 3)
        inner = tr.scalar_op(tr.add(x, p3))                            # sqrt(2/pi) * (input + ...)
        th = tr.scalar_op(tr.save_result(inner), add=True)             # 1.0 + tanh(...)
        return tr.mul(half, th)

    def mlp(self, x: _T) -> _T:
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
        top = tr.op(tr.new(N * k, "f32", probs.rg), [probs])           # backward: zeros + scatter
        tr.save(top, tr.new(N, "f32", probs.rg))                       # top /= top.sum(): DivBackward
        top = tr.op(tr.new(N * k, "f32", probs.rg), [top])
        tr.save(tr.new(S, "i64", False), tr.new(S, "i64", False))     # sort perm; hidden_states[perm // k]
        tr.save(tr.new(E, "i32", False))                               # grouped_mm offsets (cumsum)
        sel = tr.op(tr.new(S * h, x.dt, x.rg), [x])                    # IndexBackward: zeros + index_put
        w_dt = tr.pdt
        sel = tr.cast(sel, w_dt)                                       # input.to(weight.dtype); no autocast
        train = self.layer_trainable
        if train:
            tr.save(sel)                                               # grouped_mm saves input (and weight)
        gu = tr.op(tr.new(S * 2 * i, sel.dt, sel.rg or train), [sel])
        g, u = tr.split(gu, [S * i, S * i])
        m = tr.mul(self.act(g), u)
        m = tr.cast(m, w_dt)
        if train:
            tr.save(m)
        o = tr.op(tr.new(S * h, m.dt, m.rg or train), [m])
        sw = tr.op(tr.new(S, "f32", top.rg), [top])                    # sample_weights[perm]
        wo = tr.mul(o, sw)                                             # saves o and the weights
        tr.save(tr.new(S, "i64", False))                               # weighted_out[inv_perm] indices
        f = tr.op(tr.new(N * h, wo.dt, wo.rg), [wo])                   # view(...).sum(dim=1)
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

    def head(self, x: _T, final_trainable: bool, lm_trainable: bool) -> tuple[_T, _T]:
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
        logits = tr.linear(x, width, a.vocab_size, lm_trainable)
        held = logits
        loss = self.cross_entropy(logits, tr.N if tr.b > 1 else tr.s + 1)
        return held, loss

    def cross_entropy(self, logits: _T, labels: int) -> _T:
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

    def chunked_loss(self, x: _T, width: int, lm_trainable: bool) -> _T:
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
        for r, xc in zip(rows, parts):
            lc = tr.linear(xc, width, self.a.vocab_size, lm_trainable)
            self.forward_held.append(lc.sid)                           # the list lives until `del logits`
            lo = self.cross_entropy(lc, r * tr.b)
            loss = lo if loss is None else tr.add(loss, lo)            # total_loss += ...
        return tr.scalar_op(loss)                                      # / total_elements

    def fused_linear_loss(self, x: _T, width: int, lm_trainable: bool) -> _T:
        """Liger ``LigerFusedLinearCrossEntropyFunction`` (src/liger_kernel/ops/fused_linear_cross_entropy.py):
        the forward loops over token chunks of ``next_pow2(ceil(N / ceil(V / h)))`` rows (transient logits
        ≈ N x h), computes each chunk's loss and logits gradient in place, and accumulates ``grad_input``
        (``zeros_like(input)``) and ``grad_weight`` (``zeros_like(weight)``, when the head trains), which it
        saves for backward; backward only scales them by the incoming gradient. No N x V tensor exists and the
        model returns no logits."""
        a, tr = self.a, self.tr
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
        logits_chunk = chunk * V * _BYTES[xin.dt]                       # freed chunk by chunk in the forward
        self.forward_transient = max(getattr(self, "forward_transient", 0), logits_chunk + loss_1d.nbytes)
        # backward: element_mul of the saved grad_input (in place), handed on as the input's gradient
        return tr.op(tr.new(1, "f32", x.rg or lm_trainable), [xin], "new", leaf=lm_trainable)


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


def _checkpointed_layer(tr, m, x, term: str):
    """One layer under full activation checkpointing: checkpoint() keeps the layer input (NoopSaveInputs);
    what the layer saves inside is dropped after the forward and rebuilt during its backward (recorded in
    ``m.recompute``). Returns the layer's output."""
    tr.term = term + ":inner"
    before = set(tr.saved)
    out = m.layer(x, False)
    inner = [sid for sid in tr.saved if sid not in before]
    m.recompute.append((term + ":inner", inner))
    for sid in inner:
        del tr.saved[sid]
    tr.term = term
    tr.save(x)
    tr._take()                                                         # released by the layer's own nodes
    return tr.op(tr.new(out.n, out.dt, out.rg), [out], "alias")


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
    emb.p = emb.rg                                                     # the backward replay's target

    terms: dict[str, int] = {}
    x = emb
    layer_terms = ("first_layer", "per_layer")
    for term in layer_terms:
        if ckpt == "full":
            x = _checkpointed_layer(tr, m, x, term)
        else:
            tr.term = term
            x = m.layer(x, selective)
    if ckpt == "full" and m.rope_cos is not None:
        tr.save(m.rope_cos, m.rope_sin)                                # alive in the layers' kwargs
    for term in layer_terms:
        terms[term] = tr.bytes_of(term)
    weight_copy_layer = tr.weight_copy_elems // 2
    tr.weight_copy_elems = 0

    final_trainable = full
    lm_trainable = full
    held, loss = m.head(x, final_trainable, lm_trainable)
    weight_copy_head = tr.weight_copy_elems

    for term in ("embeddings", "rope_cache", "final_norm", "logits_and_loss"):
        terms[term] = tr.bytes_of(term)
    terms["logits_held"] = tr.size[held.sid] if held is not None else 0
    # the end of the forward: tensors alive only until then (torchtune's logits list, Liger's chunk logits)
    terms["forward_end"] = sum(tr.size[sid] for sid in m.forward_held) + getattr(m, "forward_transient", 0)
    # backward replay: the caller's output holds the logits; the first layer's input is the replay's end
    kept = {emb.sid} | ({held.sid} if held is not None else set())
    peaks = _replay_backward(tr, loss, kept, m.recompute)
    none = (0, 0)
    head = [peaks.get(k, none) for k in ("final_norm", "logits_and_loss")]
    terms["bw_head"] = max(p[0] for p in head)
    terms["bw_layer"], terms["bw_layer_transient"] = peaks.get("per_layer", none)
    terms["weight_copy_layer"] = weight_copy_layer
    terms["weight_copy_head"] = weight_copy_head
    return terms


def _trace_events(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str,
                  layers: int, return_sections: bool = False):
    """The allocation sequence of one forward and backward of ``layers`` decoder layers (for the allocator
    model, advisor/memory/allocator.py): ``("a", key, bytes)`` when an op creates a tensor, ``("f", key, 0)``
    after the last op that reads a tensor nobody saved (or when backward releases a saved one), and
    ``("t", term, 0)`` where backward enters ``L<i>`` (decoder layer i), ``final_norm`` or
    ``logits_and_loss``. ``("m", "forward_end", 0)`` separates forward and backward; ``("h", key, 0)``, last,
    names the logits the caller holds (never freed here). Parameters are not in it (model states)."""
    b, s = training.micro_batch_size, training.seq_len
    tr = _Trace(mode, b, s)
    tr.events = []
    full = training.method == "full"
    freeze = training.method == "freeze"
    m = _Model(arch, training, tr, layer_trainable=full or freeze)
    tr.term = "embeddings"
    emb = m.embeddings(emb_trainable=full)
    tr.term = "rope_cache"
    m.make_rope_cache()
    if ckpt == "full":
        emb = _T(emb.n, emb.dt, True, emb.sid)
    elif freeze:
        emb = _T(emb.n, emb.dt, False, emb.sid)
    emb.p = emb.rg
    x = emb
    for i in range(layers):
        term = f"L{i}"
        if ckpt == "full":
            x = _checkpointed_layer(tr, m, x, term)
        else:
            tr.term = term
            x = m.layer(x, ckpt == "selective")
    if ckpt == "full" and m.rope_cos is not None:
        tr.save(m.rope_cos, m.rope_sin)
    held, loss = m.head(x, full, full)
    fwd, fwd_terms = tr.events, tr.event_terms
    tr.events = None
    kept = {emb.sid, loss.sid, *m.forward_held} | ({held.sid} if held is not None else set())
    # a tensor nobody saved dies after the last op that read it (at once if none did)
    frees: dict[int, list[int]] = {}
    for pos, (_, sid, _) in enumerate(fwd):
        if sid not in tr.saved and sid not in kept and sid not in tr.params:
            frees.setdefault(max(tr.last_use.get(sid, pos + 1), pos + 1), []).append(sid)
    events: list[tuple[str, object, int]] = []
    sections: list[int] = []                   # decoder layer of each event (-1 before, 1 << 20 after them)

    def section(term: str) -> int:
        head = term.split("|")[0].split(":")[0]
        if head[:1] == "L" and head[1:].isdigit():
            return int(head[1:])
        return -1 if head in ("embeddings", "rope_cache") else 1 << 20

    for pos, ev in enumerate(fwd):
        for sid in frees.get(pos, ()):
            events.append(("f", sid, 0))
            sections.append(section(fwd_terms[pos - 1]))
        events.append(ev)
        sections.append(section(fwd_terms[pos]))
    for sid in frees.get(len(fwd), ()):
        events.append(("f", sid, 0))
        sections.append(section(fwd_terms[-1]))
    for sid in m.forward_held:                                         # `del logits` before backward
        if sid not in tr.saved:
            events.append(("f", sid, 0))
            sections.append(1 << 20)
    events.append(("m", "forward_end", 0))
    sections.append(1 << 20)
    log: list[tuple[str, object, int]] = []
    _replay_backward(tr, loss, {emb.sid} | ({held.sid} if held is not None else set()), m.recompute, log)
    sec = 1 << 20
    for ev in log:
        if ev[0] == "t":
            sec = section(ev[1])
        events.append(ev)
        sections.append(sec)
    if held is not None:
        events.append(("h", held.sid, 0))                              # the logits the caller holds
        sections.append(-1)
    if return_sections:
        return events, sections
    return events


def allocation_key(arch: Architecture, training: TrainingSpec) -> tuple[TrainingSpec, str]:
    """The trace key and checkpointing mode :func:`activation_memory` traces for ``training``."""
    ckpt = training.activation_checkpointing
    if arch.attn_logit_softcapping and training.attention == "sdpa":
        training = training.model_copy(update={"attention": "eager"})
    if training.attention in ("sdpa", "flash") and ckpt == "selective":
        ckpt = "none"
    return _trace_key(training), ckpt


@lru_cache(maxsize=256)
def allocation_trace(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str,
                     layers: int) -> list[tuple[str, object, int]]:
    """:func:`_trace_events` of ``layers`` decoder layers, cached (callers must not mutate it). Deeper than
    5 layers, the sequence is built from a 4-layer trace by repeating its third layer
    (:func:`_replicate_layers`); tests/memory/test_allocator.py checks it equals the direct trace."""
    if layers <= 5:
        return _trace_events(arch, training, mode, ckpt, layers)
    events, sections = _four_layer_trace(arch, training, mode, ckpt)
    out = _replicate_layers(events, sections, layers)
    return out if out is not None else _trace_events(arch, training, mode, ckpt, layers)


@lru_cache(maxsize=128)
def _four_layer_trace(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str):
    return _trace_events(arch, training, mode, ckpt, 4, return_sections=True)


def _replicate_layers(events: list, sections: list[int], layers: int) -> list | None:
    """An n-layer allocation sequence from a 4-layer one: layers 0, 1 and 3 as traced (3 becomes n-1), layer 2
    repeated for layers 2..n-2 with its own tensors renamed per copy. A copy's references to the previous
    layer's tensors go to the previous copy's matching tensors (matched in order of first reference: layer 2
    reading layer 1's against layer 3 reading layer 2's), and likewise for the gradients backward receives
    from the next layer. None when the matching fails (the caller then traces all layers)."""
    owner: dict = {}
    for (op, key, _), sec in zip(events, sections):
        if op == "a":
            owner.setdefault(key, []).append(sec)

    def refs(in_sec: int, of_sec: int) -> list:
        seen: dict = {}
        for (op, key, _), sec in zip(events, sections):
            if sec == in_sec and op in ("a", "f") and owner.get(key, [None])[0] == of_sec:
                seen.setdefault(key, None)
        return list(seen)

    prev_in, prev_out = refs(2, 1), refs(3, 2)        # layer 1's tensors read by 2 <-> 2's read by 3
    next_in, next_out = refs(2, 3), refs(1, 2)        # layer 3's gradients read by 2 <-> 2's read by 1
    if len(prev_in) != len(prev_out) or len(next_in) != len(next_out) \
            or any(len(set(v)) > 1 for v in owner.values()):
        return None
    prev_map = dict(zip(prev_in, prev_out))
    next_map = dict(zip(next_in, next_out))
    last = layers - 2                                  # the last copy of layer 2

    def rename(key, sec: int, copy: int):
        """Key of ``key`` as seen from copy ``copy`` of layer 2 (sec is the owner's section)."""
        if sec == 2:
            return key if copy == 2 else ("c", copy, key)
        if sec == 1 and copy > 2 and key in prev_map:            # the previous copy's matching tensor
            return prev_map[key] if copy == 3 else ("c", copy - 1, prev_map[key])
        if sec == 3 and copy < last and key in next_map:         # the next copy's matching gradient
            return ("c", copy + 1, next_map[key])
        return key

    def emit(out: list, idx: list[int], copy: int | None, layer_name: int | None) -> None:
        for i in idx:
            op, key, n = events[i]
            if op == "t" and layer_name is not None:
                out.append(("t", f"L{layer_name}", 0))
                continue
            if op in ("a", "f") and key in owner:
                osec = owner[key][0]
                if copy is not None:
                    key = rename(key, osec, copy)
                elif osec == 2:                        # layers 1 and 3 see the first / last copy
                    key = rename(key, 2, 2 if sections[i] <= 1 else last)
            out.append((op, key, n))

    fwd_end = next(i for i, (op, _, _) in enumerate(events) if op == "m")
    by_sec_f: dict[int, list[int]] = {}
    by_sec_b: dict[int, list[int]] = {}
    for i, sec in enumerate(sections):
        (by_sec_f if i <= fwd_end else by_sec_b).setdefault(sec, []).append(i)
    order_f = sorted(by_sec_f)
    if [s for s in order_f if 0 <= s < (1 << 20)] != [0, 1, 2, 3]:
        return None
    # sections must be contiguous runs for the splice to keep the order
    for group in (by_sec_f, by_sec_b):
        for idx in group.values():
            if idx[-1] - idx[0] + 1 != len(idx):
                return None
    out: list = []
    for sec in order_f:
        if sec == 2:
            for c in range(2, last + 1):
                emit(out, by_sec_f[2], c, None)
        elif sec == 3:
            emit(out, by_sec_f[3], None, None)
        else:
            emit(out, by_sec_f[sec], None, None)
    for sec in sorted(by_sec_b, key=lambda s: -s):
        if sec == 2:
            for c in range(last, 1, -1):
                emit(out, by_sec_b[2], c, c)
        elif sec == 3:
            emit(out, by_sec_b[3], None, layers - 1)
        else:
            emit(out, by_sec_b[sec], None, None)
    return out


def _trace_key(training: TrainingSpec) -> TrainingSpec:
    """``training`` with the fields the trace does not read set to their defaults (a cache key)."""
    return TrainingSpec(seq_len=training.seq_len, micro_batch_size=training.micro_batch_size,
                        method=training.method, lora=training.lora, attention=training.attention,
                        freeze_trainable_layers=training.freeze_trainable_layers,
                        activation_checkpointing=training.activation_checkpointing,
                        loss=training.loss, loss_chunks=training.loss_chunks)


@lru_cache(maxsize=4096)
@computed("replay", dict, dict)             # kept across runs (advisor/datacache.py)
def _traced(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str) -> dict[str, int]:
    """Cached :func:`_trace_model` (the recommender asks for the same micro-batch under many strategies;
    one trace with its backward replay costs milliseconds). Callers must not mutate the returned dict."""
    return _trace_model(arch, training, mode, ckpt)


# Families whose forward this module replays (each checked against the harness in docs/accuracy.md); any other
# family is traced on the real transformers model (advisor/trace). Falcon and BLOOM are traced: the replay
# under-counted them against the harness (Falcon-7B's multi-query SDPA call without enable_gqa takes SDPA's math
# kernel, which saves the attention probabilities: -53 % at s=512; falcon-40b's grouped qkv split -4 %; BLOOM's
# eager ALiBi attention), while the trace equals the harness (benchmarks/cases/saved.yaml, tests/trace).
REPLAYED_FAMILIES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2",
                               "opt", "gpt_neox"})


def activation_memory(arch: Architecture, training: TrainingSpec, mode: ComputeMode) -> ActivationEstimate:
    """Saved-for-backward bytes of one micro-batch and the backward transient peak on top (per GPU)."""
    if arch.traced or arch.family not in REPLAYED_FAMILIES:   # no replay for this family: the real model, traced
        from advisor.trace.estimate import traced_activation_terms

        activations, temporaries, breakdown = traced_activation_terms(arch, training, mode)
        if getattr(training, "offload_activations", False):
            return _offloaded(activations, temporaries, breakdown)
        return ActivationEstimate(activations=activations, temporaries=temporaries, breakdown=breakdown)
    ckpt = training.activation_checkpointing
    if arch.attn_logit_softcapping and training.attention == "sdpa":
        # transformers' sdpa_attention_forward refuses softcap (Gemma-2): the model runs eager attention
        training = training.model_copy(update={"attention": "eager"})
    if training.attention in ("sdpa", "flash") and ckpt == "selective":
        ckpt = "none"                                                  # nothing quadratic to recompute
    terms = _traced(arch, _trace_key(training), mode, ckpt)
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
        breakdown["attention_mask"] = b * s * s * (2 if mode.startswith(("half", "autocast16")) else 4)
    activations = sum(v for k, v in breakdown.items() if k != "per_layer")

    # -- temporaries: the largest transient on top of the saved set during backward, from the replay of the
    # backward (``_replay_backward``). Two moments: (1) the loss backward (and the final norm's), while
    # everything the forward saved is still alive; (2) the backward of the last decoder layer (the first one
    # to run; lower layers run with less saved). The logits tensor the caller's output holds is alive
    # throughout (``outputs = model(**batch); accelerator.backward(outputs.loss)``).
    held = terms["logits_held"]
    logits_phase = max(held + terms["bw_head"], terms.get("forward_end", 0))
    layer_transient = terms["bw_layer_transient"]
    layer_extra = 0
    if training.method == "qlora":
        from advisor import param_count as pc

        biggest = max(i * o for i, o, _ in pc.linear_shapes(arch).values())
        # bitsandbytes MatMul4Bit dequantizes the weight (compute dtype) for the forward and again for
        # grad_input in backward; one at a time
        breakdown["info:qlora_dequantized_weight"] = biggest * (4 if mode == "fp32" else 2)
        layer_extra = breakdown["info:qlora_dequantized_weight"]
    layer_phase = max(held + terms["bw_layer"] + layer_extra, 0)
    breakdown["temp:logits_and_loss_backward"] = logits_phase
    breakdown["temp:layer_backward"] = layer_phase
    temporaries = max(logits_phase, layer_phase)
    breakdown["info:logits_output_held"] = held
    breakdown["info:layer_transient"] = layer_transient + layer_extra
    if mode.startswith("autocast"):
        layer_copies = terms["weight_copy_layer"] * n_train
        breakdown["info:autocast_weight_copies"] = (layer_copies + terms["weight_copy_head"]) * 2
    if getattr(training, "offload_activations", False):
        return _offloaded(activations, temporaries, breakdown)
    return ActivationEstimate(activations=int(activations), temporaries=int(temporaries), breakdown=breakdown)


def _offloaded(activations: int, temporaries: int, breakdown: dict[str, int]) -> ActivationEstimate:
    """``--offload-activations``: every tensor autograd saves is packed to pinned CPU memory
    (``torch.autograd.graph.save_on_cpu(pin_memory=True)``: pack copies to CPU, unpack copies back to the
    device when the node runs; torchtune's ``OffloadActivations`` and DeepSpeed's
    ``activation_checkpointing.cpu_checkpointing`` do the same for what they save). On the GPU nothing saved
    stays between forward and backward; during a layer's backward its saved set is back on the GPU (counted
    whole, an upper bound) on top of that layer's transient. The held logits are the model output, not saved:
    they stay. ``info:offloaded_activations`` is the pinned host memory per GPU and the bytes crossing PCIe each
    way per micro-step (:func:`activation_offload_traffic`)."""
    held = breakdown.get("info:logits_output_held", 0)
    per_layer = breakdown.get("per_layer", 0)
    out = {k: (0 if not k.startswith(("temp:", "info:")) and k != "per_layer" else v) for k, v in breakdown.items()}
    out["info:offloaded_activations"] = int(activations)
    layer_phase = held + per_layer + breakdown.get("info:layer_transient", 0)
    logits_phase = breakdown.get("temp:logits_and_loss_backward", 0) + breakdown.get("logits_and_loss", 0)
    out["temp:layer_backward"] = layer_phase
    out["temp:logits_and_loss_backward"] = logits_phase
    return ActivationEstimate(activations=0, temporaries=int(max(layer_phase, logits_phase)), breakdown=out)


def activation_offload_traffic(est: ActivationEstimate) -> int:
    """Bytes one GPU moves to the host in the forward of a micro-step with ``--offload-activations`` (and the
    same back in its backward): the saved activations. A step-time model divides 2x this by the GPU's PCIe
    bandwidth for the transfer time; save_on_cpu copies synchronously, torchtune's offloading overlaps them
    with compute on a side stream."""
    return est.breakdown.get("info:offloaded_activations", 0)


__all__ = ["ActivationEstimate", "ComputeMode", "activation_memory", "compute_mode"]
