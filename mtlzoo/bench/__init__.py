"""Benchmarks. ``quality``: the architectures compared on the same data (synthetic tasks,
Census-Income) beside the papers' numbers; ``speed``: train steps against their loop
versions and a matmul's FLOP/s; ``grid``: the resumable experiment grid both write with."""
