"""Published measurements of what a GPU process holds outside PyTorch's caching allocator, and what dsadvise counts.

Run: python benchmarks/gpu_overhead_corpus.py

For each entry of benchmarks/gpu_overhead_corpus.yaml (CUDA context, cuBLAS handle, NCCL communicator, measured on a
named card and stack, with its link): the published figure, and the CUDA context / NCCL bytes dsadvise counts for that
card at that world size (advisor.memory.overhead.outside_allocator over advisor/data/overhead.yaml). Then the check of
the published Answer.AI 2 x RTX 3090 runs (benchmarks/gpu_memory_corpus.yaml): their peak reserved bytes plus what
dsadvise counts outside the allocator must fit the card (torch's total_memory), or the run could not have happened.
Nothing here is fitted: the check is a consequence of the figures, listed with its margin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.api import build_hardware, build_strategy  # noqa: E402
from advisor.memory.overhead import outside_allocator  # noqa: E402

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "gpu_overhead_corpus.yaml"
MEMORY_CORPUS = HERE / "gpu_memory_corpus.yaml"
MiB = 2 ** 20


def load() -> dict:
    """The overhead corpus as parsed YAML."""
    return yaml.safe_load(CORPUS.read_text(encoding="utf-8"))


def dsadvise_for(entry: dict) -> tuple[int, int]:
    """(context bytes, NCCL bytes) dsadvise counts for the entry's card at its world size (at least 1); no card
    named: the --vram-only answer. A NCCL figure measured on one GPU is compared with a one-GPU DeepSpeed run (the
    one-GPU case that holds a communicator)."""
    world = max(1, int(entry.get("world") or 1))
    hw = build_hardware(world, 1, 24 if entry.get("gpu") is None else None, entry.get("gpu"))
    strategy = None
    if world == 1 and str(entry["measures"]).startswith("nccl"):
        strategy = build_strategy(hw, "zero2", "none", "none", "auto")
    o = outside_allocator(hw, strategy)
    return o.context_bytes, o.nccl_bytes


def check_rows(corpus: dict) -> list[tuple[str, float, float, float, float]]:
    """(point, card MiB, reserved MiB, dsadvise outside MiB, margin MiB) for each check of the corpus, the card read at
    the smallest total_memory published for it (the tighter check)."""
    points = {p["id"]: p for p in yaml.safe_load(MEMORY_CORPUS.read_text(encoding="utf-8"))["points"]}
    totals = {}
    for e in corpus["entries"]:
        if e["measures"] == "total-memory":
            totals.setdefault(e["gpu"], []).append(float(e["value_mib"]))
    totals["rtx-3090"] = totals.get("rtx-3090", []) + [24259.0]   # newer drivers' figure (the entry's note)
    rows = []
    for c in corpus["checks"]:
        p = points[c["point"]]
        hw = build_hardware(p["gpus"], 1, None, p["gpu"])
        outside = outside_allocator(hw).total / MiB
        card = min(totals.get(p["gpu"], [hw.vram_bytes / MiB]))
        reserved = c["reserved_gib"] * 1024
        rows.append((c["point"], card, reserved, outside, card - reserved - outside))
    return rows


def main() -> None:
    corpus = load()
    print(f"{'entry':38} {'measures':19} {'MiB':>8}  {'card':13} {'stack':34} {'world':>5}  "
          f"{'dsadvise ctx':>12} {'nccl':>6}")
    for e in corpus["entries"]:
        stack = ", ".join(x for x in (f"CUDA {e['cuda']}" if e.get("cuda") else "",
                                      f"torch {e['torch']}" if e.get("torch") else "",
                                      f"NCCL {e['nccl']}" if e.get("nccl") else "",
                                      e.get("module_loading") or "") if x) or "not stated"
        ctx, nccl = dsadvise_for(e)
        value = "source" if e.get("value_mib") is None else f"{float(e['value_mib']):8.1f}"
        print(f"{e['id']:38} {e['measures']:19} {value:>8}  {str(e.get('gpu') or '?'):13} "
              f"{stack[:34]:34} {e.get('world') or 1:>5}  {ctx / MiB:12.0f} {nccl / MiB:6.0f}   "
              f"[{e.get('class') or 'reference'}]")
    print("\ncheck: published peak reserved + dsadvise's context and NCCL <= the card (torch total_memory)")
    print(f"{'point':42} {'card MiB':>9} {'reserved':>9} {'outside':>8} {'margin':>7}")
    ok = True
    for point, card, reserved, outside, margin in check_rows(corpus):
        ok &= margin >= 0
        verdict = "ok" if margin >= 0 else "FAILS"
        print(f"{point:42} {card:9.0f} {reserved:9.0f} {outside:8.0f} {margin:7.0f}  {verdict}")
    print("every check holds" if ok else
          "a check FAILS: dsadvise counts more outside the allocator than these runs had")


if __name__ == "__main__":
    main()
