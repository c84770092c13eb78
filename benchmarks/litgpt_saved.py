"""litgpt's own model code as ground truth: bytes autograd saves in litgpt's real GPT / LoRA / QLoRA vs dsadvise.

Run: python benchmarks/litgpt_saved.py [--seq 128] [--only ID-substring] [--model-code litgpt|transformers]

``--validate``: the peak of finetune/lora.py's ``validate()`` (whole (B, T, V) logits, Fabric's fp32 copy of them,
their fp32 copy by reshape, the fp32 log_softmax output: ~6.0 x the bf16 logits) at the sanity check and after a
training micro-step, beside dsadvise's replayed step peak with every layer. At sequence 512 (gemma-2b / tiny-llama /
phi-2 LoRA: 2996 / 1498 / 1199 MiB sanity, 3996 / 1998 / 1599 periodic vs 6126 / 10601 / 7900 MiB for the step;
session 9, through the real _FabricModule) it stays below the training step, so it does not set litgpt's whole-run
max_memory_allocated for these points.

For every litgpt-* point of benchmarks/gpu_memory_corpus.yaml this builds litgpt's real model (``litgpt.lora.GPT``
for LoRA/QLoRA, ``litgpt.model.GPT`` for full fine-tuning) from the point's config_hub yaml (checkpoint name ->
``Config.from_name``, lora_r/alpha/dropout and the lora_query/key/value/projection/mlp/head switches) with 2
decoder layers of the real widths, bf16 weights (bf16-true), runs the forward and backward of finetune/lora.py
(``model(input_ids, lm_head_chunk_size=128)``, ``chunked_cross_entropy``) or finetune/full.py on CPU, and counts
what autograd saves with ``torch.autograd.graph.saved_tensors_hooks`` (one count per storage, parameters and
buffers excluded), attributed to the module running when a storage is first saved: ``layer0`` (its input needs no
gradient), ``layer1`` (a layer at index >= 1: what every further layer costs), ``head`` (final norm, lm_head,
loss). dsadvise's replay of the same settings (same micro batch, same sequence) is printed beside it.

Ground-truth code: litgpt at commit fd71063c (2024-07-24, version 0.4.5; the corpus's config_hub commit),
lightning 2.3.0 (litgpt pins lightning==2.3.0.dev20240428), bitsandbytes 0.50.2 for NF4 quantize/dequantize on
CPU. Install them apart from the project's venv (torch/transformers untouched), e.g.::

    git -C <litgpt clone> archive fd71063c litgpt config_hub | tar -x -C /work/litgpt-site
    pip install --no-deps --target /work/litgpt-site lightning==2.3.0 lightning-utilities==0.11.9 \
        torchmetrics==1.4.0 bitsandbytes==0.50.2

and point ``LITGPT_SITE`` at that directory (default /work/litgpt-site); it is put on sys.path here only.

The model is called as finetune/*.py call it: through lightning's real ``_FabricModule`` with the run's precision
plugin (:func:`fabric_module`), whose ``forward`` runs the model under the plugin's ``forward_context`` (default dtype
bf16) and returns ``precision.convert_output(output)``: the logits (chunks) cast to fp32, so the loss, the saved
log_softmax results and the logit gradients are fp32 (issue 17, session 9 V: calling the bare model had hidden it).

CUDA semantics applied on CPU (the same patches for every point):
* dropout: the CPU path of ``F.dropout`` multiplies by a noise tensor of the input dtype; CUDA's
  ``native_dropout`` saves a 1-byte bool mask. ``F.dropout`` is routed to ``torch.native_dropout`` here.
* SDPA: the CPU flash kernel saves q, k, v, out and an fp32 logsumexp like CUDA's flash kernel (no attention
  matrix); where litgpt passes a mask (sliding-window layers) CUDA runs the memory-efficient kernel, which also
  keeps the mask (the table says "mask").
* QLoRA: litgpt pins bitsandbytes 0.42.0 (pyproject ``all`` extra; finetune/lora.py warns on any other), whose
  ``MatMul4Bit`` (bitsandbytes/autograd/_functions.py at 0.42.0, lines 494-548) keeps its input as
  ``ctx.tensors = (A, B)`` whenever A or B needs a gradient -- a Python attribute saved_tensors_hooks cannot see --
  and ``Linear4bit.forward`` (nn/modules.py at 0.42.0) casts x to the compute dtype and the output back. The
  lightning ``_NF4Linear`` layers are built as litgpt builds them (BitsandbytesPrecision.module_init_context
  replaces torch.nn.Linear; weights quantized from ``weight.half()`` as lightning's ``_Linear4bit.quantize`` does,
  on CPU instead of CUDA), and their forward runs a transcription of 0.42.0's ``Linear4bit.forward`` /
  ``MatMul4Bit`` that saves A with ``save_for_backward`` so the hooks count it (same lifetime until backward).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SITE = Path(os.environ.get("LITGPT_SITE", "/work/litgpt-site"))
CORPUS = ROOT / "benchmarks" / "gpu_memory_corpus.yaml"
MB = 2 ** 20


def _import_litgpt():
    """litgpt + lightning from LITGPT_SITE (setuptools >= 81 has no pkg_resources, which lightning 2.3's
    namespace-package line imports: a stand-in with that one function)."""
    if not SITE.is_dir():
        raise SystemExit(f"litgpt not installed at {SITE} (see the module docstring)")
    sys.path.insert(0, str(SITE))
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        sys.modules["pkg_resources"] = types.SimpleNamespace(declare_namespace=lambda name: None)
    import litgpt.lora  # noqa: F401
    import litgpt.model  # noqa: F401
    import litgpt.utils  # noqa: F401
    return litgpt


def litgpt_points(only: str | None = None) -> list[dict]:
    """The corpus's litgpt-* points (expressible or shown for reference)."""
    pts = yaml.safe_load(CORPUS.read_text())
    pts = pts if isinstance(pts, list) else pts["points"]
    out = [p for p in pts if p["id"].startswith("litgpt-") and p.get("config")]
    return [p for p in out if only is None or only in p["id"]]


def hub_config(p: dict) -> dict:
    """The point's config_hub yaml at fd71063c (LITGPT_SITE/config_hub/...)."""
    return yaml.safe_load((SITE / p["config"]).read_text())


# ------------------------------------------------------------------------------------------------ litgpt side
def _cuda_dropout(x, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it: native_dropout, whose backward keeps a bool mask."""
    if not training or p == 0.0:
        return x
    import torch

    return torch.native_dropout(x, p, True)[0]


def _matmul4bit_042(as_042: bool = False):
    """bitsandbytes 0.42.0 MatMul4Bit (autograd/_functions.py lines 494-548). ``as_042``: A kept as 0.42 keeps it
    (``ctx.tensors``, a Python attribute alive as long as the graph); else through save_for_backward (the hooks
    see it; released when the node runs)."""
    import torch
    import bitsandbytes.functional as bnbF

    class MatMul4Bit(torch.autograd.Function):
        @staticmethod
        def forward(ctx, A, weight, bias):
            W = bnbF.dequantize_4bit(weight.data, weight.quant_state).to(A.dtype)   # fp16 -> compute dtype
            out = torch.nn.functional.linear(A, W, bias)
            ctx.weight = weight
            if ctx.needs_input_grad[0]:      # any(needs_input_grad[:2]); the NF4 weight never trains
                if as_042:
                    ctx.tensors = (A,)
                else:
                    ctx.save_for_backward(A)
            return out

        @staticmethod
        def backward(ctx, g):
            W = bnbF.dequantize_4bit(ctx.weight.data, ctx.weight.quant_state).to(g.dtype)
            return g @ W, None, None

    def forward(self, x):                    # bitsandbytes 0.42.0 Linear4bit.forward (nn/modules.py 240-260)
        inp_dtype = x.dtype
        x = x.to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return MatMul4Bit.apply(x, self.weight, bias).to(inp_dtype)

    return forward


def build_litgpt(p: dict, hub: dict, layers: int, as_042: bool = False):
    """litgpt's model for point ``p`` with ``layers`` decoder layers, bf16, as finetune/{lora,full}.py builds it."""
    import torch

    litgpt = _import_litgpt()
    from litgpt.lora import Config as LoraConfig, GPT as LoraGPT, mark_only_lora_as_trainable
    from litgpt.model import GPT as FullGPT
    from litgpt.config import Config

    name = Path(hub["checkpoint_dir"]).name
    method = p["method"]
    if method == "full":
        cfg = Config.from_name(name, n_layer=layers)
        cls = FullGPT
    else:
        keys = ("lora_r", "lora_alpha", "lora_dropout", "lora_query", "lora_key", "lora_value", "lora_projection",
                "lora_mlp", "lora_head")
        cfg = LoraConfig.from_name(name, n_layer=layers, **{k: hub[k] for k in keys if k in hub})
        cls = LoraGPT
    quant = hub.get("quantize")
    # read before module_init_context(): it enters its dtype context when it is built (an ExitStack), so the
    # default dtype read after it is already bf16 and restoring that would leak bf16 into every later point
    prev = torch.get_default_dtype()
    ctx = contextlib.nullcontext()
    if quant:
        from lightning.fabric.plugins import BitsandbytesPrecision
        plugin = BitsandbytesPrecision(quant[4:], torch.bfloat16)
        ctx = plugin.module_init_context()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with ctx, torch.device("meta"):          # built on meta, then materialized: no slow CPU init of big weights
            model = cls(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for t in model.parameters():
            t.normal_(0.0, 0.02)
    if method != "full":
        mark_only_lora_as_trainable(model)
    if quant:
        import bitsandbytes as bnb
        fwd = _matmul4bit_042(as_042)
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                # lightning _Linear4bit.quantize: weight.contiguous().to(dtype=torch.half), quantize_4bit (on CPU here)
                w = m.weight.data.contiguous().to(dtype=torch.half)
                # _NF4Linear / _NF4DQLinear: quant_type nf4, compress_statistics for "-dq", Params4bit blocksize 64
                w4, qs = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=quant.endswith("-dq"),
                                                      quant_type=quant[4:].split("-")[0])
                # bnb_quantized: already quantized (bitsandbytes >= 0.43's Params4bit.to would quantize it again)
                m.weight = bnb.nn.Params4bit(w4, requires_grad=False, quant_state=qs, blocksize=64,
                                             compress_statistics=quant.endswith("-dq"),
                                             quant_type=quant[4:].split("-")[0], bnb_quantized=True)
                m.compute_dtype = torch.bfloat16          # BitsandbytesPrecision.convert_module
                m.forward = types.MethodType(fwd, m)
    # finetune/*.py: model.max_seq_length = longest sample (< block_size): the rope cache is rebuilt in fp32
    model.max_seq_length = p["seq_len_run"]
    model.cos, model.sin = model.rope_cache()
    return model


def fabric_module(model, hub: dict, device: str = "cpu"):
    """``model`` as finetune/*.py runs it: ``fabric.setup_module`` wraps it in lightning's ``_FabricModule``, whose
    ``forward`` (lightning/fabric/wrappers.py, 2.3.0 and litgpt's March-2024 pin b19c3a96) runs the model under the
    precision plugin's ``forward_context`` (default dtype bf16) and then ``precision.convert_output``: every
    floating output cast to ``torch.get_default_dtype()`` -- fp32 again once the forward context has exited
    (HalfPrecision / BitsandbytesPrecision / FSDPPrecision ``convert_output``). The real wrapper and plugin, on
    the given device: litgpt's loop receives fp32 logits (chunks) and computes the loss on them."""
    import torch
    from lightning.fabric.plugins import BitsandbytesPrecision, HalfPrecision
    from lightning.fabric.strategies import SingleDeviceStrategy
    from lightning.fabric.wrappers import _FabricModule

    quant = hub.get("quantize")
    plugin = BitsandbytesPrecision(quant[4:], torch.bfloat16) if quant else HalfPrecision("bf16-true")
    return _FabricModule(model, SingleDeviceStrategy(device=torch.device(device), precision=plugin))


def measure(p: dict, seq: int) -> dict[str, int]:
    """Saved bytes of one forward of point ``p`` at micro batch ``p['micro_batch']`` and sequence ``seq``:
    ``layer0``, ``layer1``, ``head``, ``embeddings`` and ``mask`` (1 when litgpt passed an SDPA mask)."""
    import torch
    import torch.nn.functional as F

    hub = hub_config(p)
    p = dict(p, seq_len_run=seq)
    torch.manual_seed(0)
    model = build_litgpt(p, hub, layers=2)
    model.train()
    for m in model.modules():
        if hasattr(m, "enable_lora") and hasattr(m, "lora_ind"):
            m.lora_ind                                   # a buffer LoRAQKVLinear registers at its first forward
    params = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    if str(p.get("strategy", "")).startswith("fsdp"):
        # finetune/*.py on several devices: FSDPStrategy(activation_checkpointing_policy={Block}), i.e. torch's
        # non-reentrant checkpoint around every Block (lightning applies checkpoint_wrapper)
        import torch.utils.checkpoint as ckpt
        for blk in model.transformer.h:
            blk.forward = (lambda f: lambda *a, **k: ckpt.checkpoint(f, *a, use_reentrant=False, **k))(blk.forward)
    where = {"now": "embeddings"}
    for i, blk in enumerate(model.transformer.h):
        blk.register_forward_pre_hook(lambda m, a, i=i: where.__setitem__("now", f"layer{i}"))
    model.transformer.ln_f.register_forward_pre_hook(lambda m, a: where.__setitem__("now", "head"))
    seen: dict[int, tuple[str, int]] = {}
    masks = {"n": 0}
    real_sdpa = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            masks["n"] += 1
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kw)

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = (where["now"], st.nbytes())
        return t

    b = p["micro_batch"]
    ids = torch.randint(0, model.config.vocab_size, (b, seq))
    targets = torch.randint(0, model.config.vocab_size, (b, seq))
    from litgpt.utils import chunked_cross_entropy
    fmodel = fabric_module(model, hub)    # lightning's forward_context (bf16 default dtype) and convert_output
    old_dropout, old_sdpa = F.dropout, F.scaled_dot_product_attention
    F.dropout, F.scaled_dot_product_attention = _cuda_dropout, sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if p["method"] == "full":                    # finetune/full.py
                logits = fmodel(ids)
                where["now"] = "head"
                loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])
            else:                                        # finetune/lora.py
                logits = fmodel(ids, lm_head_chunk_size=128)
                where["now"] = "head"
                logits[-1] = logits[-1][..., :-1, :]
                loss = chunked_cross_entropy(logits, targets[..., 1:])
        loss.backward()
    finally:
        F.dropout, F.scaled_dot_product_attention = old_dropout, old_sdpa
    out = {"layer0": 0, "layer1": 0, "head": 0, "embeddings": 0}
    for term, n in seen.values():
        out[term] = out.get(term, 0) + n
    out["mask"] = int(masks["n"] > 0)
    return out


def step_peak(p: dict, seq: int, layers: int = 2, device: str = "cpu") -> tuple[int, int]:
    """Peak live bytes above the model (parameters, buffers) over litgpt's training loop, two micro-steps as
    finetune/lora.py (full.py) writes them: ``logits`` and ``loss`` stay bound from one iteration to the next
    (``logits = model(...)`` replaces the previous list only when the forward returns, ``loss = ...`` the
    previous graph only after the new loss exists). CPU allocator timeline from the profiler
    (benchmarks/harness/profiling.py), CUDA semantics as in :func:`measure`; QLoRA keeps A in ctx.tensors as
    bitsandbytes 0.42.0 does. Returns (peak of the first micro-step, peak of the second) above the level before
    the first forward."""
    import torch
    import torch.nn.functional as F
    from benchmarks.harness.profiling import live_curve, mark, profiled

    hub = hub_config(p)
    p = dict(p, seq_len_run=seq)
    torch.manual_seed(0)
    model = build_litgpt(p, hub, layers=layers, as_042=True).to(device)
    model.train()
    fmodel = fabric_module(model, hub, device)
    for m in model.modules():
        if hasattr(m, "enable_lora") and hasattr(m, "lora_ind"):
            m.lora_ind                                   # the lazily registered buffer, before the profile
    from litgpt.utils import chunked_cross_entropy
    b = p["micro_batch"]
    ids = torch.randint(0, model.config.vocab_size, (b, seq), device=device)
    targets = torch.randint(0, model.config.vocab_size, (b, seq), device=device)
    if device != "cpu":                                  # a GPU: max_memory_allocated, real kernels, no patches
        peaks = []
        logits = loss = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            torch.cuda.reset_peak_memory_stats()
            if p["method"] == "full":
                logits = fmodel(ids)
                loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])
            else:
                logits = fmodel(ids, lm_head_chunk_size=128)
                logits[-1] = logits[-1][..., :-1, :]
                loss = chunked_cross_entropy(logits, targets[..., 1:])
            loss.backward()
            for t in model.parameters():
                t.grad = None
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - base)
        return peaks[0], peaks[1]
    old_dropout, old_linear = F.dropout, F.linear
    F.dropout = _cuda_dropout

    def linear(x, w, bias=None):
        # the lm_head chunks are non-contiguous (B, 128, h) views: at::matmul does not fold them and runs bmm
        # on the weight broadcast to the batch (stride 0), which CUDA's batched GEMM reads in place but the CPU
        # kernel copies (B x the weight). Fold by a copy of the chunk instead (a chunk x hidden transient more).
        if x.dim() > 2 and not x.is_contiguous():
            x = x.contiguous()
        return old_linear(x, w, bias)

    F.linear = linear
    try:
        with profiled() as prof:
            logits = loss = None
            for _ in range(2):
                mark()
                if p["method"] == "full":
                    logits = fmodel(ids)
                    loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])
                else:
                    logits = fmodel(ids, lm_head_chunk_size=128)
                    logits[-1] = logits[-1][..., :-1, :]
                    loss = chunked_cross_entropy(logits, targets[..., 1:])
                loss.backward()
                for t in model.parameters():
                    t.grad = None                        # optimizer.zero_grad(set_to_none=True)
            mark()
            del logits, loss
    finally:
        F.dropout, F.linear = old_dropout, old_linear
    curve, marks = live_curve(prof)
    base = curve[marks[0]] - 7_777_777
    return (max(curve[marks[0] + 2:marks[1]]) - base, max(curve[marks[1] + 2:marks[2]]) - base)


def validate_peak(p: dict, seq: int, layers: int = 2) -> tuple[int, int, int]:
    """Peak live bytes above the model of finetune/lora.py's ``validate()`` (fd71063c), one val batch of the
    point's micro batch at ``seq`` under ``torch.no_grad()`` in eval mode: ``logits = model(input_ids)`` (no
    lm_head chunking: the whole (B, T, V) logits), ``chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:],
    chunk_size=0)`` (``reshape(-1, V)`` of the non-contiguous slice copies the logits, ``F.cross_entropy``'s
    log_softmax output is a third logits-sized tensor). Two moments: the sanity check before training (nothing
    else live; no gradients, no optimizer states yet) and the periodic validate after an optimizer step, where
    fit's ``logits`` list of the last training micro-step is still bound. Returns (sanity peak, periodic peak,
    bf16 logits bytes). CPU allocator timeline as :func:`step_peak`; the no-grad forward keeps no layer's
    activations, so the layer count does not change it."""
    import torch
    import torch.nn.functional as F
    from benchmarks.harness.profiling import live_curve, mark, profiled

    hub = hub_config(p)
    p = dict(p, seq_len_run=seq)
    torch.manual_seed(0)
    model = build_litgpt(p, hub, layers=layers, as_042=True)
    fmodel = fabric_module(model, hub)
    from litgpt.utils import chunked_cross_entropy
    for m in model.modules():
        if hasattr(m, "enable_lora") and hasattr(m, "lora_ind"):
            m.lora_ind
    b = p["micro_batch"]
    ids = torch.randint(0, model.config.vocab_size, (b, seq))
    targets = torch.randint(0, model.config.vocab_size, (b, seq))

    def validate():
        with torch.no_grad():
            model.eval()
            logits = fmodel(ids)
            loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:], chunk_size=0)
            model.train()
        return loss

    old_dropout = F.dropout
    F.dropout = _cuda_dropout
    try:
        with profiled() as prof:
            mark()
            validate()                                   # sanity check (eval.max_iters=2: one batch shown)
            mark()
            if p["method"] == "full":
                logits = fmodel(ids)
                loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])
            else:
                logits = fmodel(ids, lm_head_chunk_size=128)
                logits[-1] = logits[-1][..., :-1, :]
                loss = chunked_cross_entropy(logits, targets[..., 1:])
            loss.backward()
            for t in model.parameters():
                t.grad = None
            loss = loss.detach()
            mark()
            validate()                                   # periodic: fit's `logits` still bound
            mark()
            del logits, loss
    finally:
        F.dropout = old_dropout
    curve, marks = live_curve(prof)
    base = curve[marks[0]] - 7_777_777
    sanity = max(curve[marks[0] + 2:marks[1]]) - base
    periodic = max(curve[marks[2] + 2:marks[3]]) - base
    return sanity, periodic, b * seq * model.config.padded_vocab_size * 2


def replay_peak(p: dict, seq: int, layers: int = 2, model_code: str | None = None) -> int:
    """dsadvise's activation peak above the model for ``layers`` decoder layers: saved set + the larger of its
    backward/forward-end moments (activations + temporaries of advisor.memory.activations)."""
    from advisor.memory.activations import activation_memory
    from advisor.memory.core import activation_mode
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from benchmarks.gpu_memory_corpus import kwargs

    kw = kwargs(p)
    kw["seq_len"] = seq
    if model_code:
        kw["model_code"] = model_code
    model = resolve_model(kw.pop("model"))
    arch = model.architecture.model_copy(update={"num_layers": layers})
    hw = build_hardware(kw.pop("gpus"), 1, None, kw.pop("gpu"), None, None, None)
    strat = build_strategy(hw, kw.pop("strategy"), kw.pop("offload_optimizer", "none"),
                           kw.pop("offload_param", "none"), kw.pop("bucket_sizes"))
    training = build_training(hw, **kw)
    act = activation_memory(arch, training, activation_mode(training, strat))
    return act.activations + act.temporaries


# ----------------------------------------------------------------------------------------------- dsadvise side
def replay(p: dict, seq: int, model_code: str | None = None) -> dict[str, int]:
    """dsadvise's replayed terms for point ``p`` at sequence ``seq`` (its own settings otherwise)."""
    from advisor.memory.activations import _trace_key, _traced
    from advisor.memory.core import activation_mode
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from benchmarks.gpu_memory_corpus import kwargs

    kw = kwargs(p)
    kw["seq_len"] = seq
    if model_code:
        kw["model_code"] = model_code
    model = resolve_model(kw.pop("model"))
    hw = build_hardware(kw.pop("gpus"), 1, None, kw.pop("gpu"), None, None, None)
    strat = build_strategy(hw, kw.pop("strategy"), kw.pop("offload_optimizer", "none"),
                           kw.pop("offload_param", "none"), kw.pop("bucket_sizes"))
    kw["micro_batch"] = kw.pop("micro_batch")
    training = build_training(hw, **kw)
    mode = activation_mode(training, strat)
    t = _traced(model.architecture, _trace_key(training), mode, training.activation_checkpointing)
    return {"layer0": t["first_layer"], "layer1": t["per_layer"],
            "head": t["final_norm"] + t["logits_and_loss"], "embeddings": t["embeddings"] + t["rope_cache"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128, help="sequence length of the measured step (default 128)")
    ap.add_argument("--only", default=None, help="points whose id contains this")
    ap.add_argument("--model-code", default=None, help="dsadvise's --model-code for the replay column")
    ap.add_argument("--step", action="store_true", help="whole-step peak (profiler) instead of saved bytes")
    ap.add_argument("--bytes", action="store_true", help="exact bytes (layer, head) of litgpt and of the replay")
    ap.add_argument("--device", default="cpu", help="--step on this device (cuda: max_memory_allocated, no patches)")
    ap.add_argument("--layers", type=int, default=2, help="--step: decoder layers built (default 2)")
    ap.add_argument("--validate", action="store_true",
                    help="peak of litgpt's validate() (sanity check, periodic) beside the step's replayed peak")
    args = ap.parse_args()
    if args.validate:
        print(f"{'point':44} {'b':>2} {'logits':>7} {'sanity':>8} {'periodic':>8} {'x logits':>8} "
              f"{'step (all layers)':>17}")
        for p in litgpt_points(args.only):
            s, per, lg = validate_peak(p, args.seq, args.layers)
            from benchmarks.gpu_memory_corpus import kwargs
            from advisor.catalog.models import resolve_model
            n = resolve_model(kwargs(p)["model"]).architecture.num_layers
            ds = replay_peak(p, args.seq, n, model_code=args.model_code)
            print(f"{p['id']:44} {p['micro_batch']:>2} {lg / MB:7.1f} {s / MB:8.1f} {per / MB:8.1f} "
                  f"{s / lg:8.2f} {ds / MB:17.1f}", flush=True)
        print(f"\nMiB above the model at sequence {args.seq}: litgpt's validate() (CPU allocator; periodic = after a "
              "training micro-step, its logits still bound) vs dsadvise's replayed step peak (every layer)")
        return
    if args.step:
        print(f"{'point':44} {'b':>2} {'litgpt step1':>12} {'litgpt step2':>12} {'dsadvise':>9} {'err':>7}")
        for p in litgpt_points(args.only):
            s1, s2 = step_peak(p, args.seq, args.layers, args.device)
            ds = replay_peak(p, args.seq, args.layers, model_code=args.model_code)
            print(f"{p['id']:44} {p['micro_batch']:>2} {s1 / MB:12.1f} {s2 / MB:12.1f} {ds / MB:9.1f} "
                  f"{100 * (ds - s2) / s2:+6.1f}%", flush=True)
        print(f"\nMiB above the model at sequence {args.seq}, 2 decoder layers (CPU allocator, CUDA dropout masks)")
        return
    rows = []
    print(f"{'point':44} {'b':>2} {'litgpt L1':>10} {'dsadv L1':>9} {'err':>7} {'litgpt head':>11} "
          f"{'dsadv head':>10} {'err':>7} {'L0 lit/ds':>13}  note")
    for p in litgpt_points(args.only):
        lit = measure(p, args.seq)
        try:
            ds = replay(p, args.seq, args.model_code)
        except Exception as e:  # noqa: BLE001 -- a point the replay refuses is shown, not hidden
            print(f"{p['id']:44} replay failed: {type(e).__name__}: {e}")
            continue
        if args.bytes:
            print(f"{p['id']:44} litgpt ({lit['layer1']}, {lit['head']})  replay ({ds['layer1']}, {ds['head']})",
                  flush=True)
            continue
        e1 = 100 * (ds["layer1"] - lit["layer1"]) / lit["layer1"]
        eh = 100 * (ds["head"] - lit["head"]) / lit["head"] if lit["head"] else 0.0
        note = "mask" if lit["mask"] else ""
        rows.append((p["id"], e1, eh))
        print(f"{p['id']:44} {p['micro_batch']:>2} {lit['layer1'] / MB:10.2f} {ds['layer1'] / MB:9.2f} {e1:+6.1f}% "
              f"{lit['head'] / MB:11.2f} {ds['head'] / MB:10.2f} {eh:+6.1f}% "
              f"{lit['layer0'] / MB:6.1f}/{ds['layer0'] / MB:<6.1f}  {note}", flush=True)
    if rows:
        print(f"\nMiB at sequence {args.seq}; L1 = one decoder layer at index >= 1, head = final norm + lm_head + loss")


if __name__ == "__main__":
    main()
