"""The step-time model's mechanisms (issue 13); its accuracy against published runs is benchmarks/throughput.py."""

from __future__ import annotations

import json

import pytest

from advisor.api import build_hardware, estimate
from advisor.catalog.gpus import list_gpus
from advisor.catalog.models import resolve_model
from advisor.param_count import count_parameters, lora_trainable_parameters
from advisor.profile import MachineProfile
from advisor.recommend.step_time import constants, rates_for, training_step_time
from advisor.specs import StrategySpec

ARCH = resolve_model("llama-2-7b").architecture
COUNTS = count_parameters(ARCH)


def step(gpu, strategy="zero3", *, gpus=8, nodes=1, method="full", micro=4, gas=1, ckpt="full", opt="none",
         param="none", arch=ARCH, counts=COUNTS, **kw):
    hw = build_hardware(gpus, nodes, None, gpu)
    trainable = counts.total if method == "full" else lora_trainable_parameters(arch, 64, ("all-linear",))
    return training_step_time(arch, counts, trainable, hw, hw.gpu, StrategySpec.from_name(strategy, opt, param),
                              precision="bf16", method=method, checkpointing=ckpt, micro_batch=micro,
                              seq_len=2048, gas=gas, **kw)


def test_every_catalog_gpu_has_a_calibrated_generation():
    fractions = constants()["achievable_fraction"]
    for gpu in list_gpus():
        assert gpu.generation in fractions and gpu.generation != "unknown", gpu.name


def test_gathers_hide_behind_compute_over_nvlink_and_stay_exposed_over_pcie():
    nv = step("a100-80g")
    assert nv.communication_seconds == 0.0          # 3 x 13.5 GB per micro-step at 231 GB/s < the compute
    pcie = step("rtx-4090", gpus=2, micro=1)
    q = 1 / 2                                        # (n-1)/n of 2 x 13.5 GB of weights + 13.5 GB of gradients
    wire = q * (2 * COUNTS.total * 2 + COUNTS.total * 2) / (20e9 * constants()["comm_efficiency"])
    assert pcie.communication_seconds == pytest.approx(wire, rel=1e-6)


def test_across_nodes_the_ring_runs_at_the_node_network_rate():
    arch = resolve_model("llama-2-13b").architecture
    counts = count_parameters(arch)
    one = step("h100-sxm", "fsdp-full", micro=2, ckpt="none", arch=arch, counts=counts)
    eight = step("h100-sxm", "fsdp-full", nodes=8, micro=2, ckpt="none", arch=arch, counts=counts)
    # llm-foundry 13B: 4,792 tokens/s per GPU on 8 H100, 4,800 on 64: flat
    assert eight.tokens_per_second_per_gpu == pytest.approx(one.tokens_per_second_per_gpu, rel=0.02)


def test_qlora_moves_fewer_bytes_but_dequantizes():
    lora = step("rtx-4090", "fsdp-full", gpus=2, method="lora", micro=4)
    qlora = step("rtx-4090", "fsdp-full", gpus=2, method="qlora", micro=4)
    assert qlora.communication_seconds < lora.communication_seconds / 3      # NF4: 0.55 B/param vs 2
    cost = constants()["qlora_dequant_cost"]
    # + the same (tiny) optimizer step
    assert qlora.compute_seconds == pytest.approx(lora.compute_seconds * (1 + cost), rel=1e-3)


def test_causal_kernels_and_eager_attention():
    sdpa = step("a100-80g", ckpt="none", attention="sdpa")
    eager = step("a100-80g", ckpt="none", attention="eager")
    assert eager.compute_seconds > 1.1 * sdpa.compute_seconds


def test_cpu_adam_and_parameter_offload_rates_per_node():
    base = step("a100-40g", "zero2", micro=1, gas=1)
    off = step("a100-40g", "zero2", micro=1, gas=1, opt="cpu")
    # DeepSpeedCPUAdam at 1e9 parameters/s per node: 6.74 s for Llama-2-7B on one node, plus the copies
    assert off.offload_seconds == pytest.approx(COUNTS.total / 1e9, rel=0.1)
    assert off.seconds > base.seconds + COUNTS.total / 1e9 * 0.9
    p3 = step("a100-40g", "zero3", micro=1, param="cpu")
    # ZeRO-3 parameter offload: the 16-bit weights twice per micro-step at 10 GB/s per node
    assert p3.offload_seconds == pytest.approx(2 * COUNTS.total * 2 / 1e10, rel=1e-6)


def test_accumulation_amortizes_the_optimizer_and_the_offload():
    one = step("a100-80g", "zero2", micro=2, gas=1, opt="cpu")
    eight = step("a100-80g", "zero2", micro=2, gas=8, opt="cpu")
    assert eight.tokens_per_second > 2 * one.tokens_per_second


def test_a_profile_replaces_the_catalog_rates():
    gpu = build_hardware(2, 1, None, "a100-80g").gpu
    prof = MachineProfile(device="NVIDIA A100-SXM4-80GB", device_kind="cuda", devices=2,
                          matmul_flops={"bf16": 156e12, "fp16": 156e12, "fp32": 19e12},
                          allreduce_bus_bytes_per_s=50e9, allgather_bus_bytes_per_s=40e9,
                          host_to_device_bytes_per_s=12e9, cpu_adam_params_per_s={"torch_fused": 0.5e9})
    r = rates_for(gpu, prof)
    assert r.achievable["bf16"] == pytest.approx(156e12 * constants()["profile_step_per_matmul"] / 312e12)
    assert r.intra_bytes_per_s == 40e9 and r.host_bytes_per_s == 12e9 and r.cpu_adam_params_per_s == 0.5e9
    catalog = rates_for(gpu)
    assert catalog.achievable["bf16"] == constants()["achievable_fraction"]["ampere"]


def test_estimate_json_carries_the_step_time_of_the_whole_job(capsys):
    from advisor.cli import main

    assert main(["estimate", "--model", "llama-2-7b", "--gpus", "8", "--gpu", "a100-80g", "--strategy", "zero3",
                 "--checkpointing", "full", "--micro-batch", "2", "--global-batch", "64", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    st = js["step_time"]
    assert {"seconds", "compute_seconds", "communication_seconds", "offload_seconds", "tokens_per_second",
            "tokens_per_second_per_gpu", "compute_efficiency", "mfu"} <= set(st)
    assert st["tokens_per_step"] == 64 * 2048                       # --global-batch sets the accumulation (4)
    assert st["tokens_per_second"] == pytest.approx(64 * 2048 / st["seconds"])
    assert st["tokens_per_second_per_gpu"] == pytest.approx(st["tokens_per_second"] / 8)
    n = js["model"]["parameters"]
    assert st["mfu"] == pytest.approx(6 * n * st["tokens_per_second"] / (8 * 312e12), rel=1e-9)
    assert st["mfu"] < st["compute_efficiency"]      # recomputation and attention are not model FLOPs
    assert any("4 micro-step" in a for a in st["assumptions"])


def test_inference_speed_split_is_no_faster_than_one_gpu():
    est = estimate("llama-2-13b", task="infer", gpus=2, gpu="a100-80g", seq_len=2048, micro_batch=4)
    speed = {s.layout: s for s in est.inference_speed}
    rep, split = speed["replica-per-gpu"], speed["device-map-auto"]
    assert rep.copies == 2 and split.copies == 1
    assert rep.prefill_tokens_per_second == pytest.approx(2 * split.prefill_tokens_per_second)
    assert rep.decode_tokens_per_second == pytest.approx(2 * split.decode_tokens_per_second)
    # decode is memory-bound: the 16-bit weights + the KV cache of 4 x 2048 tokens, once per generated token
    kv = 4 * 2048 * 2 * 40 * 5120 * 2        # batch x context x (K, V) x 40 layers x 5120 wide x 2 bytes
    weights = count_parameters(resolve_model("llama-2-13b").architecture).total * 2
    assert split.bytes_per_decode_step == weights + kv
    assert split.decode_seconds_per_token == pytest.approx((weights + kv) / (2039e9 * constants()["hbm_efficiency"]))


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "freeze"])
def test_every_catalog_model_gets_a_sane_step_time(method):
    import math

    from advisor.catalog.models import list_models

    for m in list_models():
        for strategy, gpus in (("single", 1), ("ddp", 4), ("zero3", 4), ("fsdp-full", 4)):
            st = estimate(m.name, gpus=gpus, gpu="a100-80g", strategy=strategy, method=method,
                          checkpointing="full", seq_len=1024).step_time
            assert st is not None and math.isfinite(st.seconds) and st.seconds > 0, (m.name, strategy)
            assert 0 < st.compute_efficiency < 1 and 0 < st.mfu < 1, (m.name, strategy, st.mfu)


@pytest.mark.parametrize("model,hw", [("7B", dict(gpus=4, vram=24)), ("llama-2-7b", dict(gpus=8, gpu="a100-80g")),
                                      ("13B", dict(gpus=8, nodes=2, gpu="a100-40g"))])
def test_runners_up_are_compared_by_tokens_per_second(model, hw):
    from advisor.api import build_training
    from advisor.recommend import recommend

    h = build_hardware(hw.get("gpus", 1), hw.get("nodes", 1), hw.get("vram"), hw.get("gpu"))
    rec = recommend(model, h, build_training(h), method="full", precision="auto", checkpointing="auto",
                    suggest=False)
    best = rec.step_time.tokens_per_second
    for alt in rec.alternatives:
        if alt.fits:
            assert alt.tokens_per_second is not None
            if alt.rejected_because.startswith("slower"):
                assert alt.tokens_per_second <= best
            elif "more tokens/s" in alt.rejected_because:
                assert "within the model's" in alt.rejected_because


def test_the_wizard_backend_passes_the_profile_to_estimate_and_recommend():
    from advisor.tui import backend
    from advisor.tui.form import WizardInputs, vram_text

    prof = MachineProfile(device="NVIDIA A100-SXM4-80GB", device_kind="cuda", devices=4,
                          matmul_flops={"bf16": 150e12, "fp16": 150e12, "fp32": 19e12},
                          allreduce_bus_bytes_per_s=100e9, allgather_bus_bytes_per_s=90e9)
    inputs = WizardInputs(model="llama-3.1-8b", gpu="a100-80g", vram=vram_text("a100-80g"), gpus="4")
    plain = backend.evaluate(inputs)
    profiled = backend.evaluate(inputs, profile=prof)
    assert profiled.recommendation.found
    assert "profile of NVIDIA A100" in profiled.recommendation.step_time.rates
    assert any("measured rates" in a for a in profiled.recommendation.assumptions)
    assert profiled.recommendation.step_time.compute_efficiency < plain.recommendation.step_time.compute_efficiency
    chosen = backend.evaluate(inputs.with_(strategy="zero3"), profile=prof)
    assert "profile of NVIDIA A100" in chosen.estimate.step_time.rates


def test_fsdp_gathers_and_reductions_per_step_are_the_real_engines():
    """FSDP1/FSDP2 in 2 gloo processes, one step of 3 micro-batches with accelerate's no_sync (and with
    sync_each_batch): the collectives each unit calls are what the step-time model charges."""
    from benchmarks.fsdp_passes import modelled, record

    rows = record(port=29673)
    assert len(rows) == 8
    for row in rows:
        assert (row["gathers"], row["reductions"]) == modelled(row["version"], row["sharding"],
                                                               row["sync_each_batch"]), row


def test_fsdp_accumulation_reduces_once_per_step_unless_each_batch_syncs():
    """Under no_sync the reduce-scatter runs once per optimizer step: more micro-batches cost gathers, not
    reductions; sync_each_batch pays one reduction per micro-batch."""
    bw = 20e9 * constants()["comm_efficiency"]      # PCIe, nothing hidden (as the test above)
    q = 1 / 2
    quiet = step("rtx-4090", "fsdp-full", gpus=2, micro=1, gas=4)
    each = step("rtx-4090", "fsdp-full", gpus=2, micro=1, gas=4, sync_each_batch=True)
    # 4 x (forward + backward gathers of 13.5 GB) + one reduce-scatter of 13.5 GB, or one per micro-batch
    assert quiet.communication_seconds == pytest.approx(q * (4 * 2 * COUNTS.total * 2 + COUNTS.total * 2) / bw,
                                                        rel=1e-6)
    assert each.communication_seconds == pytest.approx(q * (4 * 2 * COUNTS.total * 2 + 4 * COUNTS.total * 2) / bw,
                                                       rel=1e-6)
    # FSDP1 SHARD_GRAD_OP keeps its weights gathered through the no_sync micro-batches: one gather a step
    grad_op = step("rtx-4090", "fsdp-grad-op", gpus=2, micro=1, gas=4)
    assert grad_op.communication_seconds == pytest.approx(q * (COUNTS.total * 2 + COUNTS.total * 2) / bw, rel=1e-6)
