"""One loss head's forward and backward, profiled: the bytes autograd saves and the two phases' peaks.

Shared by ``benchmarks/loss_kernels.py`` (torchtune's chunked output, Liger-style fused linear cross-entropy,
transformers' plain loss) and ``benchmarks/trl_loss.py`` (TRL's chunked log-prob head). No kind imports this
module, so editing it leaves the measurement cache's keys (``harness_hash``) as they are.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .profiling import MARK_BYTES, live_curve, mark, profiled


def head_step(forward: Callable[[], tuple[torch.Tensor, Any]], wrt: torch.Tensor,
              params: Iterable[torch.Tensor]) -> tuple[int, int, int]:
    """Run ``forward()`` (it returns the loss and whatever the caller keeps alive with it) under
    ``saved_tensors_hooks``, then ``torch.autograd.grad(loss, [wrt])``, inside the profiler.

    Returns bytes: the unique storages autograd saved (``params`` excluded), the forward's peak above its
    start, and the backward's peak above the level the forward left (marker allocations bracket each phase).
    """
    saved: dict[int, int] = {}
    skip = {p.untyped_storage().data_ptr() for p in params}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            saved[st.data_ptr()] = st.nbytes()
        return t

    gc.collect()
    with profiled() as prof:
        mark()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, held = forward()
        mark()
        torch.autograd.grad(loss, [wrt])
        mark()
    curve, marks = live_curve(prof)
    i0, i1, i2 = marks[:3]
    base = curve[i0] - MARK_BYTES
    level = curve[i1] - MARK_BYTES
    fwd_peak = max(curve[i0 + 1:i1] or [base]) - base
    bwd_peak = max(curve[i1 + 2:i2] or [level]) - level
    del held, loss
    return sum(saved.values()), fwd_peak, bwd_peak
