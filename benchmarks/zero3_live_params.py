"""ZeRO-3's gathered 16-bit parameters over a LoRA step, in a real DeepSpeed engine (2 CPU processes, gloo).

Usage::

    python benchmarks/zero3_live_params.py                       # DeepSpeed 0.19.8 (installed); ~1 minute
    pip install --no-deps --target /work/site-Z deepspeed==0.13.3   # the release of the PEFT docs run's date
    python benchmarks/zero3_live_params.py --deepspeed-site /work/site-Z --reentrant [--verbose] [--events 1]

What a ZeRO-3 rank holds gathered at once is decided by ``PartitionedParameterCoordinator`` from element counts
only (``stage3_prefetch_bucket_size``, ``stage3_max_live_parameters``, ``stage3_max_reuse_distance``,
``stage3_param_persistence_threshold``), so a model whose every matrix is the 70B's scaled by one factor, run with
those knobs scaled alike, takes the same fetch / prefetch / release decisions as the 70B. The model here is
Llama-2-70B's shape (the PEFT docs' Llama-2-70B LoRA ZeRO-3 run, ``benchmarks/gpu_memory_corpus.yaml``
``peft-docs-llama-2-70b-lora-zero3-8xh100``) with every width divided by 16 (h 8192 -> 512, intermediate 28672 ->
1792, 64 -> 16 heads, 8 -> 2 KV heads, vocabulary 32000 -> 2000): every weight matrix has 1/256 of its elements,
so the element-count knobs are DeepSpeed's defaults / 256, and the persistence threshold, which sorts 1-D and
rank-8 tensors (norm weights, LoRA A/B), / 16. LoRA r=8 on every linear (module for module as
``peft.tuners.lora.Linear``), gradient checkpointing of every decoder layer.

Measured on rank 0 at every fetch, release and gather completion of the last of 4 steps: the bytes of every
non-persistent parameter's gathered storage plus the flat buffers of in-flight coalesced gathers
(``AllGatherCoalescedHandle.partitions``). Printed: the peak against dsadvise's replay of the coordinator
(``advisor/memory/zero3_gather.py``, the ``ZeRO-3 gathered parameters`` term) for the same model and knobs, and
both x256 (the 70B).

Results (2026-11-30, session 9): DeepSpeed 0.13.3, reentrant checkpointing: 13,910,016 B measured = the replay to
the byte (3.316 GiB at the 70B; 1.863 GiB = ``stage3_max_live_parameters`` was counted before); ``--full``:
12,189,696 B, the replay to the byte. The excess over
max_live: every step starts with the coordinator's available count below zero (reset after the backward, then
``step()``'s ``release_and_reset_all`` subtracts the embedding, whose post-backward hook never fires, and every
persistent parameter, re-gathered outside the count by ``_post_step``), so prefetch runs that far past the cap;
prefetch is triggered at every module's fetch, containers included; a LoRA B above the persistence threshold shares
a coalesced gather with the next base weight, whose flat buffer lives beside the copies ``wait`` makes until
both are consumed; lm_head is kept from its forward to its backward (reuse distance 0).
DeepSpeed 0.16 moved ``reset_step`` to the start of each forward (PR #6662): no carry-over. 0.19.8 ``--full``:
9,830,400 B, the replay without carry-over to the byte; with LoRA (non-reentrant) 11,235,328 B (2.68 GiB at the
70B) against 10,895,360 B replayed without carry-over (-3.0 %: its recompute attribution,
``update_recompute_parameters``, 2025, ties recomputed frozen weights to the checkpoint's backward module) and the
13,910,016 B counted (the larger version, +23.8 %).
DeepSpeed 0.13.3 under torch 2.13 cannot run the non-reentrant recompute (frozen weights recomputed as [0]:
``CheckpointError``, the ZeRO-3 frozen-parameter issue fixed by the recompute attribution); the reentrant
recompute fetches the same modules in the same order (the module trace, ``--events 3``, is the one
``module_trace`` builds). DeepSpeed's collectives run with CUDA's semantics
(``benchmarks.harness.kinds.zero.cuda_semantics_of_gloo_collectives``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

SCALE = 16                 # widths divided by this: matrices by SCALE**2
LAYERS = 4
SEQ = 64
STEPS = 4                  # steps run; the last is measured


def small_config() -> dict:
    """Llama-2-70B's shape with every width / SCALE."""
    return dict(model_type="llama", hidden_size=8192 // SCALE, intermediate_size=28672 // SCALE,
                num_hidden_layers=LAYERS, num_attention_heads=64 // SCALE * 4, num_key_value_heads=8 // 4,
                vocab_size=32000 // SCALE, tie_word_embeddings=False, max_position_embeddings=4096)


def ds_config() -> dict:
    """DeepSpeed's ZeRO-3 defaults (deepspeed/runtime/zero/config.py) scaled like the model's element counts."""
    m = SCALE * SCALE
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
            "zero_allow_untested_optimizer": True,
            "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                                  "reduce_bucket_size": 500_000_000 // m,
                                  "stage3_prefetch_bucket_size": 50_000_000 // m,
                                  "stage3_max_live_parameters": 1_000_000_000 // m,
                                  "stage3_max_reuse_distance": 1_000_000_000 // m,
                                  "stage3_param_persistence_threshold": 100_000 // SCALE}}


def lora_all_linear(model, rank: int) -> None:
    """LoRA on every linear of the decoder layers, module for module as ``peft.tuners.lora.Linear`` calls them
    (base_layer, then lora_A and lora_B; the dropout has no parameters); the base frozen. Adapters are built in
    bf16, the dtype DeepSpeed's bf16 engine of the run's date cast them to (the partitioned base's ``weight`` has
    shape [0] here, so the shapes come from ``in_features`` / ``out_features``)."""
    import torch
    from torch import nn

    class Lora(nn.Module):
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base_layer = base
            self.lora_A = nn.Linear(base.in_features, rank, bias=False, dtype=torch.bfloat16)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False, dtype=torch.bfloat16)

        def forward(self, x):
            return self.base_layer(x) + self.lora_B(self.lora_A(x)) * 2.0

    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        for mod in list(layer.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(mod, name, Lora(child))


def old_deepspeed(site: str) -> None:
    """Import DeepSpeed from ``site`` (e.g. ``pip install --no-deps --target /work/site-Z deepspeed==0.13.3``, the
    release of the run's date) under this torch 2.13: its CPU accelerator only checks that
    ``intel_extension_for_pytorch`` and ``oneccl_bindings_for_pytorch`` import (empty stand-ins: the runs use gloo,
    and no kernel of theirs is called), and two names it imports were removed since (``numpy.BUFSIZE``, torch
    elastic's ``log`` / ``_get_socket_with_port``, used only by its launcher and autotuner); its CPU accelerator's
    communication backend is set to gloo (it names oneCCL, whose op it would compile) and its device count to the
    local world size (it would run numactl)."""
    import logging
    import tempfile

    import numpy
    import torch.distributed.elastic.agent.server.api as elastic_api

    stubs = tempfile.mkdtemp(prefix="ds-stubs-")
    for name in ("intel_extension_for_pytorch", "oneccl_bindings_for_pytorch"):
        os.makedirs(os.path.join(stubs, name))
        Path(stubs, name, "__init__.py").write_text("")
    sys.path[:0] = [site, stubs]
    numpy.BUFSIZE = getattr(numpy, "BUFSIZE", 8192)
    for name, value in (("log", logging.getLogger(__name__)), ("_get_socket_with_port", lambda: None)):
        if not hasattr(elastic_api, name):
            setattr(elastic_api, name, value)


def worker(out: str) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if os.environ.get("ZERO3_LIVE_DEEPSPEED_SITE"):
        old_deepspeed(os.environ["ZERO3_LIVE_DEEPSPEED_SITE"])
    from collections import Counter

    import deepspeed
    import torch
    from deepspeed.runtime.zero import partition_parameters as pp
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator as PPC
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.harness.kinds.zero import chunked_adam, cuda_semantics_of_gloo_collectives

    cuda_semantics_of_gloo_collectives(Counter())
    if os.environ.get("ZERO3_LIVE_DEEPSPEED_SITE"):
        from deepspeed.accelerator import get_accelerator

        get_accelerator()._communication_backend_name = "gloo"   # 0.13's CPU accelerator would build oneCCL's op
        # and would count devices with numactl (not installed): one "device" per local rank
        get_accelerator().device_count = lambda: int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    cfg = AutoConfig.for_model(**small_config())
    cfg._attn_implementation = "sdpa"
    import torch._dynamo  # noqa: F401  (before zero.Init: see benchmarks/engine_steps.py)
    with deepspeed.zero.Init(config_dict_or_path=ds_config()):
        model = AutoModelForCausalLM.from_config(cfg)
    reentrant = bool(os.environ.get("ZERO3_LIVE_REENTRANT"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.config.use_cache = False
    if not os.environ.get("ZERO3_LIVE_FULL"):
        lora_all_linear(model, 8)
    model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=chunked_adam()(trainable, lr=1e-5),
                                           config=ds_config())
    params = list(engine.module.parameters())
    import weakref

    handles = weakref.WeakSet()      # the flat buffers of handles DeepSpeed still references
    state = {"on": False, "peak": 0, "where": "", "trace": []}

    names = {id(p): n for n, p in engine.module.named_parameters()}

    def gathered() -> dict:
        """storage -> (bytes, what) of every gathered non-persistent parameter and in-flight flat buffer"""
        seen = {}
        for p in params:
            if not getattr(p, "ds_persist", False) and p.data.numel() > 0:
                st = p.data.untyped_storage()
                seen[st.data_ptr()] = (st.nbytes(), names.get(id(p), "?"))
        for h in list(handles):
            for part in getattr(h, "partitions", None) or []:
                st = part.untyped_storage()
                seen[st.data_ptr()] = (st.nbytes(), "flat buffer of a coalesced gather")
        return seen

    def gathered_bytes() -> int:
        return sum(b for b, _ in gathered().values())

    def record(where: str) -> None:
        if state["on"]:
            b = gathered_bytes()
            state["trace"].append(b)
            if b > state["peak"]:
                state["peak"], state["where"] = b, where
                state["at_peak"] = sorted(gathered().values(), reverse=True)

    orig_init, orig_wait = pp.AllGatherCoalescedHandle.__init__, pp.AllGatherCoalescedHandle.wait

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        handles.add(self)

    def wait(self, *a, **k):
        r = orig_wait(self, *a, **k)
        record("coalesced gather done")
        return r

    pp.AllGatherCoalescedHandle.__init__, pp.AllGatherCoalescedHandle.wait = init, wait
    fetch, release = PPC.fetch_sub_module, PPC.release_sub_module

    def fetch_hook(self, module, forward):
        if state["on"] and os.environ.get("ZERO3_LIVE_EVENTS") == "2":
            log.append(("fetch", modnames.get(id(module), "?").replace("model.layers.", "L"),
                        self._PartitionedParameterCoordinator__n_available_params))
        r = fetch(self, module, forward)
        record(f"after fetch of {type(module).__name__} ({'forward' if forward else 'backward'})")
        return r

    modnames = {id(m): n for n, m in engine.module.named_modules()}

    def release_hook(self, module, *a, **k):
        if state["on"] and os.environ.get("ZERO3_LIVE_EVENTS") == "2":
            log.append(("release_sub_module", modnames.get(id(module), "?").replace("model.layers.", "L"),
                        [names.get(id(p), "?").replace("model.layers.", "L")
                         for p in module.parameters(recurse=False)]))
        record(f"before release of {type(module).__name__}")
        r = release(self, module, *a, **k)
        record(f"after release of {type(module).__name__}")
        return r

    log = []
    reset = PPC.reset_step

    def reset_hook(self):
        if state["on"]:
            left = [(names.get(id(p), "?"), p.ds_numel) for p in params
                    if not getattr(p, "ds_persist", False) and p.ds_status.name != "NOT_AVAILABLE"]
            state["left_at_reset"] = left + [("persistent", sum(p.ds_numel for p in params
                                                               if getattr(p, "ds_persist", False)))]
        return reset(self)

    PPC.reset_step = reset_hook
    PPC.fetch_sub_module, PPC.release_sub_module = fetch_hook, release_hook
    if os.environ.get("ZERO3_LIVE_EVENTS"):
        ag = PPC._PartitionedParameterCoordinator__all_gather_params
        rel = PPC._PartitionedParameterCoordinator__release_param

        def ag_hook(self, ps, forward):
            todo = [p for p in ps if p.ds_status.name == "NOT_AVAILABLE"]
            if state["on"] and todo:
                log.append(("gather", [names.get(id(p), "?").replace("model.layers.", "L").replace(".weight", "")
                                       for p in todo], sum(p.ds_numel for p in todo),
                            round(gathered_bytes() / 2**20, 2)))
            return ag(self, ps, forward)

        def rel_hook(self, p, *a):
            was = p.ds_status.name
            r = rel(self, p, *a)
            if state["on"] and was == "AVAILABLE" and p.ds_status.name == "NOT_AVAILABLE":
                log.append(("release", names.get(id(p), "?").replace("model.layers.", "L").replace(".weight", ""),
                            round(gathered_bytes() / 2**20, 2)))
            return r

        PPC._PartitionedParameterCoordinator__all_gather_params = ag_hook
        PPC._PartitionedParameterCoordinator__release_param = rel_hook
    ids = torch.randint(0, cfg.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(rank))
    for step in range(STEPS):
        state["on"] = step == STEPS - 1    # the trace is complete from the second step on; the third starts
        # from the available count the second one carried over (see advisor/memory/zero3_gather.py)
        handles.clear()
        res = engine(input_ids=ids, labels=ids)
        engine.backward(res.loss)
        engine.step()
    if rank == 0 and os.environ.get("ZERO3_LIVE_EVENTS") == "3":
        offload = engine.optimizer.parameter_offload
        coord = offload.get_param_coordinator(training=True) if "training" in \
            offload.get_param_coordinator.__code__.co_varnames else offload.get_param_coordinator()
        mods = {id(m): n for n, m in engine.module.named_modules()}
        order = coord._PartitionedParameterCoordinator__submodule_order
        print("ORDER", [mods.get(id(m), "?") for m in order], flush=True)
    if rank == 0:
        total = sum(p.ds_numel for p in params)
        Path(out).write_text(json.dumps({"peak_bytes": state["peak"], "where": state["where"],
                                         "events": len(state["trace"]), "total_elements": total,
                                         "at_peak": state["at_peak"], "log": log,
                                         "left_at_reset": state.get("left_at_reset"),
                                         "deepspeed": deepspeed.__version__}))
    engine.destroy()
    torch.distributed.barrier()


def replayed(world: int = 2, method: str = "lora") -> tuple[int, int]:
    """dsadvise's replay of the coordinator (advisor/memory/zero3_gather.py) for this run's model and knobs, bytes:
    (DeepSpeed < 0.16, DeepSpeed >= 0.16)."""
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.zero3_gather import gathered_peaks, module_trace
    from advisor.memory.zero_sizes import DeepSpeedSizes
    from advisor.specs import LoraSpec, TrainingSpec

    zo = ds_config()["zero_optimization"]
    ds = DeepSpeedSizes(zo["reduce_bucket_size"], 500_000_000, zo["stage3_prefetch_bucket_size"],
                        zo["stage3_max_live_parameters"], zo["stage3_param_persistence_threshold"], 1_000_000_000, True,
                        zo["stage3_max_reuse_distance"])
    training = TrainingSpec(seq_len=SEQ, micro_batch_size=1, method=method, lora=LoraSpec(rank=8),
                            activation_checkpointing="full")
    numel, trace = module_trace(architecture_from_hf_config(small_config()), training)
    return gathered_peaks(numel, trace, ds, world, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=1, metavar="OUT")
    ap.add_argument("--deepspeed-site", metavar="DIR", help="import DeepSpeed from DIR (an old release installed with "
                    "pip install --no-deps --target DIR), see old_deepspeed()")
    ap.add_argument("--reentrant", action="store_true", help="reentrant checkpointing (DeepSpeed 0.13.3 under torch "
                    "2.13 stops a non-reentrant recompute: frozen parameters recomputed as [0], see the module doc)")
    ap.add_argument("--events", type=int, default=0, help="1: print every gather and release; 2: and every fetch and "
                    "release call (with the coordinator's available count); 3: the module trace (fetch order)")
    ap.add_argument("--verbose", action="store_true", help="what is gathered at the peak")
    ap.add_argument("--full", action="store_true", help="full fine-tuning (no LoRA)")
    a = ap.parse_args()
    if a.deepspeed_site:
        os.environ["ZERO3_LIVE_DEEPSPEED_SITE"] = a.deepspeed_site
    if a.reentrant:
        os.environ["ZERO3_LIVE_REENTRANT"] = "1"
    if a.events:
        os.environ["ZERO3_LIVE_EVENTS"] = str(a.events)
    if a.full:
        os.environ["ZERO3_LIVE_FULL"] = "1"
    if a.worker:
        worker(a.worker[0])
        import torch

        torch.distributed.destroy_process_group()
        os._exit(0)
    from benchmarks.harness.launch import run_ranks

    r = run_ranks(__file__, [], port=29741, timeout=900, what="ZeRO-3 live-parameter run")
    for e in r.get("log", []):
        print("   ", *e)
    if a.verbose:
        for b, what in r["at_peak"]:
            print(f"    {b / 2**20:8.3f} MiB  {what}")
        print("    still gathered when the coordinator resets after the backward:", r.get("left_at_reset"))
    m = SCALE * SCALE
    measured = r["peak_bytes"]
    old, new = replayed(method="full" if a.full else "lora")
    replay = old if tuple(int(x) for x in r["deepspeed"].split(".")[:2]) < (0, 16) else new
    print(f"DeepSpeed {r['deepspeed']}, {'reentrant' if a.reentrant else 'non-reentrant'} checkpointing; rank 0's "
          f"gathered peak ({r['where']}):")
    print(f"  measured {measured:,} B = {measured / 2**20:.3f} MiB; dsadvise's replay of this DeepSpeed {replay:,} B "
          f"({(replay - measured) / measured * 100:+.2f} %); counted (the larger of < 0.16 and >= 0.16) {old:,} B")
    print(f"  x{m} (the 70B): measured {measured * m / 2**30:.3f} GiB, replayed {replay * m / 2**30:.3f} GiB; "
          f"stage3_max_live_parameters alone: {2e9 / 2**30:.3f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
