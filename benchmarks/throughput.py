"""Step-time model vs published training throughput (issue 13): measured vs estimated tokens/s per GPU.

Reads ``benchmarks/throughput_corpus.yaml`` (sources, settings, what was assumed), estimates each point with
``advisor.recommend.step_time.training_step_time`` and prints, per point, measured and estimated tokens/s per GPU
and the error, then for the calibration split, the held-out split and all points: the median |error| and the
pairwise ranking agreement among same-hardware points (same run series, GPU and GPU count; pairs whose measured
throughputs are within 3 % of each other are excluded as ties). ``use: ordering`` points (a setting that scales
throughput was not published) count in the pairs only.

    python benchmarks/throughput.py            # the table and the summary
    python benchmarks/throughput.py --json     # one JSON object (points and summary)

Targets (issue 13): median |error| <= 15 %, >= 90 % of same-hardware pairs ordered right.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from advisor.architecture import Architecture  # noqa: E402
from advisor.catalog.gpus import resolve_gpu  # noqa: E402
from advisor.catalog.models import resolve_model  # noqa: E402
from advisor.param_count import count_parameters, lora_trainable_parameters  # noqa: E402
from advisor.recommend.step_time import training_step_time  # noqa: E402
from advisor.specs import HardwareSpec, StrategySpec  # noqa: E402

CORPUS = Path(__file__).with_name("throughput_corpus.yaml")
TIE = 0.03
TARGET_MEDIAN = 0.15
TARGET_PAIRS = 0.90


def load(path: Path = CORPUS) -> dict:
    """The corpus with each point's defaults filled in and its split set."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    points = []
    for raw in data["points"]:
        p = {**data["defaults"], **raw}
        p.setdefault("split", "calibration")
        points.append(p)
    data["points"] = points
    return data


def estimate_point(p: dict, models: dict) -> dict:
    """The model's step time for one corpus point (tokens/s per GPU and its parts)."""
    if p["model"] in models:
        arch = Architecture(**models[p["model"]])
    else:
        arch = resolve_model(p["model"]).architecture
    counts = count_parameters(arch)
    gpu = resolve_gpu(p["gpu"])
    hw = HardwareSpec(gpus_per_node=p["gpus_per_node"], nodes=p["nodes"], vram_bytes=gpu.memory_bytes, gpu=gpu)
    strategy = StrategySpec.from_name(p["strategy"], p["offload_optimizer"], p["offload_param"])
    method = p["method"]
    if method == "full":
        trainable = counts.total
    else:
        trainable = lora_trainable_parameters(arch, p["lora_rank"], tuple(p.get("lora_targets", ["all-linear"])))
    attention = "sdpa" if p["attention"] == "flash" else p["attention"]
    st = training_step_time(arch, counts, trainable, hw, gpu, strategy, precision=p["precision"], method=method,
                            checkpointing=p["checkpointing"], micro_batch=p["micro_batch"], seq_len=p["seq_len"],
                            gas=p["grad_accum"], attention=attention)
    return {"estimated": st.tokens_per_second_per_gpu, "seconds": st.seconds, "compute": st.compute_seconds,
            "communication": st.communication_seconds, "offload": st.offload_seconds,
            "efficiency": st.compute_efficiency, "mfu": st.mfu}


def pair_agreement(rows: list[dict], keep=lambda a, b: True) -> tuple[int, int, list[tuple[str, str]]]:
    """(right, counted, wrong pairs) over same-hardware pairs; measured ties within TIE excluded."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["series"], r["gpu"], r["gpus_per_node"], r["nodes"]), []).append(r)
    right = counted = 0
    wrong = []
    for members in groups.values():
        for a, b in itertools.combinations(members, 2):
            if not keep(a, b):
                continue
            ma, mb = a["measured"], b["measured"]
            if abs(ma - mb) / max(ma, mb) <= TIE:
                continue
            counted += 1
            if (ma > mb) == (a["estimated"] > b["estimated"]):
                right += 1
            else:
                wrong.append((a["id"], b["id"]))
    return right, counted, wrong


def summarize(rows: list[dict], keep_pair=lambda a, b: True) -> dict:
    errs = [abs(r["error"]) for r in rows if r["use"] == "absolute"]
    right, counted, wrong = pair_agreement(rows, keep_pair)
    return {"points": len(errs), "median_abs_error": statistics.median(errs) if errs else None,
            "within_15pct": sum(e <= 0.15 for e in errs), "pairs": counted, "pairs_right": right,
            "pair_agreement": right / counted if counted else None, "wrong_pairs": wrong,
            "signed_median": statistics.median([r["error"] for r in rows if r["use"] == "absolute"]) if errs else None}


def run() -> dict:
    data = load()
    rows = []
    for p in data["points"]:
        est = estimate_point(p, data.get("models", {}))
        rows.append({"id": p["id"], "source": p["source"], "series": p["series"], "split": p["split"],
                     "use": p["use"], "gpu": p["gpu"], "gpus_per_node": p["gpus_per_node"], "nodes": p["nodes"],
                     "measured": float(p["tokens_per_s_per_gpu"]), **est,
                     "error": est["estimated"] / float(p["tokens_per_s_per_gpu"]) - 1,
                     "assumed": p.get("assumed", [])})
    cal = [r for r in rows if r["split"] == "calibration"]
    held = [r for r in rows if r["split"] == "held-out"]
    return {"points": rows, "sources": sorted({r["source"] for r in rows}),
            "calibration": summarize(cal), "held_out": summarize(held), "all": summarize(rows)}


def _fmt(s: dict) -> str:
    med = f"{100 * s['median_abs_error']:.1f} %" if s["median_abs_error"] is not None else "-"
    sgn = f"{100 * s['signed_median']:+.1f} %" if s["signed_median"] is not None else "-"
    agree = f"{100 * s['pair_agreement']:.1f} %" if s["pair_agreement"] is not None else "-"
    return (f"{s['points']:>3} points  median |error| {med:>7} (signed {sgn:>7}), {s['within_15pct']:>3} within 15 %;"
            f"  pairs {s['pairs_right']}/{s['pairs']} ordered right ({agree})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = run()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'point':<38}{'split':<12}{'measured':>10}{'estimated':>11}{'error':>9}  {'eff':>5} {'comm s':>7} "
          f"{'offl s':>7}")
    for r in out["points"]:
        flag = "" if r["use"] == "absolute" else "  (ordering only)"
        print(f"{r['id']:<38}{r['split']:<12}{r['measured']:>10,.0f}{r['estimated']:>11,.0f}"
              f"{100 * r['error']:>+8.1f}%  {r['efficiency']:>5.2f} {r['communication']:>7.2f} {r['offload']:>7.2f}"
              f"{flag}")
    print()
    print(f"sources: {len(out['sources'])} ({', '.join(out['sources'])})")
    for name in ("calibration", "held_out", "all"):
        print(f"{name:<12} {_fmt(out[name])}")
    wrong = out["all"]["wrong_pairs"]
    if wrong:
        print("pairs ordered wrong: " + "; ".join(f"{a} vs {b}" for a, b in wrong))
    ok = (out["all"]["median_abs_error"] <= TARGET_MEDIAN and out["all"]["pair_agreement"] >= TARGET_PAIRS)
    print(f"targets (median |error| <= {TARGET_MEDIAN:.0%}, pairs >= {TARGET_PAIRS:.0%}): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
