"""TRL 1.16's SFTTrainer loss (its tiled fused LM head) against dsadvise's three loss models, on the CPU allocator.

Run: python benchmarks/trl_loss.py [--model llama-3.2-1b] [--seq 512] [--batch 1]

TRL's SFTTrainer patches every model with ``add_fused_lm_head`` (trl/trainer/sft_trainer.py, __init__) and its
``compute_loss`` calls ``model(**inputs, fused_lm_head=True)``: the backbone, then ``ChunkedLogProbFunction``
(trl/kernels/chunked_logprob.py) over the shifted hidden states in tiles of ``TOKEN_CHUNK_SIZE`` = 4096 tokens x
``_CHUNKED_LOGPROB_CHUNK_SIZE`` = 32768 vocabulary columns (trl/trainer/utils.py), with outputs
("log_probs", "entropy", "is_top1"). This script runs that very function (imported from the installed TRL) on a
real model's head dimensions, with the SFT loss ``-log_probs.sum() / num_tokens``, and measures as
benchmarks/loss_kernels.py does:
* saved - bytes autograd keeps for backward (saved_tensors_hooks, unique storages, no parameters);
* fwd   - peak live bytes of the head's forward above its input;
* bwd   - peak live bytes of the head's backward above the end-of-forward level (``torch.autograd.grad(loss,
          hidden)``: the input's gradient only, as in loss_kernels.py; with the head trainable TRL also forms an
          fp32 V x h ``grad_weight``, which is the parameter's gradient when the weights are fp32).
against the estimator's ``logits_and_loss`` / forward moment / ``bw_head`` for ``--loss plain | chunked |
fused-linear | trl-head`` (``estimate_head``; trl-head: advisor/families/replay.py trl_head_loss). fp32 on the CPU. CPU vs CUDA: off Triton devices TRL
scores every position (``hidden.reshape``) and folds each tile with torch ops (``_forward_tile``: fp32
temporaries of the tile), while on CUDA it scores ``hidden[mask]`` and folds in a Triton kernel (no tile
temporaries): with every label valid the saved bytes and the backward are the same; the CPU forward peak is
higher than CUDA's by those temporaries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.head_step import head_step  # noqa: E402
from benchmarks.harness.profiling import MARK_BYTES as MARK, live_curve as curve, mark, profiled  # noqa: E402


def measure_trl(N: int, H: int, V: int, head_trainable: bool) -> tuple[int, int, int]:
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(V, H, generator=g) * 0.02).requires_grad_(head_trainable)
    x = torch.randn(N, H, generator=g).requires_grad_()
    target = torch.randint(0, V, (N,), generator=g)
    def forward():
        mask = torch.ones(N, dtype=torch.bool)
        hidden = x[mask]                                 # add_fused_lm_head on CUDA: hidden_states[mask], a copy
        log_probs, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
            hidden, weight, None, target, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
            ("log_probs", "entropy", "is_top1"))
        loss = -log_probs.sum() / N                      # SFTTrainer.compute_loss, loss_type="nll"
        metrics = (entropy.detach().sum(), is_top1.sum())
        return loss, (metrics, log_probs, entropy, is_top1, hidden)

    return head_step(forward, x, (weight,))


def fold_peak(n: int, cols: int, backward: bool) -> int:
    """Peak bytes the torch-op fold of one n x cols fp32 tile allocates (``_forward_tile`` / ``_backward_tile``,
    which TRL runs off Triton devices; CUDA's Triton kernels allocate nothing): subtracted for CUDA semantics."""
    from trl.kernels import chunked_logprob as k

    tile = torch.randn(n, cols)
    targets = torch.randint(0, cols, (n,))
    vec = [torch.zeros(n) for _ in range(7)]
    flags = dict(logit_scale=1.0, softcap=1.0, inv_t=1.0, HAS_SOFTCAP=False, BLOCK_SIZE=1024)
    with profiled() as prof:
        mark()
        if backward:
            k._backward_tile(tile, cols, targets, vec[0], vec[1], vec[2], vec[3], 0, cols, HAS_LOGPROB_GRAD=True,
                             HAS_ENTROPY_GRAD=False, **flags)
        else:
            k._forward_tile(tile, cols, targets, *vec, 0, cols, HAS_ENTROPY=True, HAS_LOG_SUM_SQ_PROBS=False,
                            HAS_MEAN_LOGITS=False, HAS_IS_TOP1=True, **flags)
        mark()
    c, m = curve(prof)
    base = c[m[0]] - MARK
    return max(c[m[0] + 1:m[1]] or [base]) - base


def estimate_head(kind: str, model: str, seq: int, batch: int, frozen: bool):
    """The estimator's head terms (saved, forward peak above the input, backward transient), fp32, lm_head
    trainable (full) or frozen (LoRA on every linear but the head), as benchmarks/loss_kernels.py reads them."""
    from advisor.catalog.models import resolve_model
    from advisor.memory import activations as act
    from advisor.specs import LoraSpec, TrainingSpec

    arch = resolve_model(model).architecture
    t = TrainingSpec(seq_len=seq, micro_batch_size=batch, loss=kind, loss_chunks=8, precision="fp32")
    if frozen:
        t = t.model_copy(update={"method": "lora", "lora": LoraSpec(rank=16, target_modules=("all-linear",))})
    terms = act._trace_model(arch, act._trace_key(t), "fp32", "none")
    saved = terms["logits_and_loss"]
    return saved, saved + max(terms["logits_held"], terms["forward_end"]), terms["bw_head"], arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE

    MiB = 2 ** 20
    N = a.seq * a.batch
    for frozen in (False, True):
        rows = [(kind, *estimate_head(kind, a.model, a.seq, a.batch, frozen)[:3])
                for kind in ("trl-head", "plain", "chunked", "fused-linear")]
        arch = estimate_head("plain", a.model, 8, 1, frozen)[3]
        H, V = arch.hidden_size, arch.vocab_size
        ms, mf, mb = measure_trl(N, H, V, not frozen)
        n, cols = min(N, TOKEN_CHUNK_SIZE), min(V, _CHUNKED_LOGPROB_CHUNK_SIZE)
        ff, fb = fold_peak(n, cols, False), fold_peak(n, cols, True)
        wgrad = 0 if frozen else 4 * V * H          # fp32 grad_weight = the fp32 parameter's .grad
        # the formula advisor/render/frameworks/trl.py trl_head_bytes uses (fp32: no casts), CUDA semantics
        tile = n * cols * 4
        f_saved, f_fwd, f_bwd = 4 * N * H + 16 * N, 4 * N * H + tile + 28 * N, tile + 4 * N * H
        head = "frozen (LoRA)" if frozen else "trainable (full)"
        print(f"\nTRL 1.16 SFTTrainer loss (ChunkedLogProbFunction, {TOKEN_CHUNK_SIZE} x {_CHUNKED_LOGPROB_CHUNK_SIZE} "
              f"tiles), {a.model} head (h={H}, V={V}), {N} tokens, fp32, lm_head {head}; MiB")
        print(f"{'':<34}{'saved':>9}{'fwd peak':>10}{'bwd':>9}{'saved+bwd':>11}")

        def row(tag, sv, fw, bw):
            print(f"{tag:<34}{sv / MiB:>9.1f}{fw / MiB:>10.1f}{bw / MiB:>9.1f}{(sv + bw) / MiB:>11.1f}")

        row("TRL measured, CPU", ms, mf, mb)
        row("TRL measured, CUDA semantics", ms, mf - ff, mb - fb - wgrad)
        row("TRL formula (trl_head_bytes)", f_saved, f_fwd, f_bwd)
        for kind, es, ef, eb in rows:
            row(f"dsadvise --loss {kind}", es, ef, eb)
    print("\nCUDA semantics: less the torch-op fold's tile temporaries (Triton's fold allocates none) and, with the "
          "head trainable, less the fp32 V x h grad_weight, which is the fp32 parameter's gradient (counted with the "
          "gradients, as for every loss). A 16-bit trained head adds that fp32 V x h on top of its 16-bit gradient.")


if __name__ == "__main__":
    main()
