"""dsadvise: memory estimates, recommendations and rendered configs for accelerate and DeepSpeed training.

Public API (all sizes in bytes)::

    from advisor import estimate
    est = estimate("llama-2-7b", gpus=4, vram=24, strategy="zero3", checkpointing="full")
    est.per_gpu.total, est.fits
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["estimate", "InputError", "AdvisorError", "__version__"]

from .errors import AdvisorError, InputError


def __getattr__(name: str):
    # Lazy so that `import advisor` (and `dsadvise --help`) stays cheap.
    if name == "estimate":
        from .api import estimate

        return estimate
    raise AttributeError(f"module 'advisor' has no attribute {name!r}")
