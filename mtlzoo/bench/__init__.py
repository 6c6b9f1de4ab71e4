"""Benchmarks: ``mtlzoo.bench.speed`` times models against their loop versions."""
