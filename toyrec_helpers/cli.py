"""The command line: ``python -m toyrec_helpers <command>``.

Each command is a thin wrapper over functions the chapters call. Introduced in chapter 1
(book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toyrec_helpers.schema import DataValidationError

if TYPE_CHECKING:  # the data module imports pandas: only load it when a command needs it
    from toyrec_helpers.data import Dataset


def _generate_data(args: argparse.Namespace) -> int:
    from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop, write_toyshop

    try:
        config = ToyShopConfig(
            seed=args.seed, users=args.users, items=args.items, ratings=args.ratings
        )
    except ValueError as exc:
        print(f"generate-data: {exc}", file=sys.stderr)
        return 2
    try:
        out = write_toyshop(generate_toyshop(config), args.out, overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"generate-data: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({config})")
    return 0


def _load_or_report(directory: Path | None) -> Dataset | None:
    """Load a data directory for a command: print its warnings as notes, and on invalid
    data print the validation error (no traceback) and return ``None``."""
    import warnings

    from toyrec_helpers.data import load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(directory)
        except DataValidationError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            return None
    for w in caught:
        print(f"note: {w.message}")
    return dataset


def _validate_data(args: argparse.Namespace) -> int:
    from toyrec_helpers.data import format_summary

    dataset = _load_or_report(args.directory)
    if dataset is None:
        return 1
    print(f"valid: {Path(args.directory)}")
    print(format_summary(dataset.summary()))
    return 0


class _MethodNames:
    """The names of the registered evaluation methods, read from the registry when first
    needed (so that building the parser does not import torch)."""

    def _names(self) -> tuple[str, ...]:
        from toyrec_helpers.evaluate import method_names

        return method_names()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"EVALUATE_METHODS{self._names()!r}"


EVALUATE_METHODS = _MethodNames()
"""The ``--methods`` choices of ``evaluate``: a live view of the names in the registry of
:mod:`toyrec_helpers.evaluate` (``tuple(EVALUATE_METHODS)``)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    import time

    import torch

    from toyrec_helpers.evaluate import EvalConfig, check_json_path, evaluate, format_table

    parser: argparse.ArgumentParser = args.parser
    if args.json is not None:
        try:
            check_json_path(args.json)
        except FileExistsError as exc:
            parser.error(f"argument --json: {exc}")
    try:
        config = EvalConfig(ks=tuple(args.k), seeds=tuple(range(args.seeds)))
    except ValueError as exc:
        parser.error(str(exc))
    dataset = _load_or_report(args.data)
    if dataset is None:
        return 1
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        result = evaluate(dataset, config, methods=args.methods, progress=not args.progress_off)
    except ValueError as exc:
        parser.error(str(exc))
    sizes = result.split_sizes
    print(f"data: {dataset.path}")
    print(f"meta-test shoppers: {sizes['evaluated']} evaluated, {sizes['skipped']} skipped "
          f"(fewer than {max(config.ks) + config.min_query} ratings); seeds "
          f"{', '.join(map(str, config.seeds))}; {time.perf_counter() - start:.0f} s")
    print()
    print(format_table(result.summary()))
    if args.json is not None:
        print(f"\nwrote {result.to_json(args.json)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from toyrec_helpers.bench import format_results, run_bench

    def subset(text: str | None, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
        if text is None:
            return allowed
        values = tuple(v for v in text.split(",") if v)
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            args.parser.error(f"argument --{name}: expected a comma-separated subset of "
                              f"{','.join(allowed)}, got {text!r}")
        return values

    try:
        result = run_bench(
            device=args.device, meta_batch=args.meta_batch, repeats=args.repeats,
            sizes=args.sizes, compile=args.compile, bf16=args.bf16, json_path=args.json,
            quick=args.quick, steps=args.steps, latency_repeats=args.latency_repeats,
            compile_timeout_s=args.compile_timeout or None,
            compile_budget_s=args.compile_budget, threads=args.threads,
            latency_threads=args.latency_threads,
            impls=subset(args.impls, ("loop", "vmap", "compiled"), "impls"),
            orders=subset(args.orders, ("second", "first"), "orders"),
            adapts=subset(args.adapts, ("all_dense", "all_sparse", "head"), "adapts"),
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except (ValueError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(format_results(result))
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m toyrec_helpers``.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    parser = argparse.ArgumentParser(
        prog="python -m toyrec_helpers",
        description="Tools of the book 'Meta-Learning for Cold-Start Toy Recommendation'.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate-data", help="generate a ToyShop data directory")
    gen.add_argument("--out", required=True, type=Path, help="directory to create")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--users", type=int, default=3000, help="number of shoppers (default 3000)")
    gen.add_argument("--items", type=int, default=600, help="number of toys (default 600)")
    gen.add_argument(
        "--ratings",
        type=int,
        default=100_000,
        help="approximate number of ratings (default 100000)",
    )
    gen.add_argument("--overwrite", action="store_true", help="replace a generated directory")
    gen.set_defaults(func=_generate_data)
    val = sub.add_parser("validate-data", help="check a data directory and summarise it")
    val.add_argument("directory", type=Path)
    val.set_defaults(func=_validate_data)
    ev = sub.add_parser(
        "evaluate",
        help="run the cold-start evaluation protocol (chapter 6) and print its table",
        description="Train every method on the meta-train shoppers (one run per seed) and "
        "score it on the meta-test shoppers at each K; prints mean [95% CI] per method "
        "and metric.",
    )
    ev.add_argument("--data", type=Path, default=None,
                    help="data directory (default: the ToyShop)")
    ev.add_argument("--k", type=_positive_int, nargs="+", default=[1, 3, 5, 10],
                    metavar="K", help="support sizes (default: 1 3 5 10)")
    ev.add_argument("--seeds", type=_positive_int, default=3, metavar="N",
                    help="number of training seeds, 0..N-1 (default 3)")
    ev.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                    choices=EVALUATE_METHODS,
                    help="methods to run (default: all; oracle only with an answer key); "
                    "choose from %(choices)s")
    ev.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the summary as JSON (replaces only a previous one)")
    ev.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                    help="torch CPU threads (default 1: the models are small, and more "
                    "threads only help on idle cores)")
    ev.add_argument("--no-progress", dest="progress_off", action="store_true",
                    help="no progress bar")
    ev.set_defaults(func=_evaluate, parser=ev)
    bench = sub.add_parser(
        "bench",
        help="time meta-training (loop / vmap / torch.compile) and new-shopper adaptation",
        description="Benchmark on synthetic data (chapter 10): meta-training tasks/s and peak "
        "memory per implementation, order and adaptation, and the latency of adapting one "
        "new shopper.",
    )
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    bench.add_argument("--meta-batch", type=_positive_int, default=32, help="default 32")
    bench.add_argument("--repeats", type=_positive_int, default=5,
                       help="timed repeats per configuration, interleaved (default 5)")
    bench.add_argument("--steps", type=_positive_int, default=1,
                       help="meta-steps per timed repeat (default 1)")
    bench.add_argument("--sizes", choices=("melu", "toyshop", "tiny"), default="melu",
                       help="problem size (default melu)")
    bench.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="include torch.compile of the vmap meta-loss (default on)")
    bench.add_argument("--compile-timeout", type=float, default=600.0, metavar="S",
                       help="give up compiling one configuration after S s (0 = no limit)")
    bench.add_argument("--compile-budget", type=float, default=None, metavar="S",
                       help="total seconds for all compilations (default 180 on cuda, "
                       "1800 on cpu)")
    bench.add_argument("--bf16", action="store_true",
                       help="bfloat16 autocast of the forward passes (for CUDA)")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="torch intra-op threads (default: torch's)")
    bench.add_argument("--latency-repeats", type=_positive_int, default=200,
                       help="timed new-shopper adaptations (default 200)")
    bench.add_argument("--latency-threads", type=_positive_int, default=1,
                       help="CPU threads for the new-shopper latency (default 1)")
    bench.add_argument("--impls", default=None, help="subset, e.g. loop,vmap (default all)")
    bench.add_argument("--orders", default=None, help="subset of second,first")
    bench.add_argument("--adapts", default=None, help="subset of all_dense,all_sparse,head")
    bench.add_argument("--quick", action="store_true",
                       help="tiny sizes, 2 repeats (a smoke test)")
    bench.add_argument("--json", type=Path, default=None, metavar="FILE",
                       help="also write the results as JSON (atomically)")
    bench.set_defaults(func=_bench, parser=bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    args = build_parser().parse_args(argv)
    return int(args.func(args))
