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
    import pandas as pd

    from toyrec_helpers.data import Dataset


def _generate_data(args: argparse.Namespace) -> int:
    from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop, write_toyshop
    from toyrec_helpers.toyshop_exposure import write_random_exposure

    try:
        config = ToyShopConfig(
            seed=args.seed, users=args.users, items=args.items, ratings=args.ratings
        )
    except ValueError as exc:
        print(f"generate-data: {exc}", file=sys.stderr)
        return 2
    try:
        shop = generate_toyshop(config)
        out = write_toyshop(shop, args.out, overwrite=args.overwrite)
        write_random_exposure(shop, out, overwrite=True)  # the MAR test set (chapter 8)
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
    print(f"kind: {dataset.kind_description()}")
    print(format_summary(dataset.summary()))
    return 0


def _export_purchases(args: argparse.Namespace) -> int:
    from toyrec_helpers.purchases import export_purchase_log

    try:
        out = export_purchase_log(args.source, args.out, overwrite=args.overwrite)
    except DataValidationError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"export-purchases: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (the purchases of {args.source}, without ratings)")
    return 0


def _import_movielens(args: argparse.Namespace) -> int:
    from toyrec_helpers.movielens import fetch_movielens, import_movielens

    paths = list(args.paths)
    if len(paths) != (1 if args.fetch else 2):
        args.parser.error("give SRC OUT, or --fetch SOURCE OUT (the download replaces SRC)")
    try:
        src = fetch_movielens(args.fetch) if args.fetch else paths[0]
        if args.implicit:  # every rated pair a purchase, the ratings dropped
            dataset = _implicit_movielens(src, paths[-1], args.overwrite)
        else:
            dataset = import_movielens(src, paths[-1], overwrite=args.overwrite)
    except DataValidationError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    except (FileExistsError, RuntimeError, ValueError, OSError) as exc:
        print(f"import-movielens: {exc}", file=sys.stderr)
        return 2
    what = "ratings" if dataset.kind == "ratings" else "purchases (a purchase log)"
    print(f"wrote {dataset.path} from {src}: {dataset.n_users} users, {dataset.n_items} "
          f"items, {len(dataset.interactions)} {what}")
    return 0


def _implicit_movielens(src: Path, out: Path, overwrite: bool) -> Dataset:
    """MovieLens imported, then written as a purchase log (``import-movielens --implicit``)."""
    import tempfile

    from toyrec_helpers.data import load_dataset
    from toyrec_helpers.movielens import import_movielens
    from toyrec_helpers.purchases import export_purchase_log

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        rated = import_movielens(src, Path(tmp) / "rated")
        return load_dataset(export_purchase_log(rated.path, out, overwrite=overwrite))


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


def _finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _kind_lines(result: object) -> list[str]:
    """What ``evaluate`` says about the kind of data: on a purchase log, which metrics and
    why; for every kind, the methods skipped by default and why (one line per reason)."""
    lines = []
    if getattr(result, "data_kind", "ratings") == "purchases":
        lines.append("purchase log: ranking methods only, every query purchase is relevant; "
                     "no MAE, RMSE or NDCG@3 (they compare predicted with true ratings, and "
                     "this data has no ratings that differ)")
    by_reason: dict[str, list[str]] = {}
    for name, reason in getattr(result, "skipped_methods", {}).items():
        by_reason.setdefault(reason.split(" needs ", 1)[-1], []).append(name)
    for reason, names in by_reason.items():
        lines.append(f"skipped {', '.join(names)}: {'it needs' if len(names) == 1 else 'they need'}"
                     f" {reason}")
    return lines


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
    relevance = {} if args.relevant_from is None else {"relevance_threshold": args.relevant_from}
    try:
        config = EvalConfig(ks=tuple(args.k), seeds=tuple(range(args.seeds)), **relevance)
    except ValueError as exc:
        parser.error(str(exc))
    dataset = _load_or_report(args.data)
    if dataset is None:
        return 1
    if args.relevant_from is not None:
        lo, hi = dataset.schema.rating_min, dataset.schema.rating_max
        if not dataset.has_ratings:
            parser.error(f"argument --relevant-from: {dataset.path} has no ratings that "
                         "differ (a purchase log, or every rating equal): every query "
                         "purchase is relevant")
        if not lo <= args.relevant_from <= hi:
            parser.error(f"argument --relevant-from: expected a rating from {lo:g} to at "
                         f"most {hi:g} (the rating scale), got {args.relevant_from:g}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        result = evaluate(dataset, config, methods=args.methods, progress=not args.progress_off)
    except ValueError as exc:
        parser.error(str(exc))
    sizes = result.split_sizes
    print(f"data: {dataset.path}")
    for line in _kind_lines(result):
        print(line)
    unit = "ratings" if dataset.has_ratings else "purchases"
    print(f"meta-test shoppers: {sizes['evaluated']} evaluated, {sizes['skipped']} skipped "
          f"(fewer than {max(config.ks) + config.min_query} {unit}); seeds "
          f"{', '.join(map(str, config.seeds))}; {time.perf_counter() - start:.0f} s")
    print()
    print(format_table(result.summary()))
    paired = result.paired()
    to_finetune = paired[(paired["baseline"] == "finetune") & (paired["metric"] == "mae")]
    if len(to_finetune):
        print("\nMAE minus finetune's, per shopper: mean [95% bootstrap CI]")
        for (method, k), row in to_finetune.set_index(["method", "k"]).iterrows():
            print(f"  {method:<18} K={k:<3} {row['mean']:+.4f} "
                  f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]")
    for line in _fit_warnings(result.fits):
        print(f"warning: {line}", file=sys.stderr)
    if args.json is not None:
        print(f"\nwrote {result.to_json(args.json)}")
    return 0


def _fit_warnings(fits: pd.DataFrame) -> list[str]:
    """The fits to flag: a tuned rate at an edge of its (extended) grid, or a method whose
    validation error after adapting is above its error without adapting."""
    lines = []
    for row in fits.to_dict("records"):
        if row.get("lr_edge"):
            lines.append(f"{row['method']} (seed {row['seed']}): tuned rate {row['inner_lr']:g} "
                         f"is at the {row['lr_edge']} edge of its grid, even after extending "
                         "it: the optimum may lie beyond")
        if row.get("worse_than_unadapted"):
            lines.append(f"{row['method']} (seed {row['seed']}): validation MSE after adapting "
                         f"({row['val_mse']:.4f}) is worse than without adapting "
                         f"({row['unadapted_val_mse']:.4f})")
    return lines


def _bench_purchases(args: argparse.Namespace) -> int:
    from toyrec_helpers.purchase_scale import format_purchase_scale, run_purchase_scale

    try:
        result = run_purchase_scale(
            users=args.users, items=args.items, purchases=args.purchases, shards=args.shards,
            seeds=args.seeds, methods=args.methods, threads=args.threads, json_path=args.json,
            data=args.data)
    except (ValueError, RuntimeError, FileExistsError) as exc:
        print(f"bench-purchases: {exc}", file=sys.stderr)
        return 2
    return _print_result(format_purchase_scale(result), args.json)


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
    return _print_result(format_results(result), args.json)


def _print_result(text: str, json_path: Path | None) -> int:
    """Print a command's result, and where its JSON went; exit status 0."""
    print(text)
    if json_path is not None:
        print(f"wrote {json_path}")
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
    exp = sub.add_parser(
        "export-purchases",
        help="write a rated data directory as a purchase log (every rated pair a purchase, "
        "ratings dropped)")
    exp.add_argument("source", type=Path, help="a rated data directory, e.g. data/toyshop")
    exp.add_argument("out", type=Path, help="directory to create")
    exp.add_argument("--overwrite", action="store_true",
                     help="replace a purchase log written by this command")
    exp.set_defaults(func=_export_purchases)
    ml = sub.add_parser(
        "import-movielens",
        help="import MovieLens-100K (GroupLens zip or folder, RecBole files or wheel) into "
        "the data format (chapter 7)")
    ml.add_argument("paths", type=Path, nargs="+", metavar="SRC OUT",
                    help="the source and the directory to create (with --fetch: OUT only)")
    ml.add_argument("--fetch", choices=("pypi", "grouplens"), default=None,
                    help="download the source first into the cache ($TOYREC_CACHE or "
                    "~/.cache/toyrec), SHA-256 checked: 'pypi' = pip download recbole==1.2.1")
    ml.add_argument("--overwrite", action="store_true",
                    help="replace a directory written by this command")
    ml.add_argument("--implicit", action="store_true",
                    help="write a purchase log: every rated pair a purchase, the ratings "
                    "dropped (the usual way to turn MovieLens into implicit data)")
    ml.set_defaults(func=_import_movielens, parser=ml)
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
                    help="methods to run (default: every method the registry marks as default; "
                    "oracle and bayes only with an answer key); choose from %(choices)s")
    ev.add_argument("--relevant-from", type=_finite_number, default=None, metavar="R",
                    help="rated data: query ratings >= R are relevant for hr@10 and ndcg@10 "
                    "(default 4; recorded in the JSON). A purchase log has no ratings: every "
                    "query purchase is relevant")
    ev.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the summary as JSON (replaces only a previous one)")
    ev.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                    help="torch CPU threads (default 1: the models are small, and more "
                    "threads only help on idle cores)")
    ev.add_argument("--no-progress", dest="progress_off", action="store_true",
                    help="no progress bar")
    ev.set_defaults(func=_evaluate, parser=ev)
    bp = sub.add_parser(
        "bench-purchases",
        help="time evaluate on a large synthetic purchase log and measure its peak memory",
        description="Write a synthetic purchase log from the ToyShop generator (default "
        "20000 shoppers, 12000 toys, 170000 purchases), run evaluate on it in a child "
        "process, and report its wall-clock time and peak memory.")
    bp.add_argument("--users", type=_positive_int, default=20_000, help="default 20000")
    bp.add_argument("--items", type=_positive_int, default=12_000, help="default 12000")
    bp.add_argument("--purchases", type=_positive_int, default=170_000,
                    help="default 170000")
    bp.add_argument("--shards", type=_positive_int, default=10,
                    help="generated shops joined into the log (default 10)")
    bp.add_argument("--data", type=Path, default=None,
                    help="evaluate this data directory instead of a synthetic log")
    bp.add_argument("--seeds", type=_positive_int, default=1, help="default 1")
    bp.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                    help="evaluate's --methods (default: every method the data can serve)")
    bp.add_argument("--threads", type=_positive_int, default=2,
                    help="torch CPU threads (default 2: the two cores of the budget)")
    bp.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the result as JSON (replaces only a previous result)")
    bp.set_defaults(func=_bench_purchases)
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
