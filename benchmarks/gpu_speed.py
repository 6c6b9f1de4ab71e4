"""MMoE and PLE train steps on a CUDA GPU: fp32, bf16, compiled bf16, the loop version.

    python benchmarks/gpu_speed.py                          # writes results/gpu_speed.*
    python benchmarks/gpu_speed.py --out benchmarks/results # the committed table

E in {8, 64, 256}, B in {1024, 16384}, 512 features, expert width 256, T = 8 binary tasks,
towers (64,), PLE 2 levels; step times, peak memory, TFLOP/s as a fraction of a bf16
8192^3 matmul timed in the same run; about 5 minutes. Without CUDA it says what is
missing and exits 2. The code: ``mtlzoo.bench.gpu_speed``.
"""

from __future__ import annotations

import sys

from mtlzoo.bench.gpu_speed import main

if __name__ == "__main__":
    sys.exit(main())
