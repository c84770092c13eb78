"""The backward replay: autograd's engine run over the nodes a forward replay recorded (:mod:`.symbolic`).

Nodes run in descending sequence number (torch/csrc/autograd/engine.cpp); gradients are accumulated by
``InputBuffer``'s rule (torch/csrc/autograd/input_buffer.cpp); saved storages are released with the last node
that saved them. Pure arithmetic: no torch.
"""

from __future__ import annotations

from collections import Counter

from .symbolic import Tensor, Trace

class _Buf:
    """A gradient storage: ``size`` bytes, ``refs`` holders (input buffers of nodes, the running node)."""

    __slots__ = ("size", "refs")

    def __init__(self, size: int):
        self.size, self.refs = size, 1


def _replay_backward(tr: Trace, loss: Tensor, kept: set[int], recompute: list[tuple[str, list[int]]],
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
