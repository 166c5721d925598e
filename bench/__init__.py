"""Benchmarks of oliai-bridge: ``python bench/run.py [--quick]`` (see bench/README.md)."""
