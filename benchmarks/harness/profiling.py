"""Reading the CPU allocator: marker allocations, the profiler's live-byte curve, and live tensor storage.

A profiled region is bracketed by :func:`mark` (an allocation of an odd size, ``MARK_BYTES``, freed at once);
:func:`live_curve` turns the profiler's memory timeline into live bytes after each allocation event and
finds the markers, so ``max(curve[i0 + 2:i1]) - curve[i0]`` is the peak of the region above its start.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import torch

MARK_BYTES = 7_777_777  # an allocation of this odd size marks a point in the profiled timeline


def mark() -> None:
    """One marker allocation of ``MARK_BYTES``, freed at once."""
    m = torch.empty(MARK_BYTES, dtype=torch.uint8)
    del m


@contextlib.contextmanager
def profiled() -> Iterator[object]:
    """``torch.profiler.profile`` recording allocator events (CPU), yielded; the caller reads it after."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        yield prof


def live_curve(prof) -> tuple[list[int], list[int]]:
    """Live bytes after each allocation event (CREATE/DESTROY of the profiler's memory timeline, the data
    behind ``export_memory_timeline``), and the indices of the marker allocations (see :func:`mark`)."""
    from torch.profiler._memory_profiler import Action

    live, curve, marks = 0, [], []
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            if size == MARK_BYTES:
                marks.append(len(curve))
            live += size
        elif action == Action.DESTROY:
            live -= size
        else:
            continue
        curve.append(live)
    return curve, marks


def raw_curve(prof) -> tuple[list[int], list[int]]:
    """Live-byte changes after each allocator event (the profiler's raw ``[memory]`` events in time order;
    frees of older blocks count too), and the marker indices. :func:`live_curve`'s data-flow pass trips on
    DeepSpeed's in-place partition ops; this one does not."""
    mem = []
    for e in prof.profiler.kineto_results.events():
        try:
            if e.name() == "[memory]":
                mem.append((e.start_ns(), e.nbytes()))
        except UnicodeDecodeError:          # an op name kineto cannot decode: not an allocator event
            continue
    mem.sort(key=lambda x: x[0])
    live, curve, marks = 0, [], []
    for _, nbytes in mem:
        if nbytes == MARK_BYTES:
            marks.append(len(curve))
        live += nbytes
        curve.append(live)
    return curve, marks


def window_peak(curve: list[int], marks: list[int], first: int = 0) -> tuple[int, int]:
    """(level at marker ``first``, peak between markers ``first`` and ``first + 1``), marker bytes removed."""
    i0, i1 = marks[first], marks[first + 1]
    base = curve[i0] - MARK_BYTES
    return base, max(curve[i0 + 2:i1] or [base])


def live_tensor_bytes() -> int:
    """Bytes of every distinct CPU tensor storage Python can reach (parameters and their ZeRO partitions,
    master weights, optimizer states, gradient and bucket buffers): what exists before a profiled step."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (ReferenceError, RuntimeError, NotImplementedError, TypeError):  # dead weak proxies, meta/fake tensors
            continue
    return sum(seen.values())
