"""The CUDA context and NCCL figures per card (issue 17, session 10, helper C): advisor/data/overhead.yaml
``context_classes`` / ``nccl_classes`` read by advisor.memory.overhead.outside_allocator.

Expected values are the published figures of benchmarks/gpu_overhead_corpus.yaml (read from the corpus, not from the
code under test) and NCCL's buffer constants (src/include/device.h, src/init.cc of v2.19.3-1 / v2.28.9-1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from advisor.api import build_hardware, estimate
from advisor.memory.overhead import outside_allocator, overhead_table, parse_overhead_table

MiB = 2 ** 20
ROOT = Path(__file__).resolve().parents[2]
CORPUS = {e["id"]: e for e in yaml.safe_load((ROOT / "benchmarks/gpu_overhead_corpus.yaml").read_text())["entries"]}
CUBLAS = CORPUS["dsadvise-h200-cublas"]["value_mib"] * MiB
H200_CONTEXT = CORPUS["dsadvise-h200-context"]["value_mib"] * MiB + CUBLAS
H200_NCCL = CORPUS["dsadvise-h200-nccl-world1"]["value_mib"] * MiB


def _hw(gpus: int, gpu: str | None = None, vram: float | None = None):
    return build_hardware(gpus, 1, vram, gpu)


def test_rtx3090_context_is_the_published_3090_figure_plus_cublas():
    o = outside_allocator(_hw(1, "rtx-3090"))
    assert o.context_bytes == CORPUS["nccl-pr-2366-3090-single-rank"]["value_mib"] * MiB + CUBLAS   # 484 + 64 MiB
    assert o.nccl_bytes == 0 and "NVIDIA/nccl#2366" in o.note()
    # A10G is the same GA102 chip: the same class
    assert outside_allocator(_hw(1, "a10g")).context_bytes == o.context_bytes


def test_rtx3090_pair_nccl_is_what_a_second_rank_adds_by_nccls_buffer_sizes():
    # per channel: receive buffers LL (8 lines x 512 threads x 8 steps x 16 B) + LL128 (120 x 640 x 8 x 8 B) + SIMPLE
    # 4 MiB, rounded up to CUDA_IPC_MIN 2 MiB; the send side's small struct rounded: 2 MiB; the NET shared p2p
    # buffer 16 steps x 128 KiB; 4 channels
    recv = 8 * 512 * 8 * 16 + 120 * 640 * 8 * 8 + (1 << 22)
    per_channel = -(-recv // (2 * MiB)) * 2 * MiB + 2 * MiB + 16 * 128 * 1024
    assert outside_allocator(_hw(2, "rtx-3090")).nccl_bytes == 4 * per_channel == 56 * MiB


def test_ada_and_hopper_contexts_are_their_published_figures():
    assert outside_allocator(_hw(1, "rtx-4090")).context_bytes == \
        CORPUS["unsloth-zoo-1053-rtx6000ada-context"]["value_mib"] * MiB + CUBLAS
    assert outside_allocator(_hw(1, "l40s")).context_bytes == outside_allocator(_hw(1, "rtx-6000-ada")).context_bytes
    assert outside_allocator(_hw(1, "h200")).context_bytes == H200_CONTEXT


def test_nvlink_communicators_of_three_or_more_gpus_take_the_a100_figure():
    a100 = CORPUS["nccl-964-a100-3plus"]["value_mib"] * MiB
    assert outside_allocator(_hw(4, "a100-80g")).nccl_bytes == a100
    assert outside_allocator(_hw(8, "h100-sxm")).nccl_bytes == a100
    # 2 GPUs: the A100's 544 MiB is below the H200 figure kept (never lowered on it)
    a100_two = CORPUS["nccl-964-a100-2rank"]["value_mib"] * MiB
    assert outside_allocator(_hw(2, "a100-80g")).nccl_bytes == H200_NCCL > a100_two
    assert outside_allocator(_hw(2, "h100-sxm")).nccl_bytes == H200_NCCL


def test_an_unmeasured_card_keeps_the_h200_figures_and_says_so():
    o = outside_allocator(_hw(2, "v100-32g"))
    assert (o.context_bytes, o.nccl_bytes) == (H200_CONTEXT, H200_NCCL)
    assert "not measured for this card (v100-32g, volta)" in o.note()
    assert "not measured for 2 x v100-32g" in o.note()
    # a measured card at a world size no NCCL class covers: the default, the init counted twice (never under)
    four = outside_allocator(_hw(4, "rtx-3090"))
    assert four.nccl_bytes == H200_NCCL and "counted again" in four.note()


def test_vram_alone_takes_the_largest_figure_of_any_card():
    one, two, four = (outside_allocator(_hw(n, vram=24)) for n in (1, 2, 4))
    t = overhead_table()
    assert one.context_bytes == max([t.default_context] + [c.bytes for c in t.contexts.values()]) == H200_CONTEXT
    assert two.nccl_bytes == H200_NCCL
    assert four.nccl_bytes == CORPUS["nccl-964-a100-3plus"]["value_mib"] * MiB
    assert "no GPU named" in four.note()


def test_the_estimate_counts_and_notes_them_and_the_oom_retry_limit_uses_them():
    # Answer.AI's Llama-2-7B QLoRA at micro-batch 10 on 2 x RTX 3090 (benchmarks/gpu_memory_corpus.yaml
    # answerai-7b-qlora-bs10-3090): the allocator model reaches the card, so its reserved bytes sit at the OOM-retry
    # limit, which is the card less this card's context and NCCL (not the H200's)
    est = estimate("llama-2-7b", gpus=2, gpu="rtx-3090", strategy="fsdp-full", method="qlora",
                   precision="pure-bf16", micro_batch=10, seq_len=2048, checkpointing="full", lora_rank=64,
                   lora_targets=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"),
                   lora_dropout=0.1, loss="legacy-inline", torch_version="2.2", transformers_version="4.39")
    hw = _hw(2, "rtx-3090")
    o = outside_allocator(hw)
    g = est.per_gpu
    assert g.breakdown["CUDA context"] == o.context_bytes and g.breakdown["NCCL communicators"] == o.nccl_bytes
    assert hw.vram_bytes - H200_CONTEXT - H200_NCCL < g.reserved <= hw.vram_bytes - o.total
    assert any(n.startswith("outside PyTorch's caching allocator, per GPU: CUDA context 548 MiB") for n in est.notes)


def test_the_published_3090_runs_leave_room_for_what_is_counted_outside_the_allocator():
    # benchmarks/gpu_overhead_corpus.py's check: Yi-34B on 2 x RTX 3090 reserved 23.05 / 22.98 GiB and ran
    from benchmarks.gpu_overhead_corpus import check_rows, load

    rows = check_rows(load())
    assert rows and all(margin >= 0 for *_, margin in rows)


@pytest.mark.parametrize("patch, key", [
    ({"context_classes": {"ada": {"bytes": -1, "nccl_init_included": False, "source": "x"}}},
     "gpu.context_classes.ada.bytes"),
    ({"context_classes": {"adaa": {"bytes": 1, "nccl_init_included": False, "source": "x"}}},
     "gpu.context_classes.adaa: unknown generation"),
    ({"context_classes": {"ada": {"bytes": 1, "nccl_init_included": False, "source": " "}}},
     "gpu.context_classes.ada.source"),
    ({"context_classes": {"ada": {"bytes": 1, "nccl_init_included": "yes", "source": "x"}}},
     "gpu.context_classes.ada.nccl_init_included"),
    ({"nccl_classes": [{"generations": ["ada"], "links": ["pcie"], "min_world": 1, "max_world": None, "bytes": 1,
                        "source": "x"}]}, "gpu.nccl_classes[0].min_world"),
    ({"nccl_classes": [{"generations": ["ada"], "links": ["pcie"], "min_world": 4, "max_world": 2, "bytes": 1,
                        "source": "x"}]}, "gpu.nccl_classes[0].max_world"),
    ({"nccl_classes": [{"generations": ["ada"], "links": ["nvswitch"], "min_world": 2, "max_world": None,
                        "bytes": 1, "source": "x"}]}, "gpu.nccl_classes[0].links"),
    ({"nccl_bytes": "558 MiB"}, "gpu.nccl_bytes"),
])
def test_bad_data_fails_with_one_line_naming_the_key(patch, key):
    good = {"cuda_context_bytes": 1, "nccl_bytes": 1, "context_classes": {}, "nccl_classes": []}
    with pytest.raises(ValueError) as err:
        parse_overhead_table({**good, **patch})
    assert str(err.value).startswith(f"advisor/data/overhead.yaml {key}") and "\n" not in str(err.value)


def test_inference_layouts_count_the_cards_context():
    # an inference layout's overhead is the CUDA context + the flat allocator fraction of what it allocates
    # (advisor/memory/inference.py): on an RTX 4090 the Ada context, not the H200's
    est = estimate("llama-2-7b", gpus=1, gpu="rtx-4090", task="infer", micro_batch=1, seq_len=1024)
    lay = est.inference[0]
    allocated = lay.weights + lay.kv_cache + lay.transient
    frag = lay.overhead - CORPUS["unsloth-zoo-1053-rtx6000ada-context"]["value_mib"] * MiB - CUBLAS
    assert frag == int(allocated * overhead_table_fraction())
    assert any(n.startswith("outside PyTorch's caching allocator, per GPU: CUDA context 490 MiB") for n in est.notes)


def overhead_table_fraction() -> float:
    from advisor.memory.overhead import overhead_defaults

    return overhead_defaults().allocator_fragmentation_fraction


def test_one_gpu_under_deepspeed_still_holds_a_nccl_communicator():
    # deepspeed.initialize makes a NCCL group and the engine broadcasts the model / all_reduces ZeRO's gradient norm
    # on it at world size 1 too: the H200 world-1 measurement; on the RTX 3090, whose context figure already holds a
    # communicator's init, the shared buffer its first collective maps (996 - 484 MiB, NVIDIA/nccl#2366)
    from advisor.api import build_strategy

    h200, r3090 = _hw(1, "h200"), _hw(1, "rtx-3090")
    zero2 = build_strategy(h200, "zero2", "none", "none", "auto")
    # two communicators: DeepSpeed's cloned data-parallel group and the world group (benchmarks/nccl_communicators.py)
    assert outside_allocator(h200, zero2).nccl_bytes == 2 * H200_NCCL
    eager_connect = 996   # MiB, the PR's NCCL_RUNTIME_CONNECT=0 reading of the same process
    assert outside_allocator(r3090, zero2).nccl_bytes == \
        2 * (eager_connect - CORPUS["nccl-pr-2366-3090-single-rank"]["value_mib"]) * MiB
    assert outside_allocator(r3090, build_strategy(r3090, "single", "none", "none", "auto")).nccl_bytes == 0
    est = estimate("llama-2-7b", gpus=1, gpu="h200", strategy="zero2", micro_batch=1, seq_len=512)
    assert est.per_gpu.breakdown["NCCL communicators"] == 2 * H200_NCCL


def test_blackwell_nvlink_takes_the_a100_floor_and_pcie_blackwell_does_not():
    a100 = CORPUS["nccl-964-a100-3plus"]["value_mib"] * MiB
    assert outside_allocator(_hw(8, "b200")).nccl_bytes == a100
    assert outside_allocator(_hw(4, "rtx-5090")).nccl_bytes == H200_NCCL   # PCIe: not measured, the default
