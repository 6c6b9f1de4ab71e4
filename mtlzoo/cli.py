"""The ``mtlzoo`` command: ``mtlzoo list`` and ``mtlzoo demo``."""

from __future__ import annotations

import argparse
import sys

import mtlzoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlzoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the registered architectures")
    demo = commands.add_parser(
        "demo", help="time every architecture's train step against its loop version"
    )
    demo.add_argument("--batch-size", type=int, default=1024)
    demo.add_argument("--in-features", type=int, default=128)
    demo.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(mtlzoo.list_models()))
        return 0

    from mtlzoo.bench import speed  # pandas and the timing code load only when needed

    print(f"mtlzoo {mtlzoo.__version__} | {speed.machine_stamp()}")
    print(
        f"Train step (forward + backward) at batch {args.batch_size}, {args.in_features} "
        "features, tasks: click (binary), topic (4 classes), dwell (regression); "
        "default options.\n'loop' is the same model with every batched kernel replaced by a "
        "Python loop over nn.ModuleList (mtlzoo.reference).\n"
    )
    table = speed.compare_with_loop(
        speed.registered_models(args.in_features), args.batch_size, args.repeats,
    )
    columns = ["model", "parameters", "ours_ms", "loop_ms", "speedup", "fraction_of_matmul"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(
        f"\nfraction_of_matmul: our FLOP/s over a 2048x2048 fp32 matmul's "
        f"({table['matmul_gflops'].iloc[0]:.0f} GFLOP/s here, measured in this run)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
