"""PyTorch's CUDA caching allocator, simulated over an allocation/free sequence (pure Python, bytes).

``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` are what this allocator reports, and what a
GPU runs out of is the reserved memory (plus the CUDA context and NCCL, which it does not manage). This
module reproduces the decisions of ``c10/cuda/CUDACachingAllocator.cpp`` (PyTorch main, read at
github.com/pytorch/pytorch commit 001074d2; the rules below have been stable since PyTorch 1.x/2.0):

* ``round_size``: every request is rounded up to a multiple of ``kMinBlockSize`` = 512 bytes (requests
  below 512 take 512; ``roundup_power2_divisions`` is off by default).
* ``get_pool``: requests of at most ``kSmallSize`` = 1 MiB use the small pool, larger ones the large pool.
* ``get_allocation_size``: a new segment (``cudaMalloc``) is 2 MiB (``kSmallBuffer``) for the small pool,
  20 MiB (``kLargeBuffer``) for requests below 10 MiB (``kMinLargeAlloc``), else the request rounded up to
  2 MiB (``kRoundLarge``).
* ``get_free_block``: best fit, the smallest cached free block of the pool that is at least the request
  (``std::set`` ordered by size, then address); with ``max_split_size`` set, a request below it never takes
  a block of at least ``max_split_size``, and a request of at least ``max_split_size`` takes no block that is
  ``kLargeBuffer`` (20 MiB) or more larger than itself.
* ``should_split``: the remainder of the chosen block becomes a free block when it is at least 512 bytes
  (small pool, or expandable segments), or when it is more than 1 MiB and the request is below
  ``max_split_size`` (large pool). An unsplit block is handed out whole and counts whole as allocated
  (``stats.allocated_bytes`` adds ``block->size``).
* ``free_block``/``try_merge_blocks``: a freed block merges with its free neighbours of the same segment;
  segments are never returned to CUDA during a step (only ``empty_cache`` or the retry after a failed
  ``cudaMalloc`` releases whole free segments), so ``reserved`` only grows.
* ``expandable_segments:True`` (Note [Expandable Segments]): one segment per pool and stream whose mapped
  size grows in pages of 2 MiB (small pool) or 20 MiB (large pool); a request with no fitting free block is
  placed at the lowest address with enough free + unmapped space (in a growing run, the free tail of the
  segment) and only the missing pages are mapped; every remainder of at least 512 bytes is split off.

The simulation assumes memory to spare (no OOM retries, unless a capacity is given): its ``reserved`` is what
``max_memory_reserved`` reports when the card is large enough, an upper bound of what a tighter card would
need. Free blocks belong to the stream that allocated them (``BlockComparatorSize`` orders by stream first and
``get_free_block`` takes no block of another stream): a sequence here is one stream's; pools of other streams
are simulated apart (:mod:`advisor.memory.allocator`).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass

K_MIN_BLOCK = 512                 # kMinBlockSize
K_SMALL_SIZE = 1 << 20            # kSmallSize: largest small-pool request, 1 MiB
K_SMALL_BUFFER = 2 << 20          # kSmallBuffer: small-pool segment, 2 MiB
K_LARGE_BUFFER = 20 << 20         # kLargeBuffer: segment for 1-10 MiB requests, 20 MiB
K_MIN_LARGE_ALLOC = 10 << 20      # kMinLargeAlloc
K_ROUND_LARGE = 2 << 20           # kRoundLarge
NO_MAX_SPLIT = 1 << 62            # max_split_size default: unlimited (SIZE_MAX)


def round_size(size: int) -> int:
    """``round_size``: the request rounded up to a multiple of 512 bytes (at least 512)."""
    if size < K_MIN_BLOCK:
        return K_MIN_BLOCK
    return K_MIN_BLOCK * ((size + K_MIN_BLOCK - 1) // K_MIN_BLOCK)


def allocation_size(size: int) -> int:
    """``get_allocation_size``: bytes of the segment cudaMalloc'd for a rounded request with no cached fit."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


class _Block:
    __slots__ = ("size", "addr", "prev", "next", "allocated", "small")

    def __init__(self, size: int, addr: int, small: bool):
        self.size, self.addr, self.small = size, addr, small
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.allocated = False


@dataclass(frozen=True)
class AllocatorStats:
    """Result of a simulated sequence, in bytes: the peaks ``max_memory_allocated`` / ``max_memory_reserved``
    report, the peak of the raw requested bytes, and the number of segments (cudaMalloc calls or mappings)."""

    peak_allocated: int
    peak_reserved: int
    peak_requested: int
    segments: int
    oom: bool = False         # a segment did not fit ``capacity`` even after releasing the cached ones
    released: int = 0         # bytes of cached segments released by OOM retries


class CachingAllocator:
    """One device's caching allocator (one stream). ``malloc(key, nbytes)`` / ``free(key)``; the peaks are
    read from :meth:`stats`."""

    def __init__(self, expandable_segments: bool = False, max_split_size: int | None = None):
        self.expandable = expandable_segments
        self.max_split = max_split_size if max_split_size else NO_MAX_SPLIT
        self._free = {True: [], False: []}              # pool (small?) -> sorted [(size, addr)]
        self._by_addr: dict[int, _Block] = {}          # free blocks by address
        self._live: dict[object, tuple[_Block, int]] = {}
        self._next_addr = 0
        self._seg_end: dict[bool, int] = {}            # expandable: mapped end of each pool's segment
        self._last: dict[bool, _Block] = {}            # expandable: the block at that end
        self.allocated = self.reserved = self.requested = 0
        self.peak_allocated = self.peak_reserved = self.peak_requested = 0
        self.segments = 0

    # -- free-list bookkeeping
    def _insert(self, b: _Block) -> None:
        insort(self._free[b.small], (b.size, b.addr))
        self._by_addr[b.addr] = b

    def _remove(self, b: _Block) -> None:
        lst = self._free[b.small]
        del lst[bisect_left(lst, (b.size, b.addr))]
        del self._by_addr[b.addr]

    def _new_segment(self, size: int, small: bool) -> _Block:
        b = _Block(size, self._next_addr, small)
        self._next_addr += size + K_LARGE_BUFFER      # distinct address ranges: segments never merge
        self.reserved += size
        self.segments += 1
        return b

    # -- best fit (get_free_block)
    def _find(self, size: int, small: bool) -> _Block | None:
        lst = self._free[small]
        i = bisect_left(lst, (size, -1))
        if i == len(lst):
            return None
        b = self._by_addr[lst[i][1]]
        if self.expandable and b is self._last.get(small) and i + 1 < len(lst):
            b = self._by_addr[lst[i + 1][1]]          # expandable_size: the growing tail ranks last
        if size < self.max_split <= b.size:
            return None
        if size >= self.max_split and b.size >= size + K_LARGE_BUFFER:
            return None
        self._remove(b)
        return b

    # -- expandable segments (try_allocate_expandable_block)
    def _grow(self, size: int, small: bool) -> _Block:
        """Map pages at the end of the pool's segment: extend its free tail, or add a block after the last."""
        page = K_SMALL_BUFFER if small else K_LARGE_BUFFER
        if small not in self._seg_end:
            self._seg_end[small] = self._next_addr
            self._next_addr += 1 << 50                # the segment's reserved virtual address space
            self.segments += 1
        last = self._last.get(small)
        if last is not None and not last.allocated:
            self._remove(last)
            grow = page * -(-(size - last.size) // page)
            last.size += grow
        else:
            grow = page * -(-size // page)
            last_new = _Block(grow, self._seg_end[small], small)
            last_new.prev = last
            if last is not None:
                last.next = last_new
            self._last[small] = last = last_new
        self._seg_end[small] += grow
        self.reserved += grow
        return last

    # -- public API
    def malloc(self, key: object, nbytes: int) -> None:
        """Allocate ``nbytes`` for ``key`` (CUDACachingAllocator ``malloc``)."""
        size = round_size(nbytes)
        small = size <= K_SMALL_SIZE
        b = self._find(size, small)
        if b is None:
            b = self._grow(size, small) if self.expandable else self._new_segment(allocation_size(size), small)
        remaining = b.size - size
        if small or self.expandable:
            split = remaining >= K_MIN_BLOCK
        else:
            split = size < self.max_split and remaining > K_SMALL_SIZE
        if split:
            rest = _Block(remaining, b.addr + size, small)
            rest.prev, rest.next = b, b.next
            if b.next is not None:
                b.next.prev = rest
            b.next = rest
            b.size = size
            self._insert(rest)
            if self.expandable and self._last.get(small) is b:
                self._last[small] = rest
        b.allocated = True
        self._live[key] = (b, nbytes)
        self.allocated += b.size
        self.requested += nbytes
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.peak_requested = max(self.peak_requested, self.requested)

    def free(self, key: object) -> None:
        """Return ``key``'s block to its pool, merging free neighbours (``free_block``)."""
        b, nbytes = self._live.pop(key)
        b.allocated = False
        self.allocated -= b.size
        self.requested -= nbytes
        for nb in (b.prev, b.next):
            if nb is not None and not nb.allocated:
                self._remove(nb)
                if nb is b.prev:
                    b.addr = nb.addr
                    b.prev = nb.prev
                    if nb.prev is not None:
                        nb.prev.next = b
                else:
                    b.next = nb.next
                    if nb.next is not None:
                        nb.next.prev = b
                b.size += nb.size
                if self.expandable and self._last.get(b.small) is nb:
                    self._last[b.small] = b
        self._insert(b)

    def stats(self) -> AllocatorStats:
        return AllocatorStats(self.peak_allocated, self.peak_reserved, self.peak_requested, self.segments)


def simulate(events: Iterable[tuple[str, object, int]], expandable_segments: bool = False,
             max_split_size: int | None = None, capacity: int | None = None) -> AllocatorStats:
    """Run ``events`` — ``("a", key, nbytes)`` allocations and ``("f", key, 0)`` frees — through a fresh
    allocator and return its peaks (bytes). ``capacity`` (default configuration only): see
    :func:`_simulate_default`."""
    al = CachingAllocator(expandable_segments, max_split_size)
    if expandable_segments or max_split_size:
        for op, key, nbytes in events:
            if op == "a":
                al.malloc(key, nbytes)
            else:
                al.free(key)
        return al.stats()
    return _simulate_default(events, capacity)


def _simulate_default(events: Iterable[tuple[str, object, int]], capacity: int | None = None) -> AllocatorStats:
    """:class:`CachingAllocator` with the default configuration, inlined for speed (it runs inside every
    estimate); ``tests/memory/test_allocator.py`` checks it against the class on random sequences.
    A block is a list [size, addr, prev, next, allocated, small].

    ``capacity``: bytes cudaMalloc can give. A new segment that would exceed it first makes the allocator
    release every cached block that is a whole segment (``release_cached_blocks``, then ``alloc_block``
    again: CUDACachingAllocator ``malloc``); if it still does not fit, the run is out of memory."""
    released = 0
    free_lists: dict[bool, list] = {True: [], False: []}
    by_addr: dict[int, list] = {}
    live: dict = {}
    next_addr = 0
    allocated = reserved = requested = 0
    peak_a = peak_r = peak_q = 0
    segments = 0
    for op, key, nbytes in events:
        if op == "a":
            size = K_MIN_BLOCK if nbytes < K_MIN_BLOCK else K_MIN_BLOCK * ((nbytes + K_MIN_BLOCK - 1) // K_MIN_BLOCK)
            small = size <= K_SMALL_SIZE
            lst = free_lists[small]
            i = bisect_left(lst, (size, -1))
            if i < len(lst):
                b = by_addr.pop(lst[i][1])
                del lst[i]
            else:
                seg = (K_SMALL_BUFFER if small else K_LARGE_BUFFER if size < K_MIN_LARGE_ALLOC
                       else K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE))
                if capacity is not None and reserved + seg > capacity:
                    for pool in free_lists.values():
                        keep = []
                        for fsz, faddr in pool:
                            fb = by_addr[faddr]
                            if fb[2] is None and fb[3] is None:      # an unsplit cached segment: cudaFree
                                del by_addr[faddr]
                                reserved -= fsz
                                released += fsz
                            else:
                                keep.append((fsz, faddr))
                        pool[:] = keep
                    if reserved + seg > capacity:
                        return AllocatorStats(peak_a, peak_r, peak_q, segments, True, released)
                b = [seg, next_addr, None, None, False, small]
                next_addr += seg + K_LARGE_BUFFER
                reserved += seg
                segments += 1
                if reserved > peak_r:
                    peak_r = reserved
            remaining = b[0] - size
            if remaining >= K_MIN_BLOCK if small else remaining > K_SMALL_SIZE:
                rest = [remaining, b[1] + size, b, b[3], False, small]
                if b[3] is not None:
                    b[3][2] = rest
                b[3] = rest
                b[0] = size
                insort(lst, (remaining, rest[1]))
                by_addr[rest[1]] = rest
            b[4] = True
            live[key] = (b, nbytes)
            allocated += b[0]
            requested += nbytes
            if allocated > peak_a:
                peak_a = allocated
            if requested > peak_q:
                peak_q = requested
        else:
            b, nbytes = live.pop(key)
            b[4] = False
            allocated -= b[0]
            requested -= nbytes
            lst = free_lists[b[5]]
            nb = b[2]
            if nb is not None and not nb[4]:
                del lst[bisect_left(lst, (nb[0], nb[1]))]
                del by_addr[nb[1]]
                b[1] = nb[1]
                b[0] += nb[0]
                b[2] = nb[2]
                if nb[2] is not None:
                    nb[2][3] = b
            nb = b[3]
            if nb is not None and not nb[4]:
                del lst[bisect_left(lst, (nb[0], nb[1]))]
                del by_addr[nb[1]]
                b[0] += nb[0]
                b[3] = nb[3]
                if nb[3] is not None:
                    nb[3][2] = b
            insort(lst, (b[0], b[1]))
            by_addr[b[1]] = b
    return AllocatorStats(peak_a, peak_r, peak_q, segments, False, released)


# ---------------------------------------------------------------------------------------------------------
# The allocation sequence of training steps
# ---------------------------------------------------------------------------------------------------------
