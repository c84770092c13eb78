"""Buffers an old transformers' model really registers vs what dsadvise counts for --transformers-version (issue 17).

Run with an old transformers in a side folder (never in the project's venv), e.g.:

    pip install --no-deps --target /tmp/t439 transformers==4.39.3 tokenizers==0.15.2 huggingface_hub==0.21.4
    PYTHONPATH=$PWD:/tmp/t439 python benchmarks/stack_buffers.py

Builds each catalog model's real config on the meta device (no weights: the buffers keep their shapes and dtypes),
sums the bytes of its buffers by name (the rotary cos/sin caches of every layer, LlamaModel.causal_mask) and prints
them next to advisor.memory.buffers' figures for the same version: rotary counted fp32 (torch's default dtype, as
built here), the causal mask one byte per element.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("llama-2-7b", "llama-2-70b", "mistral-7b-v0.2")


def measured(model: str) -> dict[str, int]:
    """Bytes of the model's buffers (built on the meta device from the catalog's config), by kind."""
    import torch
    import transformers

    from advisor.catalog.models import resolve_model

    config = transformers.AutoConfig.for_model(**json.loads(resolve_model(model).architecture.source_config))
    with torch.device("meta"):
        net = transformers.AutoModelForCausalLM.from_config(config)
    out = {"rotary": 0, "causal_mask": 0, "other": 0}
    for name, b in net.named_buffers():
        n = b.numel() * b.element_size()
        key = "rotary" if ("cos_cached" in name or "sin_cached" in name) else \
            "causal_mask" if name.endswith("causal_mask") else "other"
        out[key] += n
    return out


def counted(model: str, version: str) -> dict[str, int]:
    """dsadvise's bytes for the same buffers at the moment the engine takes the model (fp32 rotary caches)."""
    from advisor.api import build_hardware, build_strategy, build_training
    from advisor.catalog.models import resolve_model
    from advisor.memory.buffers import causal_mask_buffer_bytes, rotary_cache_bytes

    arch = resolve_model(model).architecture
    hw = build_hardware(2, 1, 24, None, None, None, None)
    training = build_training(hw, precision="pure-bf16", method="qlora", transformers_version=version)
    at_wrap, _ = rotary_cache_bytes(arch, training, build_strategy(hw, "fsdp-full"))
    return {"rotary": at_wrap * arch.num_layers, "causal_mask": causal_mask_buffer_bytes(arch, training)}


def main() -> None:
    import transformers

    version = transformers.__version__
    print(f"transformers {version} (from {Path(transformers.__file__).parent})")
    print(f"{'model':<18}{'buffer':<13}{'real MiB':>10}{'dsadvise MiB':>14}")
    bad = 0
    for model in MODELS:
        real, ours = measured(model), counted(model, version)
        for kind in ("rotary", "causal_mask"):
            ok = real[kind] == ours[kind]
            bad += not ok
            print(f"{model:<18}{kind:<13}{real[kind] / 2**20:>10.1f}{ours[kind] / 2**20:>14.1f}{'' if ok else '  DIFF'}")
        print(f"{'':<18}{'(other)':<13}{real['other'] / 2**20:>10.3f}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
