"""The ``mtlzoo`` command (also ``python -m mtlzoo``).

    mtlzoo list                                   architectures and weightings
    mtlzoo train --model mmoe --data synthetic --weighting uncertainty --epochs 3
    mtlzoo train --model mmoe --checkpoint run.pt  resumes from run.pt when it exists
    mtlzoo train --model mmoe --option gate=topk --option top_k=2   any builder argument
    mtlzoo train --recipe imdb-agnews [--data-dir DIR]   sentiment + topic over one BiLSTM
    mtlzoo train --recipe text-pair --task sentiment=DIR --task topic=DIR   any two corpora
    mtlzoo train --recipe imdb-agnews --compare-single-task --seeds 3   does sharing help?
    mtlzoo demo                   the synthetic suite at demo size: every architecture compared
    mtlzoo bench quality --suite synthetic|census [--size demo|full] [--weightings equal,dwa]
    mtlzoo bench quality --suite census --peers   the peers' MMoE, PLE, shared-bottom beside ours
    mtlzoo bench quality --suite synthetic --size demo --check-budget 4   demo budget vs 4x
    mtlzoo bench speed            every architecture's train step against its loop version
    mtlzoo bench speed --peers    our MMoE and PLE against torch-rechub's and DeepCTR-Torch's

``--checkpoint PATH`` saves after every epoch; when PATH exists the run resumes from it (and
only evaluates when it already holds --epochs epochs). A file that is not a checkpoint of
this model, tasks and weighting stops the run, unless ``--force``: then it starts afresh and
overwrites the file.

Bad input, a missing or unreadable file and Ctrl-C end with one line on stderr
(``mtlzoo: error: ...``, ``mtlzoo: interrupted``) and a non-zero exit status (1; 2 for a bad
option; 130 for Ctrl-C). ``--debug``, given before the command (``mtlzoo --debug train
...``), lets the exception propagate, with its traceback.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import mtlzoo
from mtlzoo.bench.report import RESULTS
from mtlzoo.data.batches import BATCHING
from mtlzoo.encoders.text import POOLINGS
from mtlzoo.errors import DataLoadError
from mtlzoo.memory import keep_freed_memory
from mtlzoo.train.options import PRECISIONS, STRATEGIES

DATA = ("synthetic",)
RECIPES = ("text-pair", "imdb-agnews")
OUT_HELP = (
    "where results go (default ./results; a grid resumes from the rows already there; "
    "--out benchmarks/results updates the committed tables)"
)
OUT = str(RESULTS)


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.debug:
        return _run(parser, args, argv)
    try:
        return _run(parser, args, argv)
    except KeyboardInterrupt:
        print("mtlzoo: interrupted", file=sys.stderr)
        return 130
    except (mtlzoo.MtlzooError, OSError) as error:
        print("mtlzoo: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlzoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--debug", action="store_true",
        help="before the command: show the traceback of an error instead of one line",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the registered architectures and weightings")

    train = commands.add_parser("train", help="train one architecture and print its metrics")
    train.add_argument("--model", choices=mtlzoo.list_models())
    train.add_argument(
        "--option", action="append", metavar="NAME=VALUE",
        help="an argument of the model's builder, e.g. norm=batch, gate=topk, top_k=2, "
             "num_experts=16, expert_dims=64,64 (VALUE read as a Python literal, else as "
             "text); repeat for each",
    )
    train.add_argument("--data", choices=DATA, help="default synthetic")
    train.add_argument("--recipe", choices=RECIPES, help="a published set-up, end to end")
    train.add_argument(
        "--task", action="append", metavar="NAME=SOURCE",
        help="text-pair: a task and its data, a folder of train/test files, one .parquet or "
             ".csv file, or a hub id; repeat for each task (default sentiment=imdb "
             "topic=ag_news)",
    )
    train.add_argument("--data-dir",
                       help="recipe: a folder holding imdb/ and ag_news/ (local files)")
    train.add_argument("--cache-dir", help="the datasets cache for the recipe's data")
    train.add_argument("--max-vocab", type=_positive_int, help="recipe: words kept")
    train.add_argument("--max-length", type=_positive_int, help="recipe: tokens kept a text")
    train.add_argument("--embedding-dim", type=_positive_int, help="recipe: word vectors' width")
    train.add_argument("--hidden-size", type=_positive_int, help="recipe: the BiLSTM's width")
    train.add_argument("--pooling", choices=POOLINGS,
                       help="recipe: how the encoder pools the sequence")
    train.add_argument("--batching", choices=BATCHING,
                       help="recipe: by_length batches texts of similar length together")
    train.add_argument("--steps", type=_positive_int,
                       help="recipe: train this many steps instead of --epochs")
    train.add_argument(
        "--compare-single-task", action="store_true", default=None,
        help="recipe: train it and its single-task baseline (the same layers, nothing "
             "shared) on --seeds seeds; a table of each task's accuracy, mean and spread",
    )
    train.add_argument("--seeds", type=_positive_int,
                       help="recipe, with --compare-single-task: how many seeds (default 3), "
                            "from --seed on")
    train.add_argument("--out", help="recipe, with --compare-single-task: also write the "
                                     "table under this folder (text_pair_compare.md, .csv)")
    train.add_argument("--weighting", default="equal", choices=mtlzoo.list_weightings())
    train.add_argument(
        "--checkpoint", help="save here after every epoch; resume from it when it exists"
    )
    train.add_argument(
        "--force", action="store_true",
        help="start afresh and overwrite a --checkpoint file that cannot be resumed from",
    )
    _training_options(train, epochs=3)
    train.add_argument("--strategy", choices=STRATEGIES,
                       help="auto (default): DDP under torchrun, one process otherwise; fsdp "
                            "shards parameters, gradients and optimizer state over the ranks")
    train.add_argument("--precision", choices=tuple(PRECISIONS),
                       help="fp32 (default), or bf16 autocast with fp32 weights and losses")
    train.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the model (inductor; the first steps compile)")
    train.add_argument(
        "--threads", type=_positive_int,
        help="torch's CPU threads (default torch's: one a core); 1 is often faster on a "
             "machine busy with other work, and for each rank under torchrun",
    )
    train.add_argument(
        "--keep-freed-memory", action="store_true",
        help="keep freed CPU memory for reuse (glibc): large batches stop faulting in fresh "
             "pages every step, the process keeps its peak memory (mtlzoo.memory)",
    )
    train.add_argument(
        "--diagnostics-every", type=_positive_int, metavar="N",
        help="log gate entropy, expert load, gradient cosines and loss ratios every N steps "
             "(Trainer(diagnostics_every=N); docs/training.md, Diagnostics)",
    )
    train.add_argument("--diagnostics-plot", metavar="PATH",
                       help="with --diagnostics-every: draw the expert load per task at the "
                            "last logged step to PATH (a .png; needs matplotlib)")

    demo = commands.add_parser(
        "demo", help="the synthetic quality suite at demo size (a few minutes on 2 cores)"
    )
    demo.add_argument("--out", default=OUT, help="where results go (default ./results)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")

    bench = commands.add_parser("bench", help="benchmark suites; results as CSV and Markdown")
    suites = bench.add_subparsers(dest="bench", required=True)
    quality = suites.add_parser("quality", help="architectures compared on the same data")
    quality.add_argument("--suite", required=True, choices=("synthetic", "census"))
    quality.add_argument("--size", default="full", choices=("demo", "full"))
    quality.add_argument("--rows", type=_positive_int,
                         help="synthetic: rows per point (quick looks)")
    quality.add_argument("--epochs", type=_positive_int, help="synthetic: epochs (quick looks)")
    quality.add_argument("--seeds", type=_positive_int,
                         help="seeds 0..N-1 (synthetic: quick looks; census: instead of the "
                              "size's count)")
    quality.add_argument("--workers", type=_positive_int,
                         help="synthetic: grid points trained at once, one process each "
                              "(default: the size's; demo 2)")
    quality.add_argument(
        "--check-budget", type=_positive_int, metavar="FACTOR",
        help="synthetic: the learning-curve check, the size's budget against FACTOR times "
             "its steps, each model's test MSE at both",
    )
    quality.add_argument("--census-path", help="census: a folder with the CSV files")
    quality.add_argument(
        "--peers", nargs="?", const="torch-rechub,deepctr-torch", metavar="NAMES",
        help="census: also torch-rechub's and DeepCTR-Torch's MMoE, PLE and shared-bottom, "
             "same data, budget and evaluation (needs pip install 'mtlzoo[peers]'); "
             "NAMES (comma-separated) runs only those peers",
    )
    quality.add_argument(
        "--models", metavar="NAMES",
        help="census: comma-separated architectures of the suite to run (default all; the "
             "peers run the families among them)",
    )
    quality.add_argument(
        "--norm", choices=("batch", "layer"),
        help="census: build our models with norm= this (batch or layer normalisation in "
             "every MLP layer); the tables are quality_census_norm_<norm>_<size>*",
    )
    quality.add_argument(
        "--gate-norm", choices=("batch", "layer"),
        help="census: build the softmax-gated models (mmoe, omoe, cgc, ple) with gate_norm= "
             "this (their gates' logits normalised before the softmax, as torch-rechub's); "
             "the tables' names hold gate_norm_<gate-norm>",
    )
    quality.add_argument(
        "--weightings", default="equal", type=_weightings,
        help="comma-separated loss weightings, each run by every multi-task architecture "
             "(default: equal, the papers' plain sum)",
    )
    quality.add_argument("--out", default=OUT, help=OUT_HELP)
    quality.add_argument("--quiet", action="store_true")
    speed = suites.add_parser(
        "speed", help="every architecture's train step against its loop version"
    )
    speed.add_argument("--batch-size", type=_positive_int,
                       help="default 1024; with --peers, 64 and 1024")
    speed.add_argument("--repeats", type=_positive_int, default=20)
    speed.add_argument("--threads", type=_positive_int,
                       help="torch threads, the same for every side (default: torch's)")
    speed.add_argument(
        "--peers", action="store_true",
        help="our MMoE and PLE against torch-rechub's and DeepCTR-Torch's (needs "
             "pip install 'mtlzoo[peers]')",
    )
    speed.add_argument("--out", default=OUT, help=OUT_HELP)
    return parser


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    command = "mtlzoo " + shlex.join(argv)
    if args.command == "list":
        print("models:     " + " ".join(mtlzoo.list_models()))
        print("weightings: " + " ".join(mtlzoo.list_weightings()))
        return 0
    if args.command == "demo":
        return _demo(args, command)
    if args.command == "bench":
        return _bench(args, command)
    _check_train_options(parser, args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not keep_freed_memory():
        print("--keep-freed-memory: the C library is not glibc; nothing changed",
              file=sys.stderr)
    if args.recipe:
        return _recipe(args, command)
    if not args.model:
        parser.error("train needs --model (or --recipe)")
    return _train(args)


def _training_options(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--epochs", type=_positive_int,
                        help=f"in all, counting those of a resumed --checkpoint (default "
                             f"{epochs}; a recipe's own default with --recipe)")
    parser.add_argument("--rows", type=_positive_int, help="generated rows in all (10000)")
    parser.add_argument("--correlation", type=_probability,
                        help="of the two tasks, in [0, 1] (0.5)")
    parser.add_argument("--batch-size", type=_positive_int,
                        help="default 128; a recipe's own default with --recipe")
    parser.add_argument("--lr", type=_positive_float, help="default 1e-3, or the recipe's")
    parser.add_argument("--seed", type=_non_negative_int, help="default 0, or the recipe's")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# the options only one kind of train run reads: the other refuses them, rather than
# accepting and ignoring them; synthetic runs take their defaults from here, a recipe from
# its function's signature (mtlzoo.recipes), the one source for the CLI, the API and docs
SYNTHETIC_OPTIONS = {"model": None, "option": None, "data": "synthetic", "checkpoint": None,
                     "force": False, "rows": 10_000, "correlation": 0.5, "epochs": 3,
                     "batch_size": 128, "lr": 1e-3, "seed": 0, "strategy": "auto",
                     "precision": "fp32", "compile": False, "diagnostics_every": None,
                     "diagnostics_plot": None}
RECIPE_OPTIONS = ("task", "data_dir", "cache_dir", "max_vocab", "max_length", "embedding_dim",
                  "hidden_size", "pooling", "batching", "steps", "compare_single_task", "seeds",
                  "out")
RECIPE_SIZES = ("max_vocab", "max_length", "embedding_dim", "hidden_size", "pooling",
                "batching", "steps")
SHARED_OPTIONS = ("epochs", "batch_size", "lr", "seed")


def _check_train_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the options this kind of run does not read; fill in the synthetic defaults."""
    if args.recipe:
        unused = [name for name in SYNTHETIC_OPTIONS if name not in SHARED_OPTIONS
                  and getattr(args, name) not in (None, False)]
    else:
        unused = [name for name in RECIPE_OPTIONS if getattr(args, name) is not None]
        for name, default in SYNTHETIC_OPTIONS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    if unused:
        kind = f"--recipe {args.recipe}" if args.recipe else "a synthetic run (no --recipe)"
        listed = ", ".join("--" + name.replace("_", "-") for name in unused)
        parser.error(f"{kind} does not use {listed}")
    if args.diagnostics_plot and not args.diagnostics_every:
        parser.error("--diagnostics-plot draws what --diagnostics-every logs: give both")


def _checked(convert, accept, what: str):
    """An argparse ``type=``: ``convert`` the text, keep it if ``accept``-ed, else an error
    that argparse prints after the option's name."""

    def check(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return check


_positive_int = _checked(int, lambda value: value >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda value: value >= 0, "a non-negative integer")
_positive_float = _checked(
    float, lambda value: math.isfinite(value) and value > 0, "a positive finite number"
)
_probability = _checked(float, lambda value: 0 <= value <= 1, "a number in [0, 1]")


def _train(args: argparse.Namespace) -> int:
    """A synthetic run; under torchrun every rank trains (DDP) and rank 0 alone prints."""
    import torch.distributed as dist

    from mtlzoo.data import synthetic_tasks
    from mtlzoo.train import distributed

    started = not dist.is_initialized() and distributed.init()
    try:
        say = print if not dist.is_initialized() or dist.get_rank() == 0 else _silent
        data = synthetic_tasks(
            args.rows, args.correlation, seed=args.seed,
            splits={"train": 0.8, "validation": 0.1, "test": 0.1},
        )
        engine = "FSDP2" if args.strategy == "fsdp" else "DDP"
        ranks = (f", {dist.get_world_size()} ranks ({engine})"
                 if dist.is_initialized() and args.strategy != "none" else "")
        options = _model_options(args.option or ())
        extras = "".join([", bf16 autocast" if args.precision == "bf16" else "",
                          ", compiled" if args.compile else ""])
        listed = ", ".join(f"{name}={value!r}" for name, value in options.items())
        say(
            f"Synthetic tasks (MMoE generator, PLE constants): {args.rows} rows, correlation "
            f"{args.correlation}, 512 features; {args.model}{f' ({listed})' if listed else ''}, "
            f"{args.epochs} epochs of Adam (lr {args.lr}, "
            f"batch {args.batch_size}{' a rank' if ranks else ''}), weighting "
            f"{args.weighting!r}, seed {args.seed}{ranks}{extras}.",
            file=sys.stderr,
        )
        trainer = _trainer(args, options)
        if args.checkpoint and Path(args.checkpoint).exists():
            trainer = _resume(trainer, args, say)
        if trainer.epoch >= args.epochs:
            say(f"{args.checkpoint} already holds {trainer.epoch} epoch(s), --epochs is "
                f"{args.epochs}: evaluating only.", file=sys.stderr)
        else:
            trainer.fit(data["train"], eval=data["validation"], epochs=args.epochs,
                        checkpoint=args.checkpoint)
        say(_metrics_table(trainer.evaluate(data["test"])))
        if args.diagnostics_plot:
            _plot_expert_load(trainer, args.diagnostics_plot, say)
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def _silent(*args, **kwargs) -> None:
    """``print`` on the ranks other than 0."""


def _trainer(args: argparse.Namespace, options: dict) -> mtlzoo.Trainer:
    import torch

    torch.manual_seed(args.seed)
    tasks = [mtlzoo.Task("y1", kind="regression"), mtlzoo.Task("y2", kind="regression")]
    model = mtlzoo.create_model(args.model, in_features=512, tasks=tasks, **options)
    return mtlzoo.Trainer(
        model, weighting=args.weighting, lr=args.lr, batch_size=args.batch_size,
        seed=args.seed, progress=not args.quiet, strategy=args.strategy,
        precision=args.precision, compile=args.compile,
        diagnostics_every=args.diagnostics_every,
    )


def _pairs(specs: Sequence[str], option: str, value: str) -> dict[str, str]:
    """``--option NAME=VALUE`` given once or more, as {NAME: VALUE} (texts); an error names
    a spec without both sides and a NAME given twice."""
    pairs = {}
    for spec in specs:
        name, equals, text = spec.partition("=")
        if not equals or not name or not text:
            raise mtlzoo.MtlzooError(f"{option} takes NAME={value}, got {spec!r}")
        if name in pairs:
            raise mtlzoo.MtlzooError(f"{option} {name} is given twice")
        pairs[name] = text
    return pairs


def _model_options(specs: Sequence[str]) -> dict:
    """--option NAME=VALUE, each VALUE a Python literal (``2``, ``None``, ``64,64``) or else
    the text itself (``batch``); the builder checks names and values (create_model)."""
    options = {}
    for name, text in _pairs(specs, "--option", "VALUE").items():
        if not name.isidentifier():
            raise mtlzoo.MtlzooError(f"--option takes NAME=VALUE, got {f'{name}={text}'!r}")
        if name in ("in_features", "tasks", "encoder"):
            raise mtlzoo.MtlzooError(f"--option {name}: the synthetic data sets it")
        try:
            options[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[name] = text
    return options


def _plot_expert_load(trainer: mtlzoo.Trainer, path: str, say=print) -> None:
    """--diagnostics-plot: the expert load per task at the last logged step."""
    from mtlzoo.bench.figures import expert_load_figure

    drawn = expert_load_figure(trainer.diagnostics, Path(path))
    say(f"expert load per task: {drawn}" if drawn else
        "--diagnostics-plot: matplotlib is not installed, no figure drawn", file=sys.stderr)


def _resume(trainer: mtlzoo.Trainer, args: argparse.Namespace, say=print) -> mtlzoo.Trainer:
    """The trainer loaded from the existing --checkpoint; with --force, when that fails, the
    trainer as it was (a load that fails changes nothing). ``say``: print (rank 0's)."""
    try:
        trainer.load(args.checkpoint)
    except mtlzoo.MtlzooError as error:
        if not args.force:
            raise mtlzoo.MtlzooError(
                f"{error}; pass --force to start afresh and overwrite {args.checkpoint}, or "
                "choose another --checkpoint path"
            ) from error
        say(f"mtlzoo: {' '.join(str(error).split())}; --force: starting afresh, "
            f"{args.checkpoint} will be overwritten.", file=sys.stderr)
        return trainer
    say(f"Resuming from {args.checkpoint}: epoch {trainer.epoch}, step {trainer.step}.",
        file=sys.stderr)
    return trainer


def _comparison(summary, first_seed: int, seeds: int) -> str:
    """The multi-task vs single-task table, with the setting it measures."""
    return (f"Test accuracy over {seeds} seed(s) ({first_seed}..{first_seed + seeds - 1}): "
            "multi-task (one shared Embedding + BiLSTM and hidden layer, each task's batches "
            "training it and its own head) against single-task (the same layers, each task "
            "its own copy: nothing shared); std over seeds (blank with one seed); difference "
            "= multi - single.\n\n" + _metrics_table(summary))


def _write_comparison(comparison, setting: str, text: str, out: Path, command: str) -> Path:
    """The comparison as a results file (``text_pair_compare.md``, ``.csv``, ``_runs.csv``)
    stamped with the command, its setting and data."""
    from mtlzoo.bench.report import markdown_report, stamp, write_result

    table = comparison.summary.reset_index()
    heading, _, _ = text.partition("\n\n")
    about = [f"Setting: {setting}", f"Data:\n\n```\n{comparison.data}\n```", heading]
    markdown = markdown_report("Text: multi-task vs single-task", stamp(command), about, table,
                               digits=4)
    return write_result(out / "text_pair_compare", table, markdown, comparison.runs)


def _metrics_table(table) -> str:
    """Per-task metrics as a table, a metric that does not apply to a task's kind (AUC of a
    multiclass task, macro-F1 of a binary one) left blank rather than shown as NaN."""
    return table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="")


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, blanks dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _weightings(text: str) -> tuple[str, ...]:
    from mtlzoo.bench.suite import check_weightings

    try:
        return check_weightings(name.strip() for name in text.split(",") if name.strip())
    except mtlzoo.MtlzooError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _demo(args: argparse.Namespace, command: str) -> int:
    from mtlzoo.bench import claims, speed, synthetic

    size = synthetic.SYNTHETIC_SIZES["demo"]
    print(f"Training {len(synthetic.MODELS)} architectures on the synthetic tasks at "
          f"{len(synthetic.CORRELATIONS)} task correlations x {size.seeds} seeds: "
          f"{size.describe()}. Progress below.", file=sys.stderr,
          flush=True)
    result = synthetic.run_suite("demo", out=Path(args.out), progress=not args.quiet,
                                 command=command)
    table = result.summary.pivot(index="model", columns="correlation", values="rel")
    table = table.loc[[m for m in synthetic.MODELS if m in table.index]]
    print("Test MSE relative to single-task's on the same seed (below 1: sharing helps), "
          "geometric mean over seeds, by task correlation:\n")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print("\nThe papers' claims, checked:")
    print("\n".join(f"* {claim}" for claim in result.claims))
    if any("does NOT hold" in claim for claim in result.claims):
        print(claims.why_not(result.summary, size.rows, size.dim))
    figure = f"  figure: {result.figure}" if result.figure else ""
    print(f"\nFull tables: {result.report}{figure}")
    print("How far each model is from trained out at the demo's budget (its test MSE at 4x "
          "the steps): mtlzoo bench quality --suite synthetic --size demo --check-budget 4. "
          "The full suites (make bench) and what they measured: docs/results.md")
    print(speed.headline())
    return 0


def _bench(args: argparse.Namespace, command: str) -> int:
    out = Path(args.out)
    if args.bench == "quality":
        if args.suite == "synthetic":
            if args.peers:
                raise mtlzoo.MtlzooError("--peers is for --suite census (the peers' speed: "
                                         "mtlzoo bench speed --peers)")
            if args.norm or args.gate_norm or args.models:
                raise mtlzoo.MtlzooError("--norm, --gate-norm and --models are for --suite "
                                         "census")
            from mtlzoo.bench import synthetic

            if args.check_budget:
                result = synthetic.check_budget(args.size, args.check_budget, out=out,
                                                progress=not args.quiet, command=command)
                print(result.summary.to_string(index=False,
                                               float_format=lambda v: f"{v:.4f}"))
                print(f"\n{result.claims[0]}\nWritten to {result.report}")
                return 0
            result = synthetic.run_suite(args.size, out=out, progress=not args.quiet,
                                         command=command, weightings=args.weightings,
                                         rows=args.rows, epochs=args.epochs, seeds=args.seeds,
                                         workers=args.workers)
        else:
            from mtlzoo.bench import census

            result = census.run_suite(
                args.size, out=out, path=args.census_path, progress=not args.quiet,
                command=command, weightings=args.weightings,
                peers=_names(args.peers) if args.peers else False,
                models=_names(args.models) if args.models else census.MODELS,
                seeds=args.seeds, norm=args.norm, gate_norm=args.gate_norm)
        print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"\nWritten under {out}/ (quality_{args.suite}_*.md, .csv)")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.peers:
        from mtlzoo.bench import peers

        batch_sizes = [args.batch_size] if args.batch_size else [64, 1024]
        result = peers.benchmark(out, batch_sizes, args.repeats, command)
        shown = ["family", "B", "E", "T",
                 *(c for c in result.table.columns if c.endswith(("_ms", "_over_ours")))]
    else:
        from mtlzoo.bench import speed

        result = speed.every_model(out, args.batch_size or 1024, args.repeats, command)
        shown = speed.EVERY_MODEL_COLUMNS
    print(result.table[shown].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nWritten to {result.report}")
    return 0


def _recipe(args: argparse.Namespace, command: str) -> int:
    from mtlzoo import recipes

    defaults = {name: parameter.default
                for name, parameter in inspect.signature(recipes.text_pair).parameters.items()}
    given = {name: getattr(args, name) for name in (*SHARED_OPTIONS, *RECIPE_SIZES)
             if getattr(args, name) is not None}
    options = {name: given.get(name, defaults[name])
               for name in (*SHARED_OPTIONS, *RECIPE_SIZES)
               if name in given or defaults[name] is not None}
    if "steps" in options:
        del options["epochs"]
    for option in ("seeds", "out"):
        if getattr(args, option) is not None and not args.compare_single_task:
            raise mtlzoo.MtlzooError(f"--{option} is for --compare-single-task (one run "
                                     "takes --seed and prints its metrics)")
    tasks = _recipe_tasks(args)
    setting = (f"{' + '.join(f'{name} ({source})' for name, source in tasks.items())} over "
               f"one Embedding + BiLSTM; weighting {args.weighting}, "
               + ", ".join(f"{name.replace('_', ' ')} {value}"
                           for name, value in options.items()) + ".")
    print(setting, file=sys.stderr)
    import datasets

    datasets.disable_progress_bars()  # the trainer's epoch lines report progress instead
    common = {"weighting": args.weighting, "cache_dir": args.cache_dir,
              "progress": not args.quiet, **options}
    try:
        if args.compare_single_task:
            seeds = args.seeds or 3
            first = common.pop("seed")
            comparison = recipes.compare_single_task(tasks, seeds=seeds, seed=first, **common)
            text = _comparison(comparison.summary, first, seeds)
            print(text)
            if args.out:
                report = _write_comparison(comparison, setting, text, Path(args.out), command)
                print(f"\nWritten to {report}")
            return 0
        _, table = recipes.text_pair(tasks, **common)
    except DataLoadError as error:
        raise mtlzoo.MtlzooError(
            f"{error.problem}. Give the data as local files: --task NAME=DIR, where DIR holds "
            "a train and a test file (.parquet or .csv; validation optional) with a 'text' "
            "column and a 'label' column (class ids or names), or --data-dir DIR with imdb/ "
            "and ag_news/ folders of such files"
        ) from error
    print(_metrics_table(table))
    print("\n" + ", ".join(f"{task} accuracy {accuracy:.4f}"
                           for task, accuracy in table.accuracy.items()))
    return 0


def _recipe_tasks(args: argparse.Namespace) -> dict[str, str]:
    """The recipe's tasks and sources: --task NAME=SOURCE, or the default pair (under
    --data-dir when given)."""
    from mtlzoo.recipes import DEFAULT_TASKS

    if args.task:
        if args.recipe != "text-pair":
            raise mtlzoo.MtlzooError(f"--task is for --recipe text-pair; --recipe {args.recipe} "
                                     "reads IMDb and AG News")
        if args.data_dir:
            raise mtlzoo.MtlzooError("--data-dir is for the default pair; with --task give each "
                                     "task's folder in SOURCE")
        tasks = _pairs(args.task, "--task", "SOURCE")
        if len(tasks) < 2:
            raise mtlzoo.MtlzooError(f"a multi-task recipe needs two --task or more, got "
                                     f"{list(tasks)}")
        return tasks
    if args.data_dir:
        return {task: str(Path(args.data_dir) / name) for task, name in DEFAULT_TASKS.items()}
    return dict(DEFAULT_TASKS)


if __name__ == "__main__":
    sys.exit(main())
