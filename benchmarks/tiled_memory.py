"""ALST's tiled MLP measured: bytes saved for backward of a real transformers model whose MLPs run inside
DeepSpeed 0.19.8's ``TiledMLP`` (``deepspeed/runtime/sequence_parallel/ulysses_sp.py``), against the estimate
(``advisor/memory/tiling.py``, ``--tiled-mlp``).

One process on CPU (TiledMLP is plain autograd: no process group). Each case builds a reduced-width model from
its config, in bf16 as DeepSpeed's engine casts it (``half-bf16``), patches its MLP class's forward the way
TiledMLP's docstring does (shards = ``ceil(seqlen / hidden_size)``; the all-reduce of the shard count is left out,
one process), and records the bytes saved in one training forward with labels with the harness's recorder
(``saved_tensors_hooks``, storages deduplicated, parameters excluded; ``benchmarks/parallel_probe.py``
``saved_forward``, under ``cuda_semantics``). The same model untiled is the control. Band: -3 % ... +10 %.

Usage: python benchmarks/tiled_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
         "intermediate_size": 688, "vocab_size": 1024, "num_hidden_layers": 2, "max_position_embeddings": 8192,
         "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
QWEN2 = {"model_type": "qwen2", "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2,
         "intermediate_size": 704, "vocab_size": 1536, "num_hidden_layers": 2, "max_position_embeddings": 8192,
         "tie_word_embeddings": False, "use_sliding_window": False}

# (label, config, seq_len, micro-batch)
CASES = [
    ("llama seq 1024", LLAMA, 1024, 1),
    ("llama seq 2048", LLAMA, 2048, 1),
    ("llama seq 1000 (uneven shards)", LLAMA, 1000, 1),
    ("llama seq 1024 batch 2", LLAMA, 1024, 2),
    ("qwen2 seq 2048", QWEN2, 2048, 1),
]
QUICK = CASES[:1]
LOW, HIGH = -0.03, 0.10


RECOMPUTED: list[int] = []      # bytes each shard's recompute saves inside TiledMLP's backward


def _recompute_saved(fn, x, params):
    """``fn(x)`` recording the bytes it saves for its own backward (storages deduplicated; the input's storage,
    which TiledMLP already saves, and the parameters' storages (the transposed weights mm saves) excluded)."""
    import torch

    seen: dict[int, int] = {}
    skip = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in params}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    RECOMPUTED.append(sum(seen.values()))
    return out


def tiled_mlp_forward(self, x):
    """DeepSpeed's TiledMLP docstring example (ulysses_sp.py), one process: no shard-count all-reduce."""
    import torch
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    num_shards = math.ceil(x.shape[-2] / x.shape[-1])
    compute_params = [self.down_proj.weight, self.gate_proj.weight, self.up_proj.weight]

    def mlp_forward(self, x):
        def run(x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return _recompute_saved(run, x, compute_params) if torch.is_grad_enabled() else run(x)

    return TiledMLP.apply(mlp_forward, self, x, num_shards, compute_params)


def measure(cfg: dict, seq: int, batch: int, tiled: bool) -> tuple[int, int]:
    """(bytes autograd saves in one training forward with labels (half-bf16), MLPs tiled or not; the most one
    shard's recompute saves inside TiledMLP's backward)."""
    import torch

    from benchmarks.harness.models import instantiate, make_config
    from benchmarks.parallel_probe import saved_forward

    config = make_config(cfg, "sdpa", cfg["num_hidden_layers"])
    model = instantiate(config, "sdpa", torch.bfloat16, seed=0)
    model.train()
    if tiled:
        mlp_cls = type(model.model.layers[0].mlp)
        for layer in model.model.layers:
            layer.mlp.forward = tiled_mlp_forward.__get__(layer.mlp, mlp_cls)
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
    RECOMPUTED.clear()
    saved, _ = saved_forward(model, "half-bf16", input_ids=ids, labels=ids)      # runs the backward too
    return saved, max(RECOMPUTED, default=0)


def estimated(cfg: dict, seq: int, batch: int, tiled: bool) -> tuple[int, int]:
    """(the estimate's saved bytes, its one-shard recompute transient) for the same micro-batch under DeepSpeed
    bf16. The estimate carries the transient inside its activations (at every backward moment): split here."""
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.activations import activation_memory
    from advisor.memory.tiling import SHARD, tiled_activations
    from advisor.specs import StrategySpec, TrainingSpec

    arch = architecture_from_hf_config(cfg)
    training = TrainingSpec(seq_len=seq, micro_batch_size=batch, precision="bf16", tiled_mlp=tiled)
    act = activation_memory(arch, training, "half-bf16")
    if tiled:
        act, _ = tiled_activations(arch, training, StrategySpec(backend="deepspeed", zero_stage=3), act, "half-bf16")
    shard = act.breakdown.get(SHARD, 0)
    return act.activations - shard, shard


def measure_tiled_loss(cfg: dict, seq: int, shards: int) -> tuple[int, int]:
    """(bytes saved for backward at the end of the forward with transformers' own loss, with DeepSpeed's
    ``TiledFusedLogitsLoss`` over ``shards`` tiles). TiledFusedLogitsLoss runs each tile's backward inside its
    forward, so tensors packed for a tile die with it: only those still alive when the forward ends count (weak
    references; storages deduplicated, parameters excluded)."""
    import weakref

    import torch
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledFusedLogitsLoss

    from benchmarks.harness.models import instantiate, make_config
    from benchmarks.harness.semantics import cuda_semantics

    config = make_config(cfg, "sdpa", cfg["num_hidden_layers"])
    model = instantiate(config, "sdpa", torch.bfloat16, seed=0)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, cfg["vocab_size"], (1, seq), generator=torch.Generator().manual_seed(0))

    def loss_fn(self, x, y):
        return self.loss_function(logits=self.lm_head(x), labels=None, shift_labels=y, vocab_size=cfg["vocab_size"])

    out = []
    for tiled in (False, True):
        packed = []

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                packed.append((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes(), weakref.ref(t)))
            return t

        with cuda_semantics("half-bf16", fast_matmul=True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if tiled:
                hidden = model.model(input_ids=ids).last_hidden_state
                shift = torch.nn.functional.pad(ids, (0, 1), value=-100)[:, 1:]
                loss = TiledFusedLogitsLoss.apply(loss_fn, model, hidden, shift, None, shards,
                                                  [model.lm_head.weight], "mean")
            else:
                loss = model(input_ids=ids, labels=ids).loss
        out.append(sum({ptr: n for ptr, n, ref in packed if ref() is not None}.values()))
        loss.backward()
        model.zero_grad(set_to_none=True)
    return out[0], out[1]


def loss_table() -> None:
    """TiledFusedLogitsLoss's saved set against the existing --loss models (not a --loss of its own yet)."""
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.activations import activation_memory
    from advisor.specs import TrainingSpec

    print("\n| case | tiles | plain saved measured (B) | --loss plain estimated | TiledFusedLogitsLoss saved measured (B) "
          "| --loss fused-linear estimated | err |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, cfg, seq, shards in (("llama seq 1024", LLAMA, 1024, 4), ("qwen2 seq 2048", QWEN2, 2048, 8)):
        plain, tiled = measure_tiled_loss(cfg, seq, shards)
        arch = architecture_from_hf_config(cfg)
        est = {loss: activation_memory(arch, TrainingSpec(seq_len=seq, precision="bf16", loss=loss), "half-bf16")
               .activations for loss in ("plain", "fused-linear")}
        print(f"| {label} | {shards} | {plain:,} | {est['plain']:,} | {tiled:,} | {est['fused-linear']:,} | "
              f"{(est['fused-linear'] - tiled) / tiled:+.2%} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one case")
    args = ap.parse_args()
    rows, bad = [], 0
    print("| case | shards | untiled saved measured (B) | estimated | err | tiled saved measured (B) | estimated | "
          "err | one shard's recompute measured (B) | estimated | err |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, cfg, seq, batch in (QUICK if args.quick else CASES):
        (mu, _), (eu, _) = measure(cfg, seq, batch, False), estimated(cfg, seq, batch, False)
        (mt, ms), (et, es) = measure(cfg, seq, batch, True), estimated(cfg, seq, batch, True)
        errs = [(e - m) / m for m, e in ((mu, eu), (mt, et), (ms, es))]
        bad += sum(not LOW <= err <= HIGH for err in errs)
        shards = max(1, math.ceil(seq / cfg["hidden_size"]))
        rows.append(label)
        print(f"| {label} | {shards} | {mu:,} | {eu:,} | {errs[0]:+.2%} | {mt:,} | {et:,} | {errs[1]:+.2%} | "
              f"{ms:,} | {es:,} | {errs[2]:+.2%} |", flush=True)
    print(f"\nband {LOW:+.0%} ... {HIGH:+.0%}: {3 * len(rows) - bad} of {3 * len(rows)} in band")
    if not args.quick:
        loss_table()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
