"""MMoE and PLE train step FLOP/s as a share of a same-run matmul's, and where a step's time goes.

    python benchmarks/efficiency.py                          # writes results/efficiency.*
    python benchmarks/efficiency.py --out benchmarks/results # refreshes the committed tables

Issue 15's CPU target: fp32, 2 threads, B=4096, d=512, expert width 256, E=64, T=8 binary
tasks, towers (64,), PLE 2 levels with E // (2T) experts per task; one train step (forward,
backward, fused Adam) of MMoE and of PLE each at least 0.85 of the FLOP/s of a 4096x512 @
512x4096 fp32 matmul timed after every step in the same process (FLOPs: FlopCounterMode of
one forward + backward), the median over ``--processes`` fresh processes. Exits 1 when a
model misses it. The report adds a per-op breakdown (torch.profiler, self CPU time) of one
step of each. The code: ``mtlzoo.bench.efficiency``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import efficiency
from mtlzoo.bench.report import RESULTS, script_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (target: 2)")
    parser.add_argument("--top", type=int, default=12, help="ops per model in the breakdown")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    result = efficiency.benchmark(args.out, args.processes, args.repeats,
                                  threads=args.threads, top=args.top,
                                  command=script_command(argv))
    print(result.markdown)
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
