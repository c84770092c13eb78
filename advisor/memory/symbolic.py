"""Symbolic tensors and the table of what each op saves for backward (the forward replay's vocabulary).

A :class:`Tensor` carries an element count, a dtype, a ``requires_grad`` flag and a storage id; :class:`Trace`
creates them op by op and records, for each op, what PyTorch autograd saves and the autograd node it creates.
Each op method of :class:`Trace` is one row of the save-rule table; the rule is autograd's own, from
``tools/autograd/derivatives.yaml`` (https://github.com/pytorch/pytorch/blob/main/tools/autograd/derivatives.yaml):

=====================  ==============================================================  ==========================
op (method)            saved for backward                                              derivatives.yaml entry
=====================  ==============================================================  ==========================
``linear``             the input iff the weight needs a grad (the weight iff the        ``mm`` / ``addmm``
                       input does: a parameter or autocast copy, not counted)
``mul``                ``other`` iff ``self`` needs a grad and vice versa               ``mul.Tensor``
``add`` / scalar ops   nothing                                                          ``add.Tensor``,
                                                                                        ``mul.Scalar``
``pow_``               ``self``                                                         ``pow.Tensor_Scalar``
``mean``               nothing (sizes only)                                             ``mean.dim``
``save_result``        the result: rsqrt, tanh, sigmoid, relu, softmax, log_softmax     ``rsqrt``, ``tanh``,
                                                                                        ``_softmax``, ...
``save_input``         the input: silu, gelu (exact and tanh)                           ``silu``, ``gelu``
``dropout``            the 1-byte bool mask (``native_dropout``)                        ``native_dropout``
``layer_norm``         input, mean and rstd (fp32)                                      ``native_layer_norm``
``cast``               nothing (ToCopyBackward)                                         ``_to_copy``
``view`` / ``split``   nothing; slice/split backward allocate the base's gradient       ``slice``, ``split``
``cat``                nothing; CatBackward hands each input a slice of the gradient    ``cat``
=====================  ==============================================================  ==========================

The dtypes follow CUDA autocast's op lists (``aten/src/ATen/autocast_mode.cpp``), type promotion and the explicit
``.float()`` upcasts of the HF code; storage aliasing decides whether two saved tensors share memory (a view of a
fused QKV projection keeps the whole projection alive). Saved storages are counted once. Pure arithmetic: no
torch. Attention, MoE and loss kernels that save several tensors at once are written by the replays in
:mod:`advisor.families.replay` with the same primitives (``save`` + ``op``), each citing its source.
"""

from __future__ import annotations

import itertools
from typing import Literal

# autocast16-*: torch autocast over 16-bit weights (FSDP MixedPrecision param_dtype; a LoRA/QLoRA base loaded in
# 16 bit under accelerate's autocast): autocast's op lists, but parameters and the embedding output are 16-bit.
ComputeMode = Literal["fp32", "autocast-fp16", "autocast-bf16", "autocast16-fp16", "autocast16-bf16",
                      "half-fp16", "half-bf16"]

BYTES = {"f32": 4, "bf16": 2, "f16": 2, "bool": 1, "i64": 8, "i32": 4}

class Tensor:
    """A tensor: ``n`` elements of dtype ``dt``; ``sid`` names its storage (views share it); ``bshd`` marks a
    (batch, heads, seq, dim) view whose memory is laid out (batch, seq, heads, dim), i.e. a head split of a
    projection output; ``param`` marks parameters (never counted). ``tid`` names the tensor itself (a view is a
    new tensor: gradients flow per tensor, memory is per storage); ``p`` marks tensors on the path from the
    backward's target (the first decoder layer's input) to the loss: only those get gradients."""

    __slots__ = ("n", "dt", "rg", "sid", "bshd", "param", "tid", "p")
    _ids = itertools.count(1)

    def __init__(self, n: int, dt: str, rg: bool, sid: int, bshd: bool = False, param: bool = False):
        self.n, self.dt, self.rg, self.sid, self.bshd, self.param = n, dt, rg, sid, bshd, param
        self.tid = next(Tensor._ids)
        self.p = False

    @property
    def nbytes(self) -> int:
        return self.n * BYTES[self.dt]


class Node:
    """One autograd node of the backward graph, in creation (sequence-number) order. ``outs``: the tensors
    whose gradients it consumes; ``ins``: (tensor id, gradient bytes, how) for each input that gets a
    gradient, ``how`` one of ``new`` (a fresh dense buffer), ``newview`` (a fresh buffer handed on as a view,
    e.g. through the ViewBackward of a linear's flattened input), ``alias`` (the incoming gradient itself,
    e.g. AddBackward), ``view`` (a view of the incoming gradient); ``saved``: storages it saved (released
    after it runs); ``temp``: bytes its formula allocates and frees internally on top of its results."""

    __slots__ = ("outs", "ins", "saved", "temp", "term")

    def __init__(self, outs: list[int], ins: list[tuple[int, int, str]], saved: list[int], temp: int, term: str):
        self.outs, self.ins, self.saved, self.temp, self.term = outs, ins, saved, temp, term


def promote(a: str, b: str) -> str:
    """Type promotion of two floating dtypes (bf16 with fp16 never meets here)."""
    return a if a == b else "f32"


class Trace:
    """Replays a forward pass: creates tensors, records what ops save (counting storages once) and the autograd
    node each op creates (for the backward replay, :func:`_replay_backward`)."""

    def __init__(self, mode: ComputeMode, batch: int, seq: int):
        self.autocast = mode.startswith("autocast")
        self.low = "f32" if mode == "fp32" else ("bf16" if mode.endswith("bf16") else "f16")
        self.pdt = self.low if mode.startswith(("half", "autocast16")) else "f32"   # parameter (and embedding output) dtype
        self.half = mode.startswith("half")     # the whole model is 16-bit (DeepSpeed fp16/bf16, pure bf16)
        self.b, self.s, self.N = batch, seq, batch * seq
        self._next = 0
        self.size: dict[int, int] = {}
        self.saved: dict[int, str] = {}
        self.owner: dict[int, str] = {}   # storages always counted under one term (the shared RoPE cache)
        self.term = "misc"
        self.weight_copy_elems = 0      # autocast low-precision copies of fp32 weights that linears save
        self.nodes: list[Node] = []
        self._pend: list[int] = []      # storages saved by the op being recorded (its node releases them)
        self.events: list | None = None  # allocation log for the allocator model (advisor/memory/allocator.py)
        self.event_terms: list[str] = []
        self.last_use: dict[int, int] = {}
        self.params: set[int] = set()

    # -- bookkeeping
    def new(self, n: int, dt: str, rg: bool, bshd: bool = False) -> Tensor:
        self._next += 1
        self.size[self._next] = n * BYTES[dt]
        if self.events is not None:
            self.events.append(("a", self._next, self.size[self._next]))
            self.event_terms.append(self.term)
        return Tensor(n, dt, rg, self._next, bshd)

    def param(self, n: int, trainable: bool, dt: str | None = None) -> Tensor:
        t = self.new(n, dt or self.pdt, trainable)
        t.param = True
        if self.events is not None:
            self.events.pop()                   # parameters are model states, not forward allocations
            self.event_terms.pop()
            self.params.add(t.sid)
        return t

    def view(self, t: Tensor, n: int, bshd: bool | None = None, how: str = "view") -> Tensor:
        """A view of ``t``. Same size: reshape/transpose, whose backward views the gradient (``how="new"`` when
        that backward must copy, e.g. reshaping a transposed gradient). Fewer elements: a slice, whose
        SliceBackward allocates a zero gradient of the whole base (derivatives.yaml: slice_backward)."""
        v = Tensor(n, t.dt, t.rg, t.sid, t.bshd if bshd is None else bshd, t.param)
        return self.op(v, [t], how if n == t.n else "new")

    def split(self, t: Tensor, parts: list[int], bshd: bool | None = None) -> list[Tensor]:
        """``split`` / ``chunk``: views; one SplitBackward (multi-output) that allocates the whole input's
        gradient once (derivatives.yaml: split_backward stacks the pieces' gradients)."""
        vs = [Tensor(n, t.dt, t.rg, t.sid, t.bshd if bshd is None else bshd, t.param) for n in parts]
        if self.events is not None:
            self.last_use[t.sid] = len(self.events)
        if t.p:
            for v in vs:
                v.p = True
            self.nodes.append(Node([v.tid for v in vs], [(t.tid, t.nbytes, "new")], self._take(), 0, self.term))
        return vs

    def cat(self, parts: list[Tensor], bshd: bool = False) -> Tensor:
        """``torch.cat``: a new tensor; CatBackward hands each input a slice (a view) of the gradient."""
        out = self.new(sum(t.n for t in parts), parts[0].dt, any(t.rg for t in parts), bshd)
        return self.op(out, parts, "view", keep_size=True)

    def _take(self) -> list[int]:
        saved, self._pend = self._pend, []
        return saved

    def op(self, out: Tensor, ins: list[Tensor | None], how: str = "new", temp: int = 0, keep_size: bool = False,
           leaf: bool = False, fused: bool = False) -> Tensor:
        """Record the autograd node that creates ``out`` from ``ins``. Only tensors on the backward's path
        (``p``) get a gradient; an op with none of them creates no node that runs, unless ``leaf``: it uses a
        trainable weight, so its node runs for the weight's gradient (not counted here) and then releases
        what it saved. ``how``: see :class:`Node`. ``fused``: the backward kernel writes the input's dtype
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
        self.nodes.append(Node([out.tid], spec, saved, temp, self.term))
        return out

    def save(self, *ts: Tensor | None) -> None:
        for t in ts:
            if t is not None and not t.param:
                if t.sid not in self.saved:
                    self.saved[t.sid] = self.owner.get(t.sid, self.term)
                self._pend.append(t.sid)

    def bytes_of(self, term: str) -> int:
        """Bytes first saved under ``term`` or one of its ``term|part`` sub-terms."""
        return sum(self.size[sid] for sid, tm in self.saved.items() if tm == term or tm.startswith(term + "|"))

    # -- dtype moves
    def cast(self, t: Tensor, dt: str) -> Tensor:
        """``Tensor.to(dtype)``: a new tensor (same layout) when the dtype changes; ToCopyBackward saves nothing
        and casts the gradient back (a new tensor)."""
        if t.dt == dt:
            return t
        return self.op(Tensor(t.n, dt, t.rg, self.new(t.n, dt, t.rg).sid, t.bshd, False), [t], fused=True)

    def ac_low(self, t: Tensor) -> Tensor:
        """Autocast's cast of an input of a lower-precision op (linear, matmul, SDPA)."""
        return self.cast(t, self.low) if self.autocast else t

    def ac_f32(self, t: Tensor) -> Tensor:
        """Autocast's cast of an input of an fp32-list op (pow, rsqrt, layer_norm, softmax w/o dtype, ...)."""
        return self.cast(t, "f32") if self.autocast else t

    # -- ops, each with its autograd save rule (derivatives.yaml) and its node
    def linear(self, x: Tensor, n_in: int, n_out: int, train_w: bool, w_dt: str | None = None) -> Tensor:
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
            xin, out_dt = x, promote(x.dt, w_dt) if x.dt != w_dt else w_dt
        if train_w:
            self.save(xin)
        return self.op(self.new(tokens * n_out, out_dt, x.rg or train_w), [xin], "newview", leaf=train_w)

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        """MulBackward0: saves ``other`` iff ``self`` needs a grad and ``self`` iff ``other`` does."""
        if a.rg:
            self.save(b)
        if b.rg:
            self.save(a)
        out = self.new(max(a.n, b.n), promote(a.dt, b.dt), a.rg or b.rg, a.bshd if a.n >= b.n else b.bshd)
        return self.op(out, [a, b])

    def scalar_op(self, a: Tensor, add: bool = False) -> Tensor:
        """Tensor (op) Python scalar: a new tensor, nothing saved. ``x * c`` / ``x / c``: the backward allocates
        grad * c; ``x + c``: AddBackward hands the gradient on."""
        return self.op(self.new(a.n, a.dt, a.rg, a.bshd), [a], "alias" if add else "new")

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        """AddBackward0 saves nothing and hands the same gradient to both inputs; the result has the promoted
        dtype."""
        out = self.new(max(a.n, b.n), promote(a.dt, b.dt), a.rg or b.rg, a.bshd if a.n >= b.n else b.bshd)
        return self.op(out, [a, b], "alias")

    def pow_(self, x: Tensor) -> Tensor:
        """PowBackward0 saves ``self`` (CUDA autocast runs pow in fp32). Backward (derivatives.yaml
        pow_backward): grad * (exponent * self.pow(exponent - 1)): two input-sized temporaries (measured)."""
        x = self.ac_f32(x)
        if x.rg:
            self.save(x)
        return self.op(self.new(x.n, x.dt, x.rg, x.bshd), [x], temp=2 * x.nbytes)

    def mean(self, x: Tensor, width: int) -> Tensor:
        """``mean(-1, keepdim=True)``: MeanBackward saves nothing; its backward expands and divides, a new
        input-sized tensor (measured)."""
        return self.op(self.new(x.n // width, x.dt, x.rg), [x])

    def save_result(self, x: Tensor, dt: str | None = None) -> Tensor:
        """Ops whose backward uses their result: rsqrt, tanh, sigmoid, relu, softmax, log_softmax."""
        out = self.new(x.n, dt or x.dt, x.rg, x.bshd)
        if x.rg:
            self.save(out)
        return self.op(out, [x], fused=True)   # _softmax_backward_data(..., input_dtype) writes x's dtype

    def save_input(self, x: Tensor) -> Tensor:
        """Ops whose backward uses their input: silu, gelu (exact and tanh-approximate)."""
        if x.rg:
            self.save(x)
        return self.op(self.new(x.n, x.dt, x.rg, x.bshd), [x])

    def dropout(self, x: Tensor, p: float) -> Tensor:
        """``native_dropout`` (the CUDA kernel of F.dropout): saves a 1-byte bool mask; p = 0 is a no-op.
        Backward: native_dropout_backward(grad, mask, scale), a new tensor."""
        if p <= 0:
            return x
        mask = self.new(x.n, "bool", False)
        if x.rg:
            self.save(mask)
        return self.op(self.new(x.n, x.dt, x.rg, x.bshd), [x])

    def layer_norm(self, x: Tensor, width: int, affine: bool) -> Tensor:
        """NativeLayerNormBackward0 saves input, mean and rstd (fp32 on CUDA); autocast runs it in fp32.
        Backward: grad_input only (weight/bias gradients are not asked for here)."""
        x = self.ac_f32(x)
        if x.rg or affine:
            self.save(x, self.new(x.n // width, "f32", False), self.new(x.n // width, "f32", False))
        return self.op(self.new(x.n, x.dt, x.rg or affine), [x])


# the names the replay modules used before the split (advisor.memory.activations re-exports them)
_T, _Trace, _Node, _BYTES, _promote = Tensor, Trace, Node, BYTES, promote
