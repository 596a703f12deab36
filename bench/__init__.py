"""Benchmarks of domu-snapshot, run in the VM test bed: `python -m bench` (see bench/__main__.py)."""
