"""The command line: ``python -m toyrec_helpers <command>``.

Each command is a thin wrapper over functions the chapters call. Introduced in chapter 1
(book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from toyrec_helpers.schema import DataValidationError


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


def _validate_data(args: argparse.Namespace) -> int:
    import warnings

    from toyrec_helpers.data import format_summary, load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(args.directory)
        except DataValidationError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"note: {w.message}")
    print(f"valid: {Path(args.directory)}")
    print(format_summary(dataset.summary()))
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    args = build_parser().parse_args(argv)
    return int(args.func(args))
