"""Benchmarks of dspn_tf (not tests): `python -m benchmarks.<name>` from the repository root.

Results and how they were measured are in benchmarks/README.md.
"""
