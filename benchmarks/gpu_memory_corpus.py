"""Published GPU memory measurements vs dsadvise, like for like.

Run: python benchmarks/gpu_memory_corpus.py [--csv]

Each point of benchmarks/gpu_memory_corpus.yaml is estimated with the settings its source states (and the
assumptions it lists) and compared with what was measured: max_memory_allocated with ``per_gpu.allocated``,
max_memory_reserved with ``per_gpu.reserved``, nvidia-smi with ``per_gpu.total``, ``reserved-after-wrap`` (the
reserved bytes right after FSDP wraps the model, before training) with the FSDP wrapping dsadvise simulates
(``advisor.memory.allocator.fsdp_after_wrap``). A point measured "OOM" passes
when the estimate's total exceeds the card. Summary over the comparable points: in band (−3 … +15 %), median
|error|, worst low. Nothing is fitted to these points.

Points whose setup dsadvise cannot express (``expressible: false``, with ``why_not``) are not compared; those marked
``reference: true`` are still estimated with the nearest settings dsadvise has and listed apart, so the gap stays
visible.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.api import estimate  # noqa: E402
from advisor.errors import InputError  # noqa: E402

CORPUS = Path(__file__).with_name("gpu_memory_corpus.yaml")
UNIT = {"GB": 1e9, "GiB": 2 ** 30, "MiB": 2 ** 20}
BAND = (-3.0, 15.0)


def model_arg(p: dict) -> str:
    """The point's model: a catalog name, or a config.json under benchmarks/ (relative to the repository root, e.g.
    litgpt's untied Gemma in benchmarks/corpus_configs/) made absolute so the script runs from any directory."""
    m = p["model"]
    if m.endswith(".json"):
        return str(Path(__file__).resolve().parents[1] / m)
    return m


def kwargs(p: dict) -> dict:
    kw = dict(model=model_arg(p), gpus=p["gpus"], gpu=p["gpu"], strategy=p.get("strategy"), method=p["method"],
              precision=p.get("precision"), micro_batch=p["micro_batch"], seq_len=p["seq_len"],
              checkpointing=p.get("checkpointing", "none"), loss=p.get("loss", "plain"),
              loss_chunks=p.get("loss_chunks", 8), double_quant=p.get("double_quant", True),
              attention=p.get("attention", "sdpa"), global_batch=p.get("global_batch"),
              bucket_sizes=p.get("bucket_sizes", "auto"),
              # issue 17 (helper T): the software stack the point's sources support (advisor/data/stacks.yaml)
              torch_version=p.get("torch_version"), transformers_version=p.get("transformers_version"))
    if p.get("base_dtype"):                      # issue 17: a LoRA base loaded in fp32
        kw.update(base_dtype=p["base_dtype"])
    if p["method"] in ("lora", "qlora"):
        kw.update(lora_rank=p["lora_rank"], lora_targets=tuple(p["lora_targets"]), lora_dropout=p.get("lora_dropout", 0.0))
    if p.get("qlora_quantizer"):   # issue 17 (L): litgpt's QLoRA is quantized by lightning (the lm_head too)
        kw.update(qlora_quantizer=p["qlora_quantizer"])
    if p.get("model_code"):        # issue 17 (G): litgpt runs its own model code
        kw.update(model_code=p["model_code"])
    if p.get("batch_lengths"):     # issue 17 (L): batches padded to their own longest sample (--batch-lengths)
        kw.update(batch_lengths=p["batch_lengths"])
    if p.get("offload", "none") != "none":
        kw.update(offload_optimizer=p["offload"], offload_param=p["offload"])
    return kw


# issue 17: a moment before training, compared like for like (``measured.kind``).
AFTER_WRAP = "reserved-after-wrap"


def after_wrap_reserved(p: dict, est) -> int | None:
    """``torch.cuda.memory_reserved()`` right after ``FSDP(...)`` returns, as dsadvise simulates it
    (advisor.memory.allocator.fsdp_after_wrap over the estimate's own per-GPU parameter bytes), for a point
    measured at that moment; None where dsadvise does not model the wrapping."""
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory.allocator import fsdp_after_wrap

    kw = kwargs(p)
    hw = build_hardware(kw["gpus"], 1, None, kw["gpu"], None, None, None)
    training = build_training(hw, seq_len=kw["seq_len"], micro_batch=kw["micro_batch"], global_batch=kw["global_batch"],
                              precision=kw["precision"], method=kw["method"], lora_rank=kw.get("lora_rank", 16),
                              lora_targets=kw.get("lora_targets", ("all-linear",)),
                              lora_dropout=kw.get("lora_dropout", 0.0), checkpointing=kw["checkpointing"],
                              attention=kw["attention"], loss=kw["loss"], loss_chunks=kw["loss_chunks"],
                              double_quant=kw["double_quant"], torch_version=kw["torch_version"],
                              transformers_version=kw["transformers_version"],
                              qlora_quantizer=kw.get("qlora_quantizer", "transformers"))
    strategy = build_strategy(hw, kw["strategy"], kw.get("offload_optimizer", "none"), kw.get("offload_param", "none"),
                              kw["bucket_sizes"])
    st = fsdp_after_wrap(resolve_model(model_arg(p)).architecture, training, strategy, hw, est.per_gpu.parameters)
    return None if st is None else st.peak_reserved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", action="store_true", help="one CSV line per point")
    args = ap.parse_args()
    points = yaml.safe_load(CORPUS.read_text())["points"]
    rows, errors, oom_ok, oom_all, skipped = [], [], 0, 0, []
    refs = []
    for p in points:
        reference = not p.get("expressible", True)
        if reference:
            skipped.append(p)
            if not p.get("reference"):
                continue
        m = p["measured"]
        try:
            est = estimate(**kwargs(p))
        except InputError as exc:
            rows.append((p, "error", str(exc), None))
            continue
        g = est.per_gpu
        if reference:
            if m["value"] != "OOM":
                measured = float(m["value"]) * UNIT[m["unit"]]
                estimated = {"allocated": g.allocated, "reserved": g.reserved, "nvidia-smi": g.total}[m["kind"]]
                refs.append((p, m["kind"], f"{measured / 2**30:8.2f} {estimated / 2**30:8.2f}",
                             100 * (estimated - measured) / measured))
            continue
        if m["value"] == "OOM":
            oom_all += 1
            ok = g.total > est.hardware.vram_bytes
            oom_ok += ok
            rows.append((p, "OOM", f"estimate {g.total / 2**30:.2f} GiB of {est.hardware.vram_bytes / 2**30:.2f}",
                         "pass" if ok else "FAIL"))
            continue
        measured = float(m["value"]) * UNIT[m["unit"]]
        if m["kind"] == AFTER_WRAP:
            estimated = after_wrap_reserved(p, est)
            if estimated is None:
                rows.append((p, "error", "the FSDP wrapping is not modelled for these settings", None))
                continue
        else:
            estimated = {"allocated": g.allocated, "reserved": g.reserved, "nvidia-smi": g.total}[m["kind"]]
        err = 100 * (estimated - measured) / measured
        errors.append(err)
        rows.append((p, "after-wrap" if m["kind"] == AFTER_WRAP else m["kind"],
                     f"{measured / 2**30:8.2f} {estimated / 2**30:8.2f}", err))
    print(f"{'point':<52}{'measured':<11}{'meas GiB':>9}{'est GiB':>9}{'error':>9}")
    for p, kind, text, err in rows:
        e = f"{err:+8.1f}%" if isinstance(err, float) else f"{err or '':>9}"
        print(f"{p['id'][:51]:<52}{kind:<11}{text:>18}{e}")
    n = len(errors)
    if n:
        inband = sum(BAND[0] <= e <= BAND[1] for e in errors)
        print(f"\n{n} comparable points ({len({r[0]['source'] for r in rows})} sources); in band "
              f"({BAND[0]:+.0f} ... +{BAND[1]:.0f} %): {inband}/{n}; median |error| "
              f"{statistics.median(abs(e) for e in errors):.1f} %; worst low {min(errors):+.1f} %; worst high "
              f"{max(errors):+.1f} %")
    print(f"OOM points: {oom_ok}/{oom_all} estimated over the card")
    if refs:
        print(f"\nnot expressible, estimated with the nearest settings for reference (not compared; why_not in the corpus):")
        for p, kind, text, err in refs:
            print(f"{p['id'][:51]:<52}{kind:<11}{text:>18}{err:+8.1f}%")
    print(f"not expressible: {len(skipped)} (" + "; ".join(sorted({s['why_not'][:60] for s in skipped})) + ")")
    print(f"sources: {len({p['source'] for p in points})} in the corpus, {len(points)} points")
    if args.csv:
        for p, kind, text, err in rows:
            print(",".join([p["id"], kind, text.replace(" ", "").replace(",", ";"), str(err)]))


if __name__ == "__main__":
    main()
