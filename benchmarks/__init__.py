"""dsadvise's benchmarks: the measurement harness (``benchmarks.harness``) and standalone scripts.

Not shipped in the wheel (``pyproject.toml``: wheel packages = ``["advisor"]``). See ``benchmarks/README.md``.
"""
