"""Loss kernels: the estimator's accounting of the output head + loss against pure-PyTorch implementations of
the same algorithms, measured on the CPU allocator.

Run: python benchmarks/loss_kernels.py [--model llama-3.2-1b] [--seq 512] [--batch 1] [--lora-head R]

Per kernel (``--loss plain | chunked | fused-linear``, advisor/memory/activations.py ``_Model.head``):
* saved  - bytes autograd keeps for backward during the head (saved_tensors_hooks, unique storages, no
           parameters), vs the estimator's ``logits_and_loss`` term;
* fwd    - peak live bytes of the head's forward above its input, vs the estimator's saved + held logits +
           forward-end transient (torchtune's logits list, Liger's chunk logits);
* bwd    - peak live bytes of the head's backward above the end-of-forward level
           (``torch.autograd.grad(loss, hidden)``: no parameter gradient is formed, as in benchmarks/harness/kinds/saved.py),
           vs the estimator's backward replay of the head (``bw_head``).
The implementations follow the sources the estimator cites: transformers ForCausalLMLoss (plain),
torchtune CEWithChunkedOutputLoss with the decoder's chunked output and the recipe's ``del logits`` (chunked),
Liger's LigerFusedLinearCrossEntropyFunction written in PyTorch (fused-linear: grad_input / grad_weight
accumulated chunk by chunk in the forward, saved for backward). fp32 (CPU), lm_head trainable.

``--lora-head R`` (issue 17): the lm_head frozen and wrapped as PEFT's lora.Linear at rank R
(peft/tuners/lora/layer.py Linear.forward: ``result = base(x); result = result + lora_B(lora_A(dropout(x))) *
scaling``, fp32 adapters, no dropout), applied to each chunk under ``chunked``, against the estimate with
``--lora-targets all-linear,lm_head`` (the head's input requires grad, as below adapted layers); plain and chunked
only (fused-linear with a LoRA'd head is refused: advisor.param_count.check_lora_head).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.catalog.models import resolve_model  # noqa: E402
from advisor.memory import activations as act  # noqa: E402
from advisor.specs import LoraSpec, TrainingSpec  # noqa: E402

from benchmarks.harness.head_step import head_step  # noqa: E402


class FusedLinearCE(torch.autograd.Function):
    """Liger's algorithm (src/liger_kernel/ops/fused_linear_cross_entropy.py) in PyTorch: chunks of
    next_pow2(ceil(N / ceil(V / H))) tokens; each chunk's logits, softmax gradient, grad_input slice and
    grad_weight contribution are computed in the forward; only grad_input and grad_weight are saved."""

    @staticmethod
    def forward(ctx, x, weight, target):
        N, H = x.shape
        V = weight.shape[0]
        inc = -(-V // H)
        chunk = min(1 << max(0, (-(-N // inc) - 1).bit_length()), N)
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(weight)
        loss_1d = torch.zeros(N, dtype=torch.float32)
        for start in range(0, N, chunk):
            xc = x[start:start + chunk]
            logits = xc @ weight.t()
            lse = torch.logsumexp(logits, dim=-1)
            tc = target[start:start + chunk]
            loss_1d[start:start + chunk] = lse - logits.gather(1, tc[:, None])[:, 0]
            logits.sub_(lse[:, None]).exp_()                  # softmax, in place (the kernel's X_ptr)
            logits[torch.arange(len(tc)), tc] -= 1.0
            logits.div_(N)
            del lse
            grad_input[start:start + chunk] = logits @ weight
            grad_weight.addmm_(logits.t(), xc)
            del logits
        ctx.save_for_backward(grad_input, grad_weight)
        return loss_1d.sum() / N

    @staticmethod
    def backward(ctx, grad_out):
        grad_input, grad_weight = ctx.saved_tensors
        grad_input.mul_(grad_out)                                # element_mul_kernel, in place
        grad_weight.mul_(grad_out)
        return grad_input, grad_weight, None


def run(kind: str, x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunks: int, lora=None):
    """Forward of the head + loss; returns (loss, what the caller holds through backward). ``lora``: (A, B,
    scaling) of a LoRA'd head (PEFT's lora.Linear order of operations)."""

    def head(h):
        out = F.linear(h, weight)
        if lora is not None:
            a, b, scaling = lora
            out = out + F.linear(F.linear(h, a), b) * scaling
        return out

    if kind == "plain":
        logits = head(x)
        loss = F.cross_entropy(logits.float(), target)
        return loss, logits
    if kind == "chunked":
        parts = [head(c) for c in x.tensor_split(chunks, dim=0)]
        labels = target.tensor_split(chunks, dim=0)
        total = 0.0
        for lc, tc in zip(parts, labels):
            total = total + F.cross_entropy(lc.float(), tc, reduction="sum")
        loss = total / target.numel()
        del parts                                                 # the recipe's `del logits`
        return loss, None
    return FusedLinearCE.apply(x, weight, target), None


def measure(kind: str, N: int, H: int, V: int, chunks: int, lora_rank: int = 0):
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(V, H, generator=g) * 0.02).requires_grad_(not lora_rank)
    x = torch.randn(N, H, generator=g).requires_grad_()
    target = torch.randint(0, V, (N,), generator=g)
    lora = None
    if lora_rank:   # lora_A (r x H), lora_B (V x r), fp32, trainable; scaling = alpha / r
        lora = ((torch.randn(lora_rank, H, generator=g) * 0.02).requires_grad_(),
                (torch.randn(V, lora_rank, generator=g) * 0.02).requires_grad_(), 2.0)
    return head_step(lambda: run(kind, x, weight, target, chunks, lora), x, (weight, *(lora[:2] if lora else ())))


def estimate(kind: str, model: str, seq: int, batch: int, chunks: int, lora_rank: int = 0):
    arch = resolve_model(model).architecture
    t = TrainingSpec(seq_len=seq, micro_batch_size=batch, loss=kind, loss_chunks=chunks, precision="fp32")
    if lora_rank:
        t = t.model_copy(update={"method": "lora", "lora": LoraSpec(rank=lora_rank,
                                                                     target_modules=("all-linear", "lm_head"))})
    terms = act._trace_model(arch, act._trace_key(t), "fp32", "none")
    saved = terms["logits_and_loss"]
    # forward_end: bytes over the end-of-forward saved set at the head's forward moment (torchtune's logits list,
    # Liger's chunk logits, a LoRA'd head's output-sized temporaries), which the held logits are part of
    fwd = saved + max(terms["logits_held"], terms["forward_end"])
    return saved, fwd, terms["bw_head"], arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--lora-head", type=int, default=0, metavar="R", help="LoRA on the frozen lm_head at rank R")
    a = ap.parse_args()
    MiB = 2 ** 20
    head = f", lm_head frozen + LoRA r={a.lora_head}" if a.lora_head else ""
    print(f"{a.model}, batch {a.batch} x seq {a.seq}, fp32, CPU{head}; MiB: measured / estimated (error)")
    print(f"{'loss':<14}{'saved':>26}{'fwd peak':>26}{'bwd transient':>26}")
    for kind in ("plain", "chunked") if a.lora_head else ("plain", "chunked", "fused-linear"):
        es, ef, eb, arch = estimate(kind, a.model, a.seq, a.batch, a.chunks, a.lora_head)
        N = a.seq * a.batch
        ms, mf, mb = measure(kind, N, arch.hidden_size, arch.vocab_size, a.chunks, a.lora_head)

        def cell(m: int, e: int) -> str:
            err = f"{100 * (e - m) / m:+.1f}%" if m else "n/a"
            return f"{m / MiB:>9.1f} / {e / MiB:>7.1f} ({err:>6})"

        print(f"{kind:<14}{cell(ms, es):>26}{cell(mf, ef):>26}{cell(mb, eb):>26}")


if __name__ == "__main__":
    main()
