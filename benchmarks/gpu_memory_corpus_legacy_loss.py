"""The causal-LM loss of transformers <= 4.45 against today's, measured on the CPU allocator (bytes per logit).

Run: python benchmarks/gpu_memory_corpus_legacy_loss.py [--n 2048 --h 512 --v 32000]

Why: the Answer.AI FSDP+QLoRA points of benchmarks/gpu_memory_corpus.yaml were run in Feb-Mar 2024 with
transformers < 4.38 (fsdp_qlora README: ``transformers!=4.38.*,!=4.39.*``), whose ``LlamaForCausalLM.forward``
computed the loss inline (transformers v4.37 src/transformers/models/llama/modeling_llama.py, LlamaForCausalLM.forward):
``logits = logits.float()`` (the fp32 copy is what the returned output holds), ``shift_logits =
logits[..., :-1, :].contiguous()``, ``CrossEntropyLoss()(shift_logits.view(-1, V), ...)``. Since 4.46 the model
keeps its 16-bit logits and ``loss_function`` (ForCausalLMLoss, loss/loss_utils.py) upcasts inside and shifts
the labels instead of the logits, which is what dsadvise's ``--loss plain`` counts. Both algorithms are run here
in PyTorch on bf16 hidden states and a frozen bf16 lm_head (LoRA/QLoRA: no head gradient), the output held until
the backward ends as a training loop holds it; printed: the peak above the inputs, per logit element.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.profiling import MARK_BYTES, live_curve, mark, profiled  # noqa: E402


def legacy(x, w, labels):
    logits = (x @ w.t()).float()                       # the output holds the fp32 logits
    shift = logits[..., :-1, :].contiguous()
    loss = F.cross_entropy(shift.view(-1, shift.size(-1)), labels[..., 1:].contiguous().view(-1))
    return loss, logits


def current(x, w, labels):
    logits = x @ w.t()                                 # the output holds the 16-bit logits
    up = logits.float()
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    loss = F.cross_entropy(up.view(-1, up.size(-1)), shifted.view(-1), ignore_index=-100)
    return loss, logits


def peak(fn, n: int, h: int, v: int) -> int:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, h, generator=g).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(v, h, generator=g) * 0.02).to(torch.bfloat16)
    labels = torch.randint(0, v, (1, n), generator=g)
    gc.collect()
    with profiled() as prof:
        mark()
        loss, held = fn(x, w, labels)
        torch.autograd.grad(loss, [x])
        del held, loss
        mark()
    c, m = live_curve(prof)
    base = c[m[0]] - MARK_BYTES
    return max(c[m[0] + 1:m[1]]) - base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--h", type=int, default=512)
    ap.add_argument("--v", type=int, default=32000)
    a = ap.parse_args()
    nv = a.n * a.v
    old, new = peak(legacy, a.n, a.h, a.v), peak(current, a.n, a.h, a.v)
    print(f"N={a.n} tokens, V={a.v}, h={a.h}, bf16, CPU allocator: peak above the inputs, bytes per logit element")
    print(f"transformers <= 4.45 (inline loss): {old / nv:6.2f}")
    print(f"transformers >= 4.46 (ForCausalLMLoss, what --loss plain counts): {new / nv:6.2f}")
    print(f"difference: {(old - new) / nv:+.2f} bytes per logit ({(old - new) / 2**20:.1f} MiB here)")


if __name__ == "__main__":
    main()
