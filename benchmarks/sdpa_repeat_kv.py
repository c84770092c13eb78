"""What an old transformers' SDPA attention saves per decoder layer on a grouped-query model, against the replay
under ``--transformers-version`` (issue 17, session 9, helper A).

transformers before 4.54 repeats the key/value heads (``repeat_kv``: expand + reshape, a copy) before every
``scaled_dot_product_attention`` call: each family's ``<Family>SdpaAttention.forward`` up to 4.47 (e.g. 4.39.3
models/llama/modeling_llama.py l.655-656) and ``integrations/sdpa_attention.py`` ``sdpa_attention_forward`` from
4.48 to 4.53.3; 4.54.0 added ``use_gqa_in_sdpa`` (``enable_gqa=True`` when torch >= 2.5 and no attention mask;
huggingface/transformers#39412). SDPA then saves K and V with all the query heads. dsadvise reads this from
advisor/data/stacks.yaml ``sdpa_repeat_kv``; this script checks the replay's per-layer bytes against the real
transformers.

Run (each transformers in its own process; an old one from a side folder, never in the project's venv):

    pip install --no-deps --target /work/site-A2 transformers==4.39.3 tokenizers==0.15.2 huggingface_hub==0.21.4
    python benchmarks/sdpa_repeat_kv.py --site /work/site-A2       # measures 4.39.3 and prints the table
    python benchmarks/sdpa_repeat_kv.py                            # the venv's transformers (no version given)

The measured child builds a tiny model of each family (3 decoder layers, from its config, random weights), runs one
training forward with labels and records with ``saved_tensors_hooks`` every storage autograd saves (parameters
excluded, each storage once, attributed to the decoder layer whose forward saved it first), under the harness's
CUDA semantics (benchmarks/harness/semantics.py: fused dropout masks; CPU autocast given CUDA's op lists). The
per-layer figure is the last layer's (the first one also takes what all layers share, e.g. 4.39's 4-D mask).
``--json`` prints the child's raw numbers (tests/families/test_sdpa_repeat_kv_stack.py records them).

CPU vs CUDA: 4.39 hands SDPA a 4-D float mask (``_update_causal_mask``); on CUDA that selects the memory-efficient
kernel, which keeps q, k, v, the mask (attn_bias), out and the fp32 logsumexp; torch's CPU flash kernel keeps the
same tensors. On CUDA 4.39 also makes q, k, v ``.contiguous()`` when a mask is given (a copy SDPA saves instead of
the original, same bytes), which the CPU path skips: the saved bytes per layer are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Tiny grouped-query models (8 query heads, 2 KV heads; Gemma-2B's multi-query 1), each family's real config keys.
BASE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, vocab_size=512,
            max_position_embeddings=256, num_hidden_layers=3)
FAMILIES = {
    "llama": dict(BASE, model_type="llama"),
    "mistral": dict(BASE, model_type="mistral", sliding_window=None),
    "qwen2": dict(BASE, model_type="qwen2", use_sliding_window=False),
    "gemma": dict(BASE, model_type="gemma", num_key_value_heads=1, head_dim=32, hidden_act="gelu_pytorch_tanh"),
}
# (mode, batch, seq): pure bf16 as the Answer.AI / PEFT-docs runs, and fp32 weights under bf16 autocast
CASES = (("half-bf16", 2, 64), ("autocast-bf16", 2, 64))


# --------------------------------------------------------------------------------------------------------------
# the measured child (runs under whatever transformers is first on sys.path)
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _cuda_sdpa_contiguous():
    """transformers < 4.48's ``<Family>SdpaAttention.forward`` makes q, k, v contiguous before SDPA when a mask is
    given, on CUDA only (``if query_states.device.type == "cuda" and causal_mask is not None``; 4.39.3 llama l.665-668):
    the same copies here, so a CPU run saves what the GPU saves (a multi-query model's repeated K/V is an expanded
    view that the copy materializes with every query head). 4.48+ copies on every device: nothing to patch."""
    import torch
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) >= (4, 48):
        yield
        return
    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, *args, **kwargs):
        if attn_mask is not None:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return real(q, k, v, attn_mask, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = real


def _measure_one(cfg: dict, mode: str, batch: int, seq: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.harness.kinds.saved import is_weight_copy
    from benchmarks.harness.semantics import autocast, cuda_semantics, mode_dtypes

    wdtype, _ = mode_dtypes(mode)
    d = dict(cfg)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    config.use_cache = False
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(wdtype)
    model.train()
    layers = model.model.layers
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_ids = {id(p) for p in model.parameters()}
    where = ["fixed"]
    per: dict[str, int] = {}
    seen: set[int] = set()

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr and ptr not in params and ptr not in seen:
            seen.add(ptr)
            if is_weight_copy(t, param_ids, set()):      # autocast's bf16 copy of a weight: not an activation
                return t.detach()
            per[where[-1]] = per.get(where[-1], 0) + st.nbytes()
        return t.detach()

    def enter(i):
        def pre(module, args):
            where.append(f"layer{i}")
        return pre

    def leave(module, args, output):
        where.pop()

    hooks = []
    for i, layer in enumerate(layers):
        hooks += [layer.register_forward_pre_hook(enter(i)), layer.register_forward_hook(leave)]
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
    with cuda_semantics(mode), _cuda_sdpa_contiguous(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            autocast(mode):
        out = model(input_ids=ids, labels=ids)
    del out
    for h in hooks:
        h.remove()
    n = len(layers)
    return {"per_layer": per.get(f"layer{n - 1}", 0), "first_layer": per.get("layer0", 0),
            "outside_layers": per.get("fixed", 0), "total": sum(per.values()), "layers": n}


def child() -> dict:
    """Per-family, per-case saved bytes under the transformers on sys.path."""
    import torch
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": {}}
    for fam, cfg in FAMILIES.items():
        for mode, b, s in CASES:
            out["cases"][f"{fam}/{mode}/b{b}/s{s}"] = _measure_one(cfg, mode, b, s)
    return out


# --------------------------------------------------------------------------------------------------------------
# the replay and the table (the project's venv)
# --------------------------------------------------------------------------------------------------------------
def replay_per_layer(family: str, mode: str, batch: int, seq: int, transformers_version: str | None,
                     torch_version: str | None = None) -> int:
    """The replay's saved bytes per decoder layer for the case (``activation_memory(...).breakdown['per_layer']``)."""
    from advisor.hf_config import architecture_from_hf_config
    from advisor.memory.activations import activation_memory
    from advisor.specs import TrainingSpec

    cfg = {k: v for k, v in FAMILIES[family].items() if k != "num_hidden_layers"}
    arch = architecture_from_hf_config({**cfg, "num_hidden_layers": BASE["num_hidden_layers"]})
    spec = TrainingSpec(seq_len=seq, micro_batch_size=batch, attention="sdpa", activation_checkpointing="none",
                        method="full", transformers_version=transformers_version, torch_version=torch_version)
    return activation_memory(arch, spec, mode).breakdown["per_layer"]


def measure_in(site: str | None) -> dict:
    """Run the child in a fresh interpreter with ``site`` first on sys.path (None: the venv's transformers)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in (site, str(ROOT)) if p])
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child"], env=env, capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"the measuring process failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", help="a folder holding an old transformers (+ its tokenizers, huggingface_hub)")
    ap.add_argument("--json", action="store_true", help="print the measured numbers as JSON only")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child()))
        return
    sys.path.insert(0, str(ROOT))
    m = measure_in(args.site)
    if args.json:
        print(json.dumps(m, indent=1))
        return
    tv = ".".join(m["transformers"].split(".")[:2])
    version = tv if args.site else None
    print(f"transformers {m['transformers']}, torch {m['torch']}: saved bytes per decoder layer "
          f"(replay with --transformers-version {version or '(none)'})")
    print(f"{'case':<32}{'measured':>12}{'replay':>12}{'error':>9}")
    for key, r in m["cases"].items():
        fam, mode, b, s = key.split("/")
        est = replay_per_layer(fam, mode, int(b[1:]), int(s[1:]), version)
        print(f"{key:<32}{r['per_layer']:>12,}{est:>12,}{(est - r['per_layer']) / r['per_layer']:>+9.2%}")


if __name__ == "__main__":
    main()
