"""benchmarks/gpu_calibrate.py on the CPU: the measuring part's loops run on a tiny model and say what they
cannot read without CUDA; the comparing part prints every case of a run with dsadvise's estimate."""

from __future__ import annotations

import json
import math

from benchmarks import gpu_calibrate as gc

TINY = json.dumps({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
                   "head_dim": 32, "vocab_size": 512})
SETTINGS = ["--cpu", "--layers", "1", "--seq-len", "16", "--batch", "1", "--steps", "2", "--config-overrides", TINY]


def test_the_measuring_loops_run_on_the_cpu_and_skip_the_cuda_readings(capsys):
    from accelerate.state import AcceleratorState

    try:
        for case in ("lora-ckpt-accelerate", "full-plain"):
            assert gc.main(["measure-one", "--case", case, *SETTINGS]) == 0
            row = json.loads(capsys.readouterr().out)
            assert row["case"] == case and row["steps"] == 2 and math.isfinite(row["loss"])   # the loop ran
            assert "allocated" not in row and "no CUDA device" in row["skipped"]
    finally:
        AcceleratorState._reset_state(True)


def test_measure_writes_the_run_as_json_and_skips_what_needs_cuda(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert gc.main(["measure", *SETTINGS, "--cases", "fsdp-wrap", "--out", str(out)]) == 0
    run = json.loads(out.read_text())
    assert run["settings"]["layers"] == 1 and run["versions"]["torch"]
    assert run["rows"] == [{"case": "fsdp-wrap", "skipped": "FSDP wrapping with device_id needs CUDA"}]
    capsys.readouterr()
    assert gc.main(["compare", str(out)]) == 0
    assert "not measured: FSDP wrapping with device_id needs CUDA" in capsys.readouterr().out


def test_compare_prints_every_case_of_the_committed_h200_run(capsys):
    assert gc.main(["compare"]) == 0
    text = capsys.readouterr().out
    run = json.loads((gc.RUNS / "h200-2026-11-30.json").read_text())
    for row in run["rows"]:
        line = next(ln for ln in text.splitlines() if ln.startswith(row["case"] + " "))
        assert f"{row['reserved'] / gc.GIB:.2f}" in line        # measured, then dsadvise's estimate and error
        assert line.count("%") == 0 and len(line.split()) >= 7
    assert "like-for-like readings: 8" in text


def test_a_recorded_gpu_history_becomes_the_simulators_events():
    # The CUDA allocator's history format (torch.cuda.memory._snapshot()["device_traces"]: alloc with the
    # requested size, free_requested then free_completed, segment_alloc per cudaMalloc), hand-written: two 3 MiB
    # tensors share one 20 MiB segment (kLargeBuffer), the first is freed and its address reused.
    from advisor.memory.allocator import simulate

    mib = 1 << 20
    trace = [["segment_alloc", 0, 20 * mib, 0], ["alloc", 0, 3 * mib, 0], ["alloc", 3 * mib, 3 * mib, 0],
             ["free_requested", 0, 3 * mib, 0], ["free_completed", 0, 3 * mib, 0], ["alloc", 0, 2 * mib, 0]]
    events, segments, seg_bytes = gc.trace_events(trace)
    assert events == [("a", (0, 0), 3 * mib), ("a", (3 * mib, 1), 3 * mib), ("f", (0, 0), 0), ("a", (0, 3), 2 * mib)]
    assert (segments, seg_bytes) == (1, 20 * mib)
    st = simulate(events)
    assert (st.peak_reserved, st.segments, st.peak_allocated) == (20 * mib, 1, 6 * mib)
