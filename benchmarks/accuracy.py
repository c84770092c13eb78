"""Entry point of the accuracy harness: ``python -m benchmarks.accuracy --help`` (``benchmarks/README.md``)."""

from benchmarks.harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
