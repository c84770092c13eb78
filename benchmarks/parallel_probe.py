"""Run under torchrun (gloo, CPU): one rank of a tensor- or sequence-parallel layout in the real engine, and what
it holds: parameter elements after sharding and the bytes autograd saves for backward in one training forward.

* ``tp``: DeepSpeed AutoTP training (``deepspeed.initialize`` with ``"tensor_parallel": {"autotp_size": N}``,
  ZeRO stage 0, bf16: the engine casts the module to bf16 and shards it with the model's HF ``tp_plan``).
* ``sp``: DeepSpeed Ulysses / ALST (``UlyssesSPAttentionHF.register_with_transformers``, attention ``sdpa``):
  each rank runs the forward on its ``S/N`` tokens with the global position ids, as
  ``UlyssesSPDataLoaderAdapter`` feeds it.

Saved bytes are recorded with the harness's recorder (``benchmarks/harness/kinds/saved.py``: storages
deduplicated, parameters and weight copies excluded) under ``cuda_semantics`` (CUDA's dropout and autocast
semantics on CPU; the models have no dropout).

Usage: torchrun --nproc_per_node N benchmarks/parallel_probe.py CASE_JSON OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def saved_forward(model, mode: str, **inputs) -> tuple[int, int]:
    """(saved bytes, bytes of the logits the caller holds) of one training forward with labels."""
    from benchmarks.harness.kinds.saved import _module_tracking, _Recorder
    from benchmarks.harness.semantics import autocast, cuda_semantics

    with cuda_semantics(mode, fast_matmul=True):
        rec = _Recorder(model)
        with _module_tracking(rec), torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), \
                autocast(mode):
            out = model(**inputs)
        snap = rec.snapshot()
        out.loss.backward()          # the engine's backward must run (the TP all-reduces) for a fair forward
    return snap.activations, out.logits.untyped_storage().nbytes()


def build(cfg: dict, attn: str):
    from benchmarks.harness.models import instantiate, make_config

    config = make_config(cfg, attn, cfg["num_hidden_layers"])
    return instantiate(config, attn, torch.float32, seed=0)


def zero_partition(engine, zopt) -> int:
    """Bytes of the fp32 master partition plus the Adam moments this rank holds after one step (ZeRO-1/2)."""
    masters = list(zopt.single_partition_of_fp32_groups)
    moments = sum(v.numel() * v.element_size() for p in masters for v in zopt.optimizer.state.get(p, {}).values()
                  if torch.is_tensor(v) and v.numel() > 1)
    return sum(m.numel() * m.element_size() for m in masters) + moments


def run_tp(case: dict) -> dict:
    import deepspeed

    model = build(case["config"], "sdpa")
    stage = case.get("zero_stage", 0)
    ds = {"train_micro_batch_size_per_gpu": case["batch"], "gradient_accumulation_steps": 1,
          "bf16": {"enabled": True}, "zero_optimization": {"stage": stage},
          "tensor_parallel": {"autotp_size": case["tp"]}, "zero_allow_untested_optimizer": True}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if stage else torch.optim.SGD(model.parameters(), lr=0.0)
    engine, zopt, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, case["config"]["vocab_size"], (case["batch"], case["seq_len"]), generator=g)
    params = sum(p.numel() for p in engine.module.parameters())
    if stage:      # the optimizer partition after one real engine step (ZeRO shards over world / tp)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        return {"parameters": params, "optimizer_partition": zero_partition(engine, zopt),
                "dp_world": engine.dp_world_size}
    saved, logits = saved_forward(engine.module, "half-bf16", input_ids=ids, labels=ids)
    return {"parameters": params, "saved": saved, "logits_held": logits}


def run_sp(case: dict) -> dict:
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    sp = case["sp"]
    stage = case.get("zero_stage", 0)
    model = build(case["config"], "sdpa")
    if not stage:
        model = model.to(torch.bfloat16)
    mpu = UlyssesSPAttentionHF.register_with_transformers(model_name_or_path=model, core_attn_implementation="sdpa",
                                                          sequence_parallel_size=sp, micro_batch_size=case["batch"],
                                                          seq_length=case["seq_len"], seq_length_is_variable=False)
    if stage:      # ZeRO over the sequence-data-parallel group (ALST: deepspeed.initialize(..., mpu=mpu))
        import deepspeed

        ds = {"train_micro_batch_size_per_gpu": case["batch"], "gradient_accumulation_steps": 1,
              "bf16": {"enabled": True}, "zero_optimization": {"stage": stage},
              "sequence_parallel_size": sp, "zero_allow_untested_optimizer": True}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        engine, zopt, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds, mpu=mpu)
        rank = dist.get_rank() % sp
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, case["config"]["vocab_size"], (case["batch"], case["seq_len"]), generator=g)
        chunk = case["seq_len"] // sp
        local = ids[:, rank * chunk:(rank + 1) * chunk]
        pos = torch.arange(rank * chunk, (rank + 1) * chunk).unsqueeze(0).expand(case["batch"], -1)
        loss = engine(input_ids=local, labels=local, position_ids=pos).loss
        engine.backward(loss)
        engine.step()
        return {"parameters": sum(p.numel() for p in engine.module.parameters()),
                "optimizer_partition": zero_partition(engine, zopt), "dp_world": engine.seq_dp_world_size}
    rank = dist.get_rank() % sp
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, case["config"]["vocab_size"], (case["batch"], case["seq_len"]), generator=g)
    chunk = case["seq_len"] // sp
    local = ids[:, rank * chunk:(rank + 1) * chunk]
    pos = torch.arange(rank * chunk, (rank + 1) * chunk).unsqueeze(0).expand(case["batch"], -1)
    params = sum(p.numel() for p in model.parameters())
    saved, logits = saved_forward(model, "half-bf16", input_ids=local, labels=local, position_ids=pos)
    return {"parameters": params, "saved": saved, "logits_held": logits}


def main() -> None:
    case = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[2])
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")     # deepspeed.comm over the gloo group (CPU)
    try:
        result = {"tp": run_tp, "sp": run_sp}[case["kind"]](case)
        result["rank"] = dist.get_rank()
        (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
