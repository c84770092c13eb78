"""How many process groups each data-parallel engine runs collectives on (real engines, CPU, gloo, 2 processes).

Run: python benchmarks/nccl_communicators.py            (launches one torchrun of 2 processes per engine, prints a table)
     torchrun --nproc_per_node 2 benchmarks/nccl_communicators.py ENGINE   (one engine)

PyTorch's ProcessGroupNCCL opens one NCCL communicator per process group and device, lazily, at the group's first
collective (torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp ``getNCCLComm``; eager only with ``device_id``), and
one more per pair of ranks for point-to-point send/recv. So on GPUs a rank holds one communicator per group a
collective actually runs on. Here every group creation (``new_group``) and every Python collective of
torch.distributed (and distributed_c10d) is wrapped to record the group it runs on (None = the world group), a
tiny llama runs ``deepspeed.initialize`` + one step (ZeRO-1/2/3; ZeRO-3 built under ``zero.Init`` as
transformers does with a live ZeRO-3 config, and without it: zero3-no-init) or one DDP / FSDP1 / FSDP2 step, and the distinct
groups that ran a collective are printed with the calls on each. DDP's reducer calls its process group from C++,
past these wrappers: its group is read from ``DistributedDataParallel.process_group`` instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
from collections import defaultdict

os.environ.setdefault("DS_ACCELERATOR", "cpu")

ENGINES = ("zero1", "zero2", "zero3", "zero3-no-init", "ddp", "fsdp1", "fsdp2")
_PG_METHODS = ("allreduce", "allreduce_coalesced", "allgather", "_allgather_base", "all_gather_single",
               "all_gather_single_coalesced", "allgather_coalesced", "allgather_into_tensor_coalesced",
               "reduce_scatter", "_reduce_scatter_base", "reduce_scatter_single", "reduce_scatter_single_coalesced",
               "reduce_scatter_tensor_coalesced", "alltoall", "alltoall_base", "all_to_all_single", "barrier",
               "monitored_barrier", "broadcast", "gather", "scatter", "reduce", "send", "recv", "recv_anysource")
_P2P = {"send", "recv", "recv_anysource"}
CALLS: dict[str, set[str]] = defaultdict(set)    # process group name -> collectives run on it
RANKS: dict[str, list[int]] = {}
P2P_PEERS: set[int] = set()
CREATED: list[tuple[int, ...] | None] = []


def _instrument() -> None:
    """Wrap every collective method of torch's ProcessGroup (all Python collectives of torch.distributed end in
    one of them) to record the group it runs on, and ``new_group`` to count the groups made."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    pg_cls = dist.ProcessGroup

    def wrap(name, fn):
        @functools.wraps(fn)
        def inner(self, *a, **k):
            CALLS[self.group_name].add(name)
            if self.group_name not in RANKS:
                try:
                    RANKS[self.group_name] = dist.get_process_group_ranks(self)
                except Exception:   # noqa: BLE001  (a group c10d does not track: its size says enough)
                    RANKS[self.group_name] = list(range(self.size()))
            if name in _P2P and len(a) > 1 and isinstance(a[1], int):
                P2P_PEERS.add(a[1])
            return fn(self, *a, **k)
        return inner

    for name in _PG_METHODS:
        fn = getattr(pg_cls, name, None)
        if fn is not None:
            setattr(pg_cls, name, wrap(name, fn))
    new_group = c10d.new_group

    @functools.wraps(new_group)
    def counted_new_group(*a, **k):
        ranks = k.get("ranks", a[0] if a else None)
        CREATED.append(tuple(ranks) if ranks is not None else None)
        return new_group(*a, **k)
    c10d.new_group = dist.new_group = counted_new_group


_instrument()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

CFG = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=128)


def _model():
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**CFG))


def _step(model, opt, ids) -> None:
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


def run(engine: str) -> str:
    """One step of ``engine``; returns the line describing the groups its collectives ran on."""
    ids = torch.randint(0, CFG["vocab_size"], (1, 16))
    extra = ""
    if engine.startswith("zero"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        stage = int(engine[4])
        ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
        keep = None
        if stage == 3 and engine != "zero3-no-init":   # as transformers/accelerate build it under a ZeRO-3 config (zero3_init_flag)
            from transformers.integrations import HfDeepSpeedConfig
            keep = HfDeepSpeedConfig(ds)  # noqa: F841
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        eng, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
        eng.backward(eng(input_ids=ids, labels=ids).loss)
        eng.step()
        dp = getattr(eng.optimizer, "dp_process_group", None)
        extra = (f"; the optimizer's data-parallel group: "
                 f"{'WORLD' if dp is None or dp is dist.group.WORLD else 'group ' + dp.group_name}")
    else:
        dist.init_process_group("gloo")
        model = _model()
        if engine == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model)
            extra = f"; DDP reducer's group is WORLD: {model.process_group is dist.group.WORLD}"
        elif engine == "fsdp1":
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            model = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"))   # FSDP1 on CPU needs it
        else:
            from torch.distributed.fsdp import fully_shard
            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        _step(model, opt, ids)
    dist.barrier()   # accelerate's wait_for_everyone / the HF Trainer's barriers: the default group
    world = dist.group.WORLD.group_name
    names = [f"{'WORLD' if g == world else 'group ' + g}{RANKS[g]}: {','.join(sorted(c))}" for g, c in CALLS.items()]
    return (f"{engine}: {len(CALLS)} groups ran collectives, {len(P2P_PEERS)} p2p peers, {len(CREATED)} new_group "
            f"calls | " + " | ".join(sorted(names)) + extra)


def main() -> None:
    if len(sys.argv) > 1:
        line = run(sys.argv[1])
        if dist.get_rank() == 0:
            print("RESULT " + line, flush=True)
        dist.destroy_process_group()
        return
    for engine in ENGINES:
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", "29561", __file__, engine], capture_output=True, text=True)
        lines = [ln[7:] for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        print(lines[0] if lines else f"{engine}: failed (rc {out.returncode}): {out.stderr.strip()[-400:]}")


if __name__ == "__main__":
    main()
