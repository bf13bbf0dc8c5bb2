"""Benchmarks and reliability runs, each a module (`python -m bench.soak`, `make bench`).
Imports the apps and `tests.support`, never test modules."""
