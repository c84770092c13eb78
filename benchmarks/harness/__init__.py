"""The measurement harness: CPU ground truth for dsadvise's memory estimates, cached and reported.

Modules, by what they hold:

``semantics``  the :func:`~benchmarks.harness.semantics.cuda_semantics` patches every measurement runs under
``models``     real ``transformers`` models built from config dicts (layers, LoRA/freeze stand-ins)
``profiling``  reading the CPU allocator (marker allocations, the profiler's live-byte curve, live storage)
``launch``     running a kind's worker in 2 processes under torchrun (gloo)
``kinds/``     one module per measurement kind (saved, transient, step, ddp, zero): measure + compare
``cases``      loading the committed case lists ``benchmarks/cases/<kind>.yaml`` (calibration / held-out)
``cache``      the result cache ``benchmarks/results/<kind>.json`` and its key
``estimates``  dsadvise's side of each comparison (estimator inputs built from a case)
``tables``     the summaries, the text table and the ``docs/accuracy.md`` writer
``cli``        the one command, ``python -m benchmarks.accuracy``

This package is never imported by ``advisor`` and is not shipped in the wheel.
"""
