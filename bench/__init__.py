"""Benchmarks of oliai-bridge: ``python -m bench.run [--quick]`` (see bench/README.md)."""
