"""Stand-ins for screenshots, so that they show the TUI and do not change whenever the estimator or
``rules/*.yaml`` do (both have their own tests): a fixed recommender (the real Recommendation type) and an
estimate with the real API's shapes but simple fixed sizes."""

from __future__ import annotations

import advisor.api
from advisor.recommend.recommendation import Alternative, Recommendation, StepTimeInfo, TrainingChoice

GIB = 1024**3
REAL_ESTIMATE = advisor.api.estimate


def simple_estimate(*args, **kwargs):
    """The real estimate's model, hardware and strategy, with per-GPU sizes from a toy formula: 2 bytes per
    parameter each for weights and gradients, 12 for the optimizer, divided by the GPUs that shard them."""
    est = REAL_ESTIMATE(*args, **kwargs)
    n, world, st = est.model.parameters, est.hardware.world_size, est.strategy
    shard = {"zero1": (1, 1, world), "zero2": (1, world, world), "zero3": (world, world, world),
             "fsdp-full": (world, world, world), "fsdp-grad-op": (1, world, world)}.get(st.name, (1, 1, 1))
    sizes = {"parameters": 2 * n // shard[0], "gradients": 2 * n // shard[1], "optimizer_states": 12 * n // shard[2],
             "activations": st.micro_batch_size * st.seq_len * 2 * 1024 * 1024 // 4, "temporaries": n // 4,
             "buffers": GIB, "overhead": 2 * GIB}
    total = sum(sizes.values())
    vram = est.hardware.vram_bytes
    per_gpu = est.per_gpu.model_copy(update={**sizes, "total": total, "breakdown": dict(sizes)})
    return est.model_copy(update={"per_gpu": per_gpu, "fits": total <= vram, "headroom_bytes": vram - total})


def fixed_recommender(model, hw, template, **_):
    """zero2 + full checkpointing at micro-batch 2, with two alternatives and three rules that fired."""
    est = advisor.api.estimate(model, gpus=hw.gpus_per_node, nodes=hw.nodes, vram=hw.vram_bytes / GIB,
                   gpu=hw.gpu.name if hw.gpu else None, seq_len=template.seq_len, micro_batch=2,
                   precision="bf16" if hw.bf16_supported else "fp16", method="full",
                   strategy="zero2", checkpointing="full")
    st = est.strategy
    settings = {**st.model_dump(), "gradient_accumulation_steps": 1, "world_size": hw.world_size,
                "global_batch_size": 2 * hw.world_size, "gpus_per_node": hw.gpus_per_node, "nodes": hw.nodes,
                "mixed_precision": st.precision.removeprefix("pure-"),
                "launcher": f"accelerate launch --num_processes {hw.world_size} train.py"}
    if not est.fits:
        return Recommendation(task="train", found=False, recommendation=None, estimate=None, step_time=None,
                              reasons=["even ZeRO-3 with CPU offload needs more than this GPU has"])
    alt = {**st.model_dump(), "name": "zero3", "zero_stage": 3}
    return Recommendation(
        task="train", found=True, recommendation=TrainingChoice(**settings), estimate=est,
        step_time=StepTimeInfo(seconds=2.5, compute_seconds=2.3, communication_seconds=0.2, offload_seconds=0.0,
                               tokens_per_second=6553.6, samples_per_second=3.2, compute_efficiency=0.5, mfu=0.41,
                               gpu_profile=hw.gpu.name if hw.gpu else "generic"),
        reasons=["zero2 (checkpointing full) is the fastest configuration that fits",
                 "precision bf16: the GPU has it", "micro-batch 2: the largest that fits"],
        advice=["set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"],
        alternatives=[
            Alternative(strategy=alt, fits=True, step_time_seconds=2.9, rejected_because="zero3 slower: 2.90 s"),
            Alternative(strategy={**st.model_dump(), "name": "ddp", "zero_stage": None, "backend": "ddp"}, fits=False,
                        step_time_seconds=None, rejected_because="ddp does not fit: needs 140 GiB per GPU"),
        ],
        rules_fired=[
            {"rule": "bf16-where-supported", "file": "rules/precision.yaml", "effect": "require",
             "outcome": "constrained"},
            {"rule": "zero0-is-ddp", "file": "rules/strategy.yaml", "effect": "penalise", "outcome": "applied",
             "candidate": "zero0"},
            {"rule": "tight-memory", "file": "rules/offload.yaml", "effect": "advise", "outcome": "advised",
             "candidate": "zero2 full bf16 ckpt=full mb=2"},
        ])
