"""``dsadvise calibrate`` on the CPU (quick settings): real measurements, a profile that round-trips and that
changes the estimate."""

from __future__ import annotations

import json

import pytest
import yaml

from advisor.cli import main
from advisor.calibrate import calibrate, measure_matmul, write_profile
from advisor.errors import InputError
from advisor.profile import MachineProfile, load_profile


def test_matmul_is_measured_per_dtype_on_the_cpu():
    flops = measure_matmul("cpu", 128, 2)
    assert set(flops) >= {"fp32", "bf16"}
    assert all(v > 1e6 for v in flops.values())           # any CPU does a 128^3 matmul in well under 4 s


@pytest.mark.slow   # two gloo processes spawned for the collectives (~20 s on 2 cores)
def test_calibrate_writes_a_documented_profile_that_changes_the_estimate(tmp_path, capsys):
    out = tmp_path / "profile.yaml"
    assert main(["calibrate", "--quick", "--no-deepspeed-adam", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# dsadvise machine profile")
    data = yaml.safe_load(text)
    assert data["device_kind"] == "cpu" and data["collective_backend"] == "gloo"
    assert data["allreduce_bus_bytes_per_s"] > 0 and data["allgather_bus_bytes_per_s"] > 0
    assert data["host_to_device_bytes_per_s"] is None                   # no CUDA: not measured, said so
    assert data["cpu_adam_params_per_s"]["torch_fused"] > 0
    assert any("CPU" in n for n in data["notes"])
    prof = load_profile(out)
    assert prof.matmul_flops["fp32"] == data["matmul_flops"]["fp32"]
    capsys.readouterr()

    args = ["estimate", "--model", "gpt2", "--seq-len", "1024", "--gpus", "2", "--vram", "24", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)["step_time"]
    assert main(args + ["--profile", str(out)]) == 0
    profiled = json.loads(capsys.readouterr().out)["step_time"]
    assert profiled["seconds"] > 10 * plain["seconds"]          # this CPU is far slower than a GPU
    assert "profile of cpu" in profiled["rates"]
    assert any("measured rates" in a for a in profiled["assumptions"])
    assert not any("generic PCIe GPU" in a for a in profiled["assumptions"])

    # never overwritten without --force
    assert main(["calibrate", "--quick", "--no-collectives", "--no-deepspeed-adam", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_bad_profiles_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: x\n")
    for path in (bad, tmp_path / "missing.yaml"):
        for argv in (["estimate", "--model", "gpt2", "--seq-len", "512", "--vram", "24"],
                     ["recommend", "--model", "gpt2", "--seq-len", "512", "--vram", "24"], ["wizard"]):
            assert main(argv + ["--profile", str(path)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "--profile" in err, argv


def test_write_profile_refuses_to_overwrite(tmp_path):
    prof = MachineProfile(device="cpu", device_kind="cpu", devices=1, matmul_flops={"fp32": 1e9})
    path = write_profile(prof, tmp_path / "p.yaml")
    with pytest.raises(InputError):
        write_profile(prof, path)
    write_profile(prof, path, force=True)
    assert load_profile(path) == prof


def test_calibrate_without_collectives_is_quick_and_labelled():
    prof = calibrate(quick=True, collectives=False, deepspeed_adam=False)
    assert prof.device_kind == "cpu" and prof.allreduce_bus_bytes_per_s is None and prof.quick
