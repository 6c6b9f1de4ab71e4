"""The ``mtlzoo`` command.

    mtlzoo list                                   architectures and weightings
    mtlzoo train --model mmoe --data synthetic --weighting uncertainty --epochs 3
    mtlzoo train --recipe imdb-agnews [--data-dir DIR]   sentiment + topic over one BiLSTM
    mtlzoo demo                                   every architecture, trained briefly, compared
    mtlzoo speed                                  train-step time against the loop versions
"""

from __future__ import annotations

import argparse
import sys
import time

import mtlzoo

DATA = ("synthetic",)
RECIPES = ("imdb-agnews",)


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
        "demo", help="train every architecture briefly on generated data and compare them"
    )
    demo.add_argument("--weighting", default="equal", choices=mtlzoo.list_weightings())
    _training_options(demo, epochs=3)

    speed = commands.add_parser(
        "speed", help="time every architecture's train step against its loop version"
    )
    speed.add_argument("--batch-size", type=int, default=1024)
    speed.add_argument("--in-features", type=int, default=128)
    speed.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    if args.command == "list":
        print("models:     " + " ".join(mtlzoo.list_models()))
        print("weightings: " + " ".join(mtlzoo.list_weightings()))
        return 0
    if args.command == "speed":
        return _speed(args)
    if args.command == "train" and args.recipe:
        return _recipe(args)
    if args.command == "train" and not args.model:
        parser.error("train needs --model (or --recipe)")
    names = [args.model] if args.command == "train" else mtlzoo.list_models()
    return _train(args, names)


def _training_options(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--rows", type=int, default=10_000, help="generated rows in all")
    parser.add_argument("--correlation", type=float, default=0.5, help="of the two tasks")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace, names: list[str]) -> int:
    import pandas as pd
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
    rows = []
    for name in names:
        torch.manual_seed(args.seed)
        model = mtlzoo.create_model(name, in_features=512, tasks=tasks)
        trainer = mtlzoo.Trainer(
            model, weighting=args.weighting, lr=args.lr, batch_size=args.batch_size,
            seed=args.seed, progress=not args.quiet,
        )
        start = time.perf_counter()
        trainer.fit(
            data["train"], eval=data["validation"], epochs=args.epochs,
            checkpoint=getattr(args, "checkpoint", None),
        )
        seconds = time.perf_counter() - start
        test = trainer.evaluate(data["test"])
        row = {"model": name, "parameters": sum(p.numel() for p in model.parameters())}
        for task in test.index:
            row.update({f"{task} mse": test.loc[task, "mse"], f"{task} r2": test.loc[task, "r2"]})
        rows.append({**row, "train_s": seconds})
        if len(names) == 1:
            print(test.to_string(float_format=lambda v: f"{v:.4f}"))
    if len(names) > 1:
        table = pd.DataFrame(rows)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print("\nTest-split metrics after training; mse is lower-better, r2 higher-better.")
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


def _speed(args: argparse.Namespace) -> int:
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
