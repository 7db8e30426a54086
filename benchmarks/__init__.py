"""The benchmark scripts, each run as `python -m benchmarks.NAME` from the repository root
(benchmarks/README.md lists them and the figures they measured)."""
