"""Sparse top-k gates against dense softmax gates: MMoE's train step, E in (8, 16, 64, 256).

    python benchmarks/topk_speed.py                          # writes results/topk_speed.*
    python benchmarks/topk_speed.py --out benchmarks/results # refreshes the committed tables

CPU fp32, 1 and 2 threads, B=512, 128 features, experts of one layer of width 256 (they
dominate the step), T=2 tasks, k=2. In each of ``--processes`` fresh processes the dense
step (``gate="softmax"``) and the top-k step (``gate="topk"``: only the chosen (row,
expert) pairs run) are timed interleaved, forward and backward, at each thread count (on a
loaded 2-core machine, 2 threads can be slower than 1); the table holds the median over
processes, the FLOPs of each step and the load average. The code: ``mtlzoo.bench.topk_speed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import topk_speed
from mtlzoo.bench.report import RESULTS, script_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per process")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up rounds per process")
    parser.add_argument("--threads", type=int, nargs="+", default=list(topk_speed.THREADS),
                        help="torch thread counts, each measured in every process")
    parser.add_argument("--experts", type=int, nargs="+", default=list(topk_speed.EXPERTS))
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    result = topk_speed.benchmark(args.out, args.processes, args.repeats, args.warmup,
                                  args.experts, threads=args.threads,
                                  command=script_command(argv))
    print(result.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
