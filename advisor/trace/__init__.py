"""Traced estimates: any causal LM transformers can build, measured on fake tensors (see ``tracer``).

Importing this package is light (pydantic only); :func:`trace_model` imports torch and transformers.
"""

from __future__ import annotations

from advisor.trace.result import TraceEvent, TracedParameters, TraceResult, TraceSettings


def trace_model(cfg: dict, settings: TraceSettings, **kwargs) -> TraceResult:
    """Trace the HF config ``cfg`` (bytes and element counts; :func:`advisor.trace.tracer.trace_model`)."""
    from advisor.trace.tracer import trace_model as _trace

    return _trace(cfg, settings, **kwargs)


__all__ = ["TraceEvent", "TraceResult", "TraceSettings", "TracedParameters", "trace_model"]
