"""CUDA context, cuBLAS workspace and NCCL communicator bytes on a real GPU, read the way a user sees them
(nvidia-smi's memory.used for this GPU), which ``torch.cuda.mem_get_info`` cannot give: it creates the
context before its first reading (docs/calibration.md). Prints one JSON object; run on a machine with CUDA:

    python benchmarks/gpu_context.py

Steps: nothing (driver baseline) -> ``torch.cuda.init()`` + a 1-element tensor (the context) -> one bf16
matmul (cuBLAS handle and workspace) -> a world-1 NCCL process group and one all_reduce (the communicator).
"""

from __future__ import annotations

import json
import os
import subprocess


def used_mib(index: int = 0) -> int:
    """nvidia-smi's memory.used of GPU ``index`` in MiB (the whole device, every process)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i",
                          str(index)], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[0])


def main() -> None:
    rows = {"baseline": used_mib()}
    import torch

    torch.cuda.init()
    x = torch.ones(1, device="cuda")
    torch.cuda.synchronize()
    rows["context"] = used_mib()
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()
    torch.cuda.synchronize()
    rows["after_matmul"] = used_mib()
    rows["matmul_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29871")
    import torch.distributed as dist

    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    t = torch.ones(1 << 20, device="cuda")
    dist.all_reduce(t)
    torch.cuda.synchronize()
    rows["after_nccl"] = used_mib()
    rows["nccl_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
    dist.destroy_process_group()
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "nccl": ".".join(map(str, torch.cuda.nccl.version())), "used_mib": rows,
           "context_mib": rows["context"] - rows["baseline"],
           "cublas_workspace_mib": rows["after_matmul"] - rows["context"] - rows["matmul_reserved_mib"],
           "nccl_mib": rows["after_nccl"] - rows["after_matmul"]
           - (rows["nccl_reserved_mib"] - rows["matmul_reserved_mib"])}
    print(json.dumps(out, indent=1))
    del x


if __name__ == "__main__":
    main()
