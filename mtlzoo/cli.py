"""The ``mtlzoo`` command.

    mtlzoo list                                   architectures and weightings
    mtlzoo train --model mmoe --data synthetic --weighting uncertainty --epochs 3
    mtlzoo train --recipe imdb-agnews [--data-dir DIR]   sentiment + topic over one BiLSTM
    mtlzoo demo                   the synthetic suite at demo size: every architecture compared
    mtlzoo bench quality --suite synthetic|census [--size demo|full] [--weightings equal,dwa]
    mtlzoo bench speed            every architecture's train step against its loop version
"""

from __future__ import annotations

import argparse
import shlex
import sys

import mtlzoo

DATA = ("synthetic",)
RECIPES = ("imdb-agnews",)
OUT_HELP = (
    "where results go (default ./results; a grid resumes from the rows already there; "
    "--out benchmarks/results updates the committed tables)"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mtlzoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the registered architectures and weightings")

    train = commands.add_parser("train", help="train one architecture and print its metrics")
    train.add_argument("--model", choices=mtlzoo.list_models())
    train.add_argument("--data", default="synthetic", choices=DATA)
    train.add_argument("--recipe", choices=RECIPES, help="a published set-up, end to end")
    train.add_argument("--data-dir", help="the recipe's local files (imdb/ and ag_news/)")
    train.add_argument("--cache-dir", help="the datasets cache for the recipe's data")
    train.add_argument("--weighting", default="equal", choices=mtlzoo.list_weightings())
    train.add_argument("--checkpoint", help="save here after every epoch")
    _training_options(train, epochs=3)

    demo = commands.add_parser(
        "demo", help="the synthetic quality suite at demo size (a few minutes on 2 cores)"
    )
    demo.add_argument("--out", default="results", help="where results go (default ./results)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")

    bench = commands.add_parser("bench", help="benchmark suites; results as CSV and Markdown")
    suites = bench.add_subparsers(dest="bench", required=True)
    quality = suites.add_parser("quality", help="architectures compared on the same data")
    quality.add_argument("--suite", required=True, choices=("synthetic", "census"))
    quality.add_argument("--size", default="full", choices=("demo", "full"))
    quality.add_argument("--rows", type=int, help="synthetic: rows per point (quick looks)")
    quality.add_argument("--epochs", type=int, help="synthetic: epochs (quick looks)")
    quality.add_argument("--seeds", type=int, help="synthetic: seeds (quick looks)")
    quality.add_argument("--census-path", help="census: a folder with the CSV files")
    quality.add_argument(
        "--weightings", default="equal", type=_weightings,
        help="comma-separated loss weightings, each run by every multi-task architecture "
             "(default: equal, the papers' plain sum)",
    )
    quality.add_argument("--out", default="results", help=OUT_HELP)
    quality.add_argument("--quiet", action="store_true")
    speed = suites.add_parser(
        "speed", help="every architecture's train step against its loop version"
    )
    speed.add_argument("--batch-size", type=int, default=1024)
    speed.add_argument("--repeats", type=int, default=20)
    speed.add_argument("--out", default="results", help=OUT_HELP)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    command = "mtlzoo " + shlex.join(argv)

    if args.command == "list":
        print("models:     " + " ".join(mtlzoo.list_models()))
        print("weightings: " + " ".join(mtlzoo.list_weightings()))
        return 0
    if args.command == "demo":
        return _demo(args, command)
    if args.command == "bench":
        return _bench(args, command)
    if args.recipe:
        return _recipe(args)
    if not args.model:
        parser.error("train needs --model (or --recipe)")
    return _train(args)


def _training_options(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--rows", type=int, default=10_000, help="generated rows in all")
    parser.add_argument("--correlation", type=float, default=0.5, help="of the two tasks")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    import torch

    from mtlzoo.data import synthetic_tasks

    data = synthetic_tasks(
        args.rows, args.correlation, seed=args.seed,
        splits={"train": 0.8, "validation": 0.1, "test": 0.1},
    )
    tasks = [mtlzoo.Task("y1", kind="regression"), mtlzoo.Task("y2", kind="regression")]
    print(
        f"Synthetic tasks (MMoE generator, PLE constants): {args.rows} rows, correlation "
        f"{args.correlation}, 512 features; {args.epochs} epochs of Adam (lr {args.lr}, batch "
        f"{args.batch_size}), weighting {args.weighting!r}, seed {args.seed}.",
        file=sys.stderr,
    )
    torch.manual_seed(args.seed)
    model = mtlzoo.create_model(args.model, in_features=512, tasks=tasks)
    trainer = mtlzoo.Trainer(
        model, weighting=args.weighting, lr=args.lr, batch_size=args.batch_size,
        seed=args.seed, progress=not args.quiet,
    )
    trainer.fit(data["train"], eval=data["validation"], epochs=args.epochs,
                checkpoint=args.checkpoint)
    print(trainer.evaluate(data["test"]).to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def _weightings(text: str) -> tuple[str, ...]:
    from mtlzoo.bench.quality import check_weightings

    try:
        return check_weightings(name.strip() for name in text.split(",") if name.strip())
    except mtlzoo.MtlzooError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _demo(args: argparse.Namespace, command: str) -> int:
    from pathlib import Path

    from mtlzoo.bench import quality

    out = Path(args.out)
    summary = quality.synthetic("demo", out=out, progress=not args.quiet, command=command)
    table = summary.pivot(index="model", columns="correlation", values=["y1_mse", "y2_mse"])
    table = table.swaplevel(axis=1).sort_index(axis=1)
    table = table.loc[[m for m in quality.MODELS if m in table.index]]
    print("Test MSE per task (lower is better) by task correlation, mean over seeds:\n")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    report = out / "quality_synthetic_demo.md"
    claims = report.read_text().split("## The papers' claims, checked", 1)[1].split("![")[0]
    print("\nThe papers' claims, checked:" + claims.rstrip())
    figure = report.with_suffix(".png")
    print(f"\nFull tables: {report}" + (f"  figure: {figure}" if figure.exists() else ""))
    print(f"Demo size is {quality.SYNTHETIC_SIZES['demo'].rows:,} rows per point; the full "
          "suites (make bench) and what they measured on our machine: docs/results.md")
    return 0


def _bench(args: argparse.Namespace, command: str) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from mtlzoo.bench import quality, speed
    from mtlzoo.bench.grid import stamp

    out = Path(args.out)
    if args.bench == "quality":
        if args.suite == "synthetic":
            summary = quality.synthetic(args.size, out=out, progress=not args.quiet,
                                        command=command, weightings=args.weightings,
                                        rows=args.rows, epochs=args.epochs, seeds=args.seeds)
        else:
            summary = quality.census(args.size, out=out, path=args.census_path,
                                     progress=not args.quiet, command=command,
                                     weightings=args.weightings)
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"\nWritten under {out}/ (quality_{args.suite}_*.md, .csv)")
        return 0
    models = speed.every_model_grid()
    bar = tqdm(total=len(models), desc="speed", disable=None)

    def advance(line: str) -> None:
        bar.set_postfix_str(line)
        bar.update()

    table = speed.compare_with_loop(models, args.batch_size, args.repeats, progress=advance)
    bar.close()
    columns = ["model", "E", "T", "parameters", "ours_ms", "loop_ms", "speedup",
               "fraction_of_matmul"]

    markdown = "\n".join([
        "# Every architecture: train step vs its loop version (cpu)", "", stamp(command), "",
        f"Batch {args.batch_size}, 128 features, width-64 layers, towers (32,), binary tasks; "
        "E experts per level for the gated families. `fraction_of_matmul`: our FLOP/s over a "
        f"2048x2048 fp32 matmul's ({table.matmul_gflops.iloc[0]:.0f} GFLOP/s, same run).",
        "", speed.markdown_table(table[columns]), "",
    ])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench_speed_cpu.csv", index=False)
    (out / "bench_speed_cpu.md").write_text(markdown)
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nWritten to {out / 'bench_speed_cpu.md'}")
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from mtlzoo.recipes import imdb_agnews

    where = args.data_dir or "the Hugging Face hub"
    print(f"IMDb sentiment + AG News topic over one Embedding + BiLSTM, data from {where}; "
          f"{args.epochs} epochs, batch {args.batch_size}.", file=sys.stderr)
    _, table = imdb_agnews(
        args.data_dir, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weighting=args.weighting, seed=args.seed, cache_dir=args.cache_dir,
        progress=not args.quiet,
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\nsentiment accuracy {table.loc['sentiment', 'accuracy']:.4f}, "
          f"topic accuracy {table.loc['topic', 'accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
