"""NCCL's NVLink-SHARP buffers: per communicator on NVSwitch H100/H200 nodes only (advisor/memory/overhead.py)."""

from advisor.api import build_hardware, build_strategy, estimate
from advisor.memory.overhead import nccl_communicators, nccl_nvls_bytes_per_communicator

MiB = 2**20


def _nvls(**kw) -> int:
    r = estimate("llama-2-7b", method="lora", seq_len=512, **kw)
    return sum(v for k, v in r.per_gpu.breakdown.items() if k.startswith("NCCL NVLS buffers"))


def test_per_communicator_floor_on_an_nvswitch_node():
    # NCCL >= 2.22: 16 channels (sm90) x 2 x 1 MiB x 8 local ranks per communicator; ZeRO-3 talks over two
    assert nccl_nvls_bytes_per_communicator(build_hardware(gpus=8, gpu="h100-sxm")) == 256 * MiB
    assert _nvls(gpus=8, gpu="h100-sxm", strategy="zero3") == 512 * MiB
    assert _nvls(gpus=8, gpu="h200", strategy="ddp") == 256 * MiB
    assert _nvls(gpus=8, gpu="h100-sxm", strategy="fsdp-full") == 256 * MiB


def test_none_where_nccl_does_not_set_nvls_up():
    assert _nvls(gpus=8, gpu="a100-80g", strategy="zero3") == 0     # no NVLink SHARP before Hopper
    assert _nvls(gpus=8, gpu="h100-pcie", strategy="zero3") == 0    # no NVSwitch
    assert _nvls(gpus=4, gpu="h100-sxm", strategy="zero3") == 0     # a 4-GPU HGX board: direct NVLink
    assert _nvls(gpus=8, nodes=2, gpu="h100-sxm", strategy="zero3") == 0   # NCCL 2.20 turns it off across nodes
    assert _nvls(gpus=1, gpu="h100-sxm") == 0


def test_communicators_per_strategy():
    hw = build_hardware(gpus=8, gpu="h100-sxm")
    # DeepSpeed: torch's world group (barriers, zero.Init's gathers) and DeepSpeed's clone of it, on which ZeRO-1/2
    # run their collectives (benchmarks/nccl_communicators.py, benchmarks/zero3_process_groups.py)
    for name in ("zero2", "zero3"):
        assert nccl_communicators(build_strategy(hw, name)) == 2
    for name in ("ddp", "fsdp-full"):
        assert nccl_communicators(build_strategy(hw, name)) == 1


def test_noted_and_counted_in_the_total():
    with_nvls = estimate("llama-2-7b", method="lora", seq_len=512, gpus=8, gpu="h100-sxm", strategy="zero3")
    assert any("NVLink-SHARP" in n for n in with_nvls.notes)
    assert with_nvls.per_gpu.total == sum(with_nvls.per_gpu.breakdown.values())
