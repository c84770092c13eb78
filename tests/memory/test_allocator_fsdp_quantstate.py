"""Issue 17 (helper P): QLoRA QuantStates brought back to the GPU unit by unit at FSDP's wrap (PEFT < 0.12).

Sizes are hand-derived from CUDACachingAllocator's rules (advisor/memory/allocator.py constants): a request of
10 MiB or more gets a segment of its own rounded to 2 MiB; a large-pool block is split when more than 1 MiB remains;
a free block is taken best-fit."""

from advisor.memory.allocator import _fsdp_init_stats, fsdp_init_events
from advisor.stacks import quant_states_moved_at_wrap

MIB = 2 ** 20
# two decoder layers, each one unit of one 20 MiB tensor (no adapters), then a 4 MiB root; sharded over 2 ranks
UNITS = ((20 * MIB,), (20 * MIB,), (4 * MIB,))
QS = (12 * MIB,)        # one layer's QuantState, one 12 MiB tensor


def test_each_layers_quant_states_come_right_before_its_unit_and_stay():
    ev = fsdp_init_events([list(u) for u in UNITS], 2, False, loaded_per_layer=QS, layers=2)
    keys = [(op, k) for op, k, _ in ev]
    # unit 0: its QuantState, then its tensor, the flat copy, the shard, the flat copy and the tensor freed
    assert keys[:6] == [("a", ("L", 0, 0)), ("a", ("init", 0, 0)), ("a", ("flat", 0)), ("a", ("P", 0)),
                        ("f", ("flat", 0)), ("f", ("init", 0, 0))]
    assert keys[6:8] == [("a", ("L", 1, 0)), ("a", ("init", 1, 0))]
    # the root holds no decoder layer: no QuantState before it; none is ever freed
    assert keys[12] == ("a", ("init", 2, 0))
    assert [n for op, k, n in ev if k[0] == "L"] == [12 * MIB, 12 * MIB]
    assert not [k for op, k in keys if op == "f" and k[0] == "L"]


def test_adapter_units_get_none_only_the_layer_unit_of_each_group():
    # a layer = two adapter units then the layer's unit (advisor.memory.allocator._fsdp_units)
    units = [[MIB // 4], [MIB // 4], [20 * MIB]] * 2 + [[4 * MIB]]
    ev = fsdp_init_events(units, 2, False, loaded_per_layer=(3 * MIB, 1024), layers=2)
    before = [ev[i + 1][1][1] for i, e in enumerate(ev) if e[1] == ("L", e[1][1], 0)]
    assert before == [2, 5]          # the layer units of groups 0 and 1
    assert sum(n for _, k, n in ev if k[0] == "L") == 2 * (3 * MIB + 1024)


def test_reserved_of_both_orders_by_hand():
    # Before the wrap: two 12 MiB segments; unit 0: 20 (init) + 20 (flat) + 10 (shard) MiB segments, init and flat
    # freed; unit 1 reuses both 20s, a new 10 MiB shard; the root's 4 + 4 + 2 MiB split a free 20. 84 MiB.
    up_front = _fsdp_init_stats(UNITS, 2, False, False, QS, 2)
    assert up_front.peak_reserved == (12 + 12 + 20 + 20 + 10 + 10) * MIB
    # At the wrap: layer 1's QuantState takes 12 of a freed 20 MiB block (split, 8 MiB left), so unit 1's flat copy
    # needs a new 20 MiB segment; the root fits in the 8 MiB tail and a freed 20. 92 MiB.
    at_wrap = _fsdp_init_stats(UNITS, 2, False, False, QS, 2, loaded_at_wrap=True)
    assert at_wrap.peak_reserved == (12 + 20 + 20 + 10 + 20 + 10) * MIB
    # the live bytes peak the same: at unit 1's shard, its tensor, flat copy and shard over both QuantStates and
    # shard 0 (the originals are freed after the shard exists)
    assert up_front.peak_requested == at_wrap.peak_requested == (12 + 12 + 10 + 20 + 20 + 10) * MIB


def test_the_order_is_pinned_to_peft_before_0_12():
    # PEFT 0.10.0 ... 0.11.1 update_layer: self.to(weight.device, ...); 0.12.0 (2024-07-24) moves the adapter only;
    # the transformers of its time: <= 4.42 (4.43.0: 2024-07-23)
    assert quant_states_moved_at_wrap("4.39") and quant_states_moved_at_wrap("4.42.4")
    assert not quant_states_moved_at_wrap("4.43") and not quant_states_moved_at_wrap(None)
