"""A tiny Hugging Face config shaped like the target model, for ``dsadvise dry-run``.

Same ``model_type`` and the same structural switches (tied embeddings, GQA/MQA, biases, parallel residual,
experts, ALiBi, OPT's projection), but 2 layers, hidden 64, vocabulary 256: it builds with
``AutoModelForCausalLM.from_config`` in well under a second and trains on a CPU. Each family's proxy is in its
module (``FAMILY.proxy``, advisor/families); a model_type without one gets a Llama of the same shape. Pure data:
no transformers here.
"""

from __future__ import annotations

from ..architecture import Architecture
from ..families import family, has_family
from ..families.base import llama_proxy

SEQ_LEN = 32          # tokens per sample in the proxy run


def proxy_hf_config(arch: Architecture) -> dict:
    """``AutoConfig.for_model(**result)`` keys for a 2-layer model of ``arch``'s family and structure."""
    if has_family(arch.family):
        return family(arch.family).proxy(arch)
    return llama_proxy(arch, "llama")
