"""The benchmark harness: aioconductor and its Python peers, side by side, in one run.

Run ``python -m benchmarks --help``; ``benchmarks/README.md`` describes the workloads.
"""
