"""MMoE and PLE train steps against their loop versions, and FLOP/s against a matmul.

    python benchmarks/speed.py                 # CPU, writes results/speed_cpu.*
    python benchmarks/speed.py --device cuda   # GPU, writes results/speed_cuda.*
    python benchmarks/speed.py --out benchmarks/results   # refreshes the committed tables

Grid: batch 1024 (``--batch-size``), 128 features, expert width 64, towers (32,),
E in {8, 64}, T in {2, 8}.
Targets on the 2-core CPU: MMoE at least 3x the loop at E=64, T=8 and 1.3x at E=8, T=2;
the exit status is 1 when one is missed.

Each of ``--processes`` fresh processes times the whole grid (ours and loop interleaved, the
matmul yardstick before and after); the table holds the median over processes and the
range of the speed-up. The code is ``mtlzoo.bench.speed.expert_grid_in_processes``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import speed
from mtlzoo.bench.report import RESULTS, script_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=1024,
        help="1 shows the fixed per-step cost, where Python overhead dominates",
    )
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    result = speed.expert_grid_in_processes(
        args.out, args.device, args.repeats, args.processes, args.batch_size,
        command=script_command(argv),
    )
    print(result.markdown)
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
