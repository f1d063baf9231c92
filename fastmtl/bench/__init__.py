"""Benchmarks and offline experiments: ``python -m fastmtl.bench {demo,speed,toy,sweep}``."""
